// The demo shop: a plain ES module over the built SDK. Every click goes through rec.track(); the
// recommendations, the model and the privacy panel all come from the recommender in this browser.
import { createRecommender } from '/dist/index.js';
import { categoryLabel, paintTile } from './tiles.js';
import { drawLossChart } from './loss-chart.js';

const params = new URLSearchParams(location.search);
/** `?backend=wasm` (or webgpu, webgl, cpu) forces a tfjs backend; otherwise the SDK probes. */
const BACKEND = params.get('backend') || undefined;
/** Train after this many new events (the page trains itself so that it can chart the loss). */
const TRAIN_EVERY = Number(params.get('trainEvery') ?? 3);
const POLL_MS = 4000;

const $ = (id) => document.getElementById(id);
const money = new Intl.NumberFormat('en-GB', { style: 'currency', currency: 'GBP' });
const time = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const EVENT_LABELS = {
  view: 'Product views',
  search: 'Searches',
  add_to_cart: 'Added to cart',
  remove_from_cart: 'Removed from cart',
  purchase: 'Purchases',
  rating: 'Ratings',
  offer_impression: 'Offers shown',
  offer_redeemed: 'Offers redeemed',
};

const state = {
  items: [],
  byId: new Map(),
  rec: null,
  /** Bumped by erase(): answers from a closed recommender are dropped. */
  generation: 0,
  cart: new Map(),
  query: '',
  category: '',
  /** The product open in the modal. */
  open: null,
  losses: [],
  runs: 0,
  training: null,
  stats: null,
  renders: 0,
};

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

let statusAt = 0;
function setStatus(text, kind = 'info') {
  const el = $('status');
  el.textContent = text;
  el.dataset.kind = kind;
  statusAt = Date.now();
}

/** The resting status line, once a notice has been up for a few seconds. */
function restingStatus(s) {
  if ($('status').dataset.kind === 'error' || Date.now() - statusAt < 6000) return;
  $('status').textContent = `Personalized on this device · ${s.backend} backend, started in ${state.startMs} ms · ${s.events.total} event${s.events.total === 1 ? '' : 's'} stored in this browser, none sent`;
  $('status').dataset.kind = 'ok';
}

function fail(e) {
  console.error(e);
  setStatus(`${e?.name ?? 'Error'}: ${e?.message ?? e}`, 'error');
}

// ---------------------------------------------------------------- tracking

/** Records one event through the SDK, then refreshes what depends on it. */
function track(event) {
  if (!state.rec) return;
  try {
    state.rec.track(event);
  } catch (e) {
    fail(e);
    return;
  }
  scheduleRefresh();
}

let refreshTimer;
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => void refresh().catch(fail), 200);
}

// ---------------------------------------------------------------- recommender

async function startRecommender() {
  const t0 = performance.now();
  setStatus('Starting the on-device recommender (TensorFlow.js in a Web Worker)…');
  state.rec = await createRecommender({
    catalog: { items: state.items },
    ...(BACKEND ? { backend: BACKEND } : {}),
    // The page trains by itself (below) so that the model panel can chart the loss.
    autoTrainEvery: 0,
  });
  state.startMs = Math.round(performance.now() - t0);
  // The resting status line (restingStatus) takes over at the next refresh.
  statusAt = 0;
}

async function refresh() {
  const rec = state.rec;
  const gen = state.generation;
  if (!rec) return;
  let stats = await rec.stats();
  if (gen !== state.generation) return;
  if (stats.model.pendingEvents >= TRAIN_EVERY && !state.training) {
    await train();
    if (gen !== state.generation) return;
    stats = await rec.stats();
  }
  const recs = await rec.recommend({ k: 8, exclude: 'seen' });
  if (gen !== state.generation) return;
  state.stats = stats;
  renderRecs(recs);
  renderModel(stats);
  renderPrivacy(stats);
  renderRounds();
  restingStatus(stats);
}

async function train() {
  const rec = state.rec;
  const gen = state.generation;
  const run = ++state.runs;
  $('train-now').disabled = true;
  $('m-trained').textContent = 'training…';
  state.training = rec
    .train({
      onProgress: (p) => {
        if (gen !== state.generation || p.phase !== 'training' || typeof p.loss !== 'number' || !Number.isFinite(p.loss)) return;
        state.losses.push({ loss: p.loss, run, at: Date.now() });
        if (state.losses.length > 240) state.losses.splice(0, state.losses.length - 240);
        drawLossChart($('loss-chart'), state.losses);
      },
    })
    .then((r) => {
      if (gen !== state.generation) return r;
      $('loss-caption').textContent = r.steps === 0 ? 'Nothing to train on yet: open a few products first.' : `Last run: ${r.steps} steps on ${r.examples} examples in ${Math.round(r.ms)} ms, loss ${r.firstLoss.toFixed(3)} → ${r.lastLoss.toFixed(3)}.`;
      return r;
    })
    .finally(() => {
      state.training = null;
      $('train-now').disabled = false;
    });
  return state.training;
}

// ---------------------------------------------------------------- rendering

function card(item, { reason, compact = false } = {}) {
  const li = document.createElement('li');
  li.className = compact ? 'card compact' : 'card';
  li.dataset.itemId = item.id;
  const tile = document.createElement('button');
  tile.type = 'button';
  tile.className = 'card-hit';
  tile.setAttribute('aria-label', `Open ${item.title}`);
  const pic = document.createElement('div');
  paintTile(pic, item);
  tile.append(pic);
  const body = document.createElement('div');
  body.className = 'card-body';
  body.innerHTML = `
    <p class="card-cat">${esc(categoryLabel(item.category))}</p>
    <h4 class="card-title">${esc(item.title)}</h4>
    <p class="card-price">${money.format(item.price)}</p>`;
  tile.append(body);
  li.append(tile);
  if (reason) {
    const why = document.createElement('p');
    why.className = `reason reason-${reason.kind}`;
    why.dataset.testid = 'reason';
    why.textContent = reason.text;
    why.title = reason.itemIds.length ? `Based on: ${reason.itemIds.map((id) => state.byId.get(id)?.title ?? id).join(', ')}` : 'No history yet: popular picks';
    li.append(why);
  }
  if (!compact) {
    const add = document.createElement('button');
    add.type = 'button';
    add.className = 'btn ghost small add';
    add.textContent = 'Add to cart';
    add.addEventListener('click', () => addToCart(item.id));
    li.append(add);
  }
  return li;
}

function renderRecs(recs) {
  const ol = $('recs');
  ol.replaceChildren(...recs.map((r) => card(state.byId.get(r.itemId), { reason: r.reason })));
  const personal = recs.some((r) => r.reason.kind === 'personal');
  $('recs-hint').textContent = personal
    ? 'Computed in this browser from what you did here. Nothing about you is sent anywhere.'
    : 'No history yet, so these are the shop’s bestsellers. Browse a little and watch them change.';
  state.renders++;
  document.body.dataset.recsRenders = String(state.renders);
  document.body.dataset.recs = recs.map((r) => r.itemId).join(',');
}

function matches(item, q) {
  if (!q) return true;
  const hay = `${item.title} ${item.category}`.toLowerCase();
  return q
    .toLowerCase()
    .split(/\s+/)
    .filter(Boolean)
    .every((w) => hay.includes(w));
}

function renderGrid() {
  const shown = state.items.filter((it) => (!state.category || it.category === state.category) && matches(it, state.query));
  $('grid').replaceChildren(...shown.map((it) => card(it)));
  const what = [state.category && categoryLabel(state.category), state.query && `“${state.query}”`].filter(Boolean).join(' · ');
  $('result-count').textContent = `${shown.length} product${shown.length === 1 ? '' : 's'}${what ? ` for ${what}` : ''}`;
  for (const chip of $('chips').children) chip.setAttribute('aria-pressed', String(chip.dataset.category === state.category));
  $('category').value = state.category;
}

function renderCategories() {
  const counts = new Map();
  for (const it of state.items) counts.set(it.category, (counts.get(it.category) ?? 0) + 1);
  const cats = [...counts].sort((a, b) => b[1] - a[1]);
  $('category').append(...cats.map(([c, n]) => new Option(`${categoryLabel(c)} (${n})`, c)));
  const chip = (c, label) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'chip';
    b.dataset.category = c;
    b.textContent = label;
    b.addEventListener('click', () => setCategory(c === state.category ? '' : c));
    return b;
  };
  $('chips').replaceChildren(chip('', 'All'), ...cats.slice(0, 10).map(([c]) => chip(c, categoryLabel(c))));
}

function setCategory(c) {
  state.category = c;
  renderGrid();
}

function ago(t) {
  if (!t) return 'never';
  const s = Math.round((Date.now() - t) / 1000);
  return s < 60 ? `${time.format(t)} (${s}s ago)` : time.format(t);
}

function renderModel(s) {
  $('m-backend').textContent = s.backend;
  $('m-backend-reason').textContent = `Why ${s.backend}: ${s.backendReason}. Storage: ${s.storage}.`;
  $('m-events').textContent = String(s.events.total);
  $('m-trained').textContent = state.training ? 'training…' : ago(s.model.trainedAt);
  $('m-steps').textContent = String(s.model.trainSteps);
  $('m-pending').textContent = `${s.model.pendingEvents} event${s.model.pendingEvents === 1 ? '' : 's'} (trains every ${TRAIN_EVERY})`;
  drawLossChart($('loss-chart'), state.losses);
}

function renderPrivacy(s) {
  const rows = Object.entries(EVENT_LABELS).map(([type, label]) => {
    const n = s.events.byType[type] ?? 0;
    return `<tr class="${n ? '' : 'zero'}" data-type="${type}"><th scope="row">${label}</th><td>${n}</td></tr>`;
  });
  rows.push(`<tr class="total"><th scope="row">Total events</th><td data-testid="privacy-total">${s.events.total}</td></tr>`);
  rows.push(`<tr class="${s.model.trainSteps ? '' : 'zero'}"><th scope="row">Model weights trained here</th><td>${s.model.trainSteps ? `${s.model.items} × ${s.model.dim}` : 'none'}</td></tr>`);
  $('privacy-counts').innerHTML = rows.join('');
  $('privacy-range').textContent = s.events.total
    ? `Oldest ${new Date(s.events.oldest).toLocaleString()}, newest ${new Date(s.events.newest).toLocaleString()}. Kept at most 5,000 events or 365 days.`
    : 'Nothing stored.';
}

// ---------------------------------------------------------------- federated rounds

let lastRounds = null;
async function pollRounds() {
  try {
    const [health, round] = await Promise.all([fetch('/v1/health').then((r) => r.json()), fetch('/v1/rounds/current').then((r) => r.json())]);
    lastRounds = { health, round, at: Date.now() };
  } catch (e) {
    lastRounds = { error: String(e?.message ?? e), at: Date.now() };
  }
  renderRounds();
}

function renderRounds() {
  const r = lastRounds;
  const local = state.stats?.model.version;
  $('f-local').textContent = local === undefined ? '…' : `version ${local}${local === 0 ? ' (the initial model)' : ''}`;
  if (!r) return;
  if (r.error) {
    $('f-health').innerHTML = '<span class="dot off"></span>unreachable';
    $('f-pending').textContent = `Could not reach the aggregation server (${r.error}).`;
    return;
  }
  $('f-health').innerHTML = `<span class="dot ${r.health.ok ? 'on' : 'off'}"></span>${r.health.ok ? 'online' : 'unhealthy'}`;
  const { version, pending, minClients, publishedAt, hash } = r.round;
  $('f-version').innerHTML = `version ${version} <span class="fine">· ${esc(hash.slice(0, 8))} · ${esc(new Date(publishedAt).toLocaleString())}</span>`;
  $('f-bar').style.width = `${Math.min(100, (pending / minClients) * 100)}%`;
  $('f-pending').textContent = `${pending} of ${minClients} updates needed for the next round (each one clipped and noised on its device).`;
}

// ---------------------------------------------------------------- product page

function openProduct(id, via) {
  const item = state.byId.get(id);
  if (!item) return;
  // A click on a search result is a search with the clicked item; every open is a view.
  if (via === 'search' && state.query) track({ type: 'search', query: state.query, itemId: id });
  track({ type: 'view', itemId: id });
  state.open = id;
  const tile = $('p-tile');
  tile.className = 'product-tile';
  paintTile(tile, item);
  $('p-category').textContent = categoryLabel(item.category);
  $('p-title').textContent = item.title;
  $('p-price').textContent = money.format(item.price);
  $('p-pop').textContent = `Bought ${item.popularity.toLocaleString()} times in the shop’s history · item ${item.id}`;
  $('p-rating').innerHTML =
    '<span class="fine">Rate it:</span>' +
    [1, 2, 3, 4, 5].map((v) => `<button type="button" class="star" data-value="${v}" aria-label="${v} star${v > 1 ? 's' : ''}">★</button>`).join('');
  $('similar').replaceChildren();
  const dlg = $('product-modal');
  if (!dlg.open) dlg.showModal();
  dlg.scrollTop = 0;
  const gen = state.generation;
  state.rec
    .similar(id, { k: 6 })
    .then((alike) => {
      if (gen !== state.generation || state.open !== id) return;
      $('similar').replaceChildren(...alike.map((r) => card(state.byId.get(r.itemId), { reason: r.reason, compact: true })));
    })
    .catch(fail);
}

// ---------------------------------------------------------------- cart

function addToCart(id, quantity = 1) {
  state.cart.set(id, (state.cart.get(id) ?? 0) + quantity);
  track({ type: 'add_to_cart', itemId: id, quantity });
  renderCart();
  const b = $('open-cart');
  b.classList.remove('bump');
  void b.offsetWidth; // restart the animation
  b.classList.add('bump');
}

function removeFromCart(id, quantity) {
  const have = state.cart.get(id) ?? 0;
  const q = Math.min(have, quantity ?? have);
  if (q <= 0) return;
  if (have - q > 0) state.cart.set(id, have - q);
  else state.cart.delete(id);
  track({ type: 'remove_from_cart', itemId: id, quantity: q });
  renderCart();
}

function renderCart() {
  let n = 0;
  let total = 0;
  const lines = [...state.cart].map(([id, q]) => {
    const it = state.byId.get(id);
    n += q;
    total += q * it.price;
    const li = document.createElement('li');
    li.className = 'cart-line';
    const pic = document.createElement('div');
    paintTile(pic, it);
    li.append(pic);
    const info = document.createElement('div');
    info.innerHTML = `<p class="card-title">${esc(it.title)}</p><p class="fine">${money.format(it.price)} each</p>`;
    li.append(info);
    const qty = document.createElement('div');
    qty.className = 'qty';
    const minus = Object.assign(document.createElement('button'), { type: 'button', className: 'btn ghost small', textContent: '−', ariaLabel: 'One less' });
    minus.addEventListener('click', () => removeFromCart(id, 1));
    const plus = Object.assign(document.createElement('button'), { type: 'button', className: 'btn ghost small', textContent: '+', ariaLabel: 'One more' });
    plus.addEventListener('click', () => addToCart(id, 1));
    qty.append(minus, Object.assign(document.createElement('span'), { textContent: String(q) }), plus);
    li.append(qty);
    return li;
  });
  $('cart-lines').replaceChildren(...(lines.length ? lines : [Object.assign(document.createElement('li'), { className: 'fine', textContent: 'Your cart is empty.' })]));
  $('cart-total').textContent = n ? `Total ${money.format(total)}` : '';
  $('checkout').disabled = n === 0;
  $('cart-count').textContent = String(n);
}

function checkout() {
  for (const [id, q] of state.cart) track({ type: 'purchase', itemId: id, quantity: q, price: state.byId.get(id).price });
  state.cart.clear();
  renderCart();
  $('cart-drawer').close();
  setStatus('Thank you! The purchase is recorded on this device only.', 'ok');
}

// ---------------------------------------------------------------- erase

let eraseArmed;
async function erase() {
  const b = $('erase');
  if (!eraseArmed) {
    b.textContent = 'Really erase? Click again';
    b.classList.add('armed');
    eraseArmed = setTimeout(() => {
      eraseArmed = undefined;
      b.textContent = 'Erase everything';
      b.classList.remove('armed');
    }, 5000);
    return;
  }
  clearTimeout(eraseArmed);
  eraseArmed = undefined;
  b.disabled = true;
  b.textContent = 'Erasing…';
  const rec = state.rec;
  state.rec = null;
  state.generation++;
  try {
    await state.training?.catch(() => undefined);
    await rec.erase();
    state.cart.clear();
    state.losses = [];
    state.runs = 0;
    $('loss-caption').textContent = 'Training loss appears here after the first training run.';
    renderCart();
    await startRecommender();
    setStatus('Erased: every event and the personal model are gone from this device.', 'ok');
    await refresh();
  } catch (e) {
    fail(e);
  } finally {
    b.disabled = false;
    b.textContent = 'Erase everything';
    b.classList.remove('armed');
    document.body.dataset.erased = String(Number(document.body.dataset.erased ?? 0) + 1);
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  // Cards anywhere on the page open the product page; the "Add to cart" button has its own handler.
  document.addEventListener('click', (e) => {
    const hit = e.target.closest?.('.card-hit');
    if (!hit) return;
    const id = hit.closest('.card').dataset.itemId;
    const inGrid = hit.closest('#grid');
    openProduct(id, inGrid && state.query ? 'search' : 'browse');
  });
  let searchTimer;
  const search = $('search');
  const commitSearch = () => {
    clearTimeout(searchTimer);
    const q = search.value.trim();
    if (q && q !== state.lastTrackedQuery) {
      state.lastTrackedQuery = q;
      track({ type: 'search', query: q });
    }
  };
  search.addEventListener('input', () => {
    state.query = search.value.trim();
    renderGrid();
    clearTimeout(searchTimer);
    searchTimer = setTimeout(commitSearch, 800);
  });
  $('search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    commitSearch();
    $('catalog-title').scrollIntoView({ behavior: 'smooth' });
  });
  $('category').addEventListener('change', (e) => setCategory(e.target.value));
  $('p-add').addEventListener('click', () => state.open && addToCart(state.open));
  $('p-buy').addEventListener('click', () => {
    if (!state.open) return;
    addToCart(state.open);
    $('product-modal').close();
    $('cart-drawer').showModal();
  });
  $('p-rating').addEventListener('click', (e) => {
    const star = e.target.closest('.star');
    if (!star || !state.open) return;
    const value = Number(star.dataset.value);
    track({ type: 'rating', itemId: state.open, value });
    for (const s of $('p-rating').querySelectorAll('.star')) s.classList.toggle('on', Number(s.dataset.value) <= value);
  });
  $('product-modal').addEventListener('close', () => (state.open = null));
  // A click on the backdrop closes a dialog.
  for (const dlg of [$('product-modal'), $('cart-drawer')]) {
    dlg.addEventListener('click', (e) => {
      if (e.target === dlg) dlg.close();
    });
  }
  $('open-cart').addEventListener('click', () => $('cart-drawer').showModal());
  $('checkout').addEventListener('click', checkout);
  $('open-privacy').addEventListener('click', () => {
    const p = $('privacy-panel');
    p.scrollIntoView({ behavior: 'smooth', block: 'start' });
    p.focus({ preventScroll: true });
    p.classList.remove('flash');
    void p.offsetWidth;
    p.classList.add('flash');
  });
  $('erase').addEventListener('click', () => void erase());
  $('train-now').addEventListener('click', () => {
    if (!state.rec || state.training) return;
    train()
      .then(() => refresh())
      .catch(fail);
  });
  // Keep "last training … s ago" honest.
  setInterval(() => state.stats && !state.training && ($('m-trained').textContent = ago(state.stats.model.trainedAt)), 5000);
}

async function main() {
  wire();
  const res = await fetch('catalog.json');
  if (!res.ok) throw new Error(`catalog.json: HTTP ${res.status}`);
  const catalog = await res.json();
  state.items = catalog.items;
  state.byId = new Map(state.items.map((i) => [i.id, i]));
  renderCategories();
  renderGrid();
  renderCart();
  void pollRounds();
  setInterval(() => void pollRounds(), POLL_MS);
  await startRecommender();
  await refresh();
  document.body.dataset.state = 'ready';
}

main().catch((e) => {
  fail(e);
  document.body.dataset.state = 'failed';
});
