// The demo shop: a plain ES module over the built SDK. Every click goes through rec.track(); the
// recommendations, the model and the privacy panel all come from the recommender in this browser.
import { categoryLabel, paintTile } from './tiles.js';
import { drawLossChart } from './loss-chart.js';
// The shop's public offer key ships with the page's own code, never fetched next to the catalog
// (whoever can replace offers.json could replace a key fetched beside it: docs/OFFERS.md). A real
// shop puts the JWK in its bundle at build time; the demo's server makes its key at start-up, so
// it writes this module (scripts/shop-server.mjs).
import { offerPublicKey } from './offer-key.js';

const params = new URLSearchParams(location.search);
/** `?backend=wasm` (or webgpu, webgl, cpu) forces a tfjs backend; otherwise the SDK probes. */
const BACKEND = params.get('backend') || undefined;
/** A whole number ≥ 1 from the URL, or the default (with a warning in the console). */
function countParam(name, dflt) {
  const raw = params.get(name);
  if (raw === null) return dflt;
  const n = Number(raw);
  if (Number.isInteger(n) && n >= 1) return n;
  console.warn(`?${name}=${raw} is not a whole number ≥ 1: using ${dflt}`);
  return dflt;
}
/** Train after this many new browsing events (the page trains itself so that it can chart the loss). */
const TRAIN_EVERY = countParam('trainEvery', 3);
/**
 * The automatic sync ("sync once …" in the rounds panel) waits until this many browsing events
 * (views, searches, cart changes, purchases, ratings; offers shown do not count) are stored: an
 * update from a handful of views carries almost no signal, yet the first sync spends more than half
 * of the ε budget (4.38 of 8 at σ = 1). "Sync now" works at any time.
 */
const AUTO_SYNC_MIN_EVENTS = 6;
const POLL_MS = 4000;
/**
 * `?consent=granted`: a first visit starts with consent granted (personalization and sharing model
 * updates), for tests and demos that want it. Otherwise (or with `?consent=required`) the banner
 * asks first and nothing is stored before an answer. After "Erase everything" the banner asks again
 * whatever the address says.
 */
const CONSENT_GRANTED = params.get('consent') === 'granted';
/** How many shoppers the "Simulate" button runs (the test uses a few). */
const SHOPPERS = countParam('shoppers', 200);
/**
 * The shopper's answer to the banner (at the first visit, after an erase, or from "Change
 * consent"), kept here and passed back at every load: the host's job, since the SDK asks the host
 * each page load. Without it a reload would undo "Only on this device".
 */
const CONSENT_KEY = 'localrec-demo-consent';

const $ = (id) => document.getElementById(id);
const money = new Intl.NumberFormat('en-GB', { style: 'currency', currency: 'GBP' });
const time = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const clock = new Intl.DateTimeFormat('en-GB', { hour: '2-digit', minute: '2-digit', second: '2-digit' });
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
  /** Set by a completed erase: the fresh recommender asks for consent again (never `?consent=granted`). */
  erased: false,
  cart: new Map(),
  /** Stars given in this page view, shown again when the product is reopened. */
  ratings: new Map(),
  query: '',
  category: '',
  /** The grid's order: the shop's, or this shopper's (recommend({ candidates }) over what is shown). */
  order: 'shop',
  /** Bumped by every grid render: a personal order computed for an earlier filter is dropped. */
  gridGeneration: 0,
  /** The product open in the modal. */
  open: null,
  /** Where the product modal was opened from (its card), to give focus back when it closes. */
  opener: null,
  /** Where focus goes back when the cart drawer closes, if it was opened by "Buy now". */
  cartReturn: null,
  losses: [],
  runs: 0,
  /** Browsing events (not offer impressions) this page tracked, and how many when it last trained. */
  browsingTracked: 0,
  browsingTrained: 0,
  training: null,
  stats: null,
  audit: null,
  renders: 0,
  /** The shop's public key and signed offer catalog (from the server), when offers are available. */
  offerKey: null,
  signedOffers: null,
  /** Why the shop's offers are not available on this visit (shown on the offers shelf), or null. */
  offersError: null,
  /**
   * One exploration seed per page view: a refresh with nothing new shows the same offers instead of
   * new random draws (without a seed every rec.offers() call explores afresh).
   */
  offerSeed: crypto.getRandomValues(new Uint32Array(1))[0],
  /** Offers already counted as shown in this page view (one impression each). */
  impressed: new Set(),
  appliedOffer: null,
  /** The offers on the shelf, in order (an applied offer keeps its place there). */
  shelfOffers: [],
  lastSync: null,
  autoSynced: false,
  /** The shopper's own choice for the automatic-sync box (the page unchecks it while sharing is off). */
  autoSyncWanted: true,
  /**
   * When this device's record of what it stored and sent was erased with the shopper's data (a
   * withdrawal of consent after one was given, or "Erase everything"), and why: the audit then
   * starts afresh, and the privacy panel must not read as if nothing had ever left. A withdrawal
   * is remembered with the consent answer (rememberConsent); an erase, in this page view only.
   */
  forgotten: null,
  syncing: null,
};

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

/** Whether smooth scrolling is welcome (not under prefers-reduced-motion). */
const scrollBehavior = () => (matchMedia('(prefers-reduced-motion: reduce)').matches ? 'auto' : 'smooth');

/**
 * Says `text` to screen readers, once: in the live region of the open modal dialog (the rest of the
 * page is inert then: the product's is also its visible confirmation), else in the page's own
 * (#announcer, visually hidden). The same text twice in a row is said twice.
 */
function announce(text) {
  const el = $('product-modal').open ? $('p-note') : $('cart-drawer').open ? $('cart-note') : $('announcer');
  el.textContent = el.textContent === text ? `${text}\u00a0` : text;
}

let statusAt = 0;
/** A notice on the status line, announced (the resting summary that follows it is not: restingStatus). */
function setStatus(text, kind = 'info') {
  const el = $('status');
  el.textContent = text;
  el.dataset.kind = kind;
  statusAt = Date.now();
  announce(text);
}

/** The resting status line, once a notice has been up for a few seconds. */
function restingStatus(s) {
  if ($('status').dataset.kind === 'error' || Date.now() - statusAt < 6000) return;
  // The SDK's requests to the aggregation server (the neighbour-table download is the shop's public
  // file), those answered and those that failed (status 0: the server could not be reached).
  const federated = state.audit?.egress.log.filter((e) => FEDERATED_KINDS.has(e.kind)) ?? [];
  const failed = federated.filter((e) => !(e.status >= 200 && e.status < 400));
  const sent = federated.length - failed.length;
  const unreachable = failed.some((e) => !e.status);
  const plural = (n) => `${n} federated request${n === 1 ? '' : 's'}`;
  const failedText = failed.length ? `${sent ? ' and ' : ''}${plural(failed.length)} failed${unreachable ? ' (the aggregation server could not be reached)' : ''}` : '';
  if (declined()) {
    $('status').textContent = `Not personalized: no consent, so nothing is stored and you see the shop’s bestsellers · ${s.backend} backend, started in ${state.startMs} ms`;
    $('status').dataset.kind = 'info';
    return;
  }
  $('status').textContent = `Personalized on this device · ${s.backend} backend, started in ${state.startMs} ms · ${s.events.total} event${s.events.total === 1 ? '' : 's'} stored in this browser, none sent · ${federated.length ? `${sent ? `${plural(sent)} (model only)` : ''}${failedText}, see Privacy` : state.forgotten ? 'no federated sync on record since your data was erased' : 'no federated sync yet'}`;
  $('status').dataset.kind = 'ok';
}

/** No consent to personalization (as the last audit says): the SDK drops what the page tracks. */
function declined() {
  return state.audit?.consent.current.personalization === false;
}

function fail(e) {
  console.error(e);
  setStatus(`${e?.name ?? 'Error'}: ${e?.message ?? e}`, 'error');
}

// ---------------------------------------------------------------- tracking

/**
 * Events tracked while there is no recommender (it is still starting, or being started again after
 * an erase), with their time: tracked once it is there (flushPending). Bounded: past this many the
 * newest are dropped.
 */
const PENDING_MAX = 100;
const pendingEvents = [];

/** Records one event through the SDK, then refreshes what depends on it. */
function track(event) {
  if (!state.rec) {
    if (pendingEvents.length < PENDING_MAX) pendingEvents.push({ ...event, t: event.t ?? Date.now() });
    return;
  }
  try {
    state.rec.track(event);
  } catch (e) {
    fail(e);
    return;
  }
  // A shopper's action that went through (not an impression the page records by itself): an error
  // on the status line gives way to the resting one again.
  if (event.type !== 'offer_impression' && $('status').dataset.kind === 'error') {
    $('status').dataset.kind = 'info';
    statusAt = 0;
  }
  // (Before consent the SDK drops the event: nothing to train on.)
  if (!event.type.startsWith('offer_') && !declined()) state.browsingTracked++;
  scheduleRefresh();
}

/** Tracks what was done while the recommender was starting. */
function flushPending() {
  // In the order they happened, before anything tracked after the SDK is ready; a replay is not a
  // new action of the shopper's, so it leaves an error on the status line where it is.
  const queued = pendingEvents.splice(0);
  for (const e of queued) {
    try {
      state.rec.track(e);
    } catch (err) {
      fail(err);
      continue;
    }
    if (!e.type.startsWith('offer_') && !declined()) state.browsingTracked++;
  }
  if (queued.length) scheduleRefresh();
}

let refreshTimer;
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => void refresh().catch(fail), 200);
}

// ---------------------------------------------------------------- recommender

/** The SDK, loaded once: a dynamic import, so that a missing build says so instead of hanging the page. */
let sdk;
async function loadSdk() {
  try {
    sdk ??= await import('/dist/index.js');
  } catch (e) {
    // Not served at all (the folder alone, e.g. `localrec serve --static examples/shop`) or served
    // but broken (a stale or half-finished build): each has its own fix.
    const served = await fetch('/dist/index.js', { method: 'HEAD' }).then((r) => r.ok, () => false);
    throw new Error(
      served
        ? `the SDK (/dist/index.js) did not load (${e?.message ?? e}): run npm run build, then reload`
        : `this server does not serve the SDK build at /dist/ (${e?.message ?? e}): start the demo shop with npm start, which builds the SDK and serves it with the shop, then reload`,
    );
  }
  return sdk;
}

async function startRecommender() {
  const t0 = performance.now();
  setStatus('Starting the on-device recommender (TensorFlow.js in a Web Worker)…');
  state.autoSynced = false;
  const { createRecommender } = await loadSdk();
  const consent = rememberedConsent() ?? (CONSENT_GRANTED && !state.erased ? 'granted' : 'required');
  state.rec = await createRecommender({
    catalog: { items: state.items },
    ...(BACKEND ? { backend: BACKEND } : {}),
    // The page trains by itself (below) so that the model panel can chart the loss.
    autoTrainEvery: 0,
    // The aggregation server is behind this very address (/v1/…).
    federated: { serverUrl: location.origin },
    // The shop's neighbour table (scripts/make-neighbors.ts, as `localrec neighbors` makes it from
    // the shop's orders), a static file: "Recommended for you" ranks the shopper's history through it.
    neighbors: { url: '/neighbors.lrn' },
    // The answer remembered from an earlier visit, on any page (the SDK asks the host at every page
    // load; an answer equal to the stored one adds nothing to the history). Without one the banner
    // asks (nothing stored before an answer); ?consent=granted starts on, except after an erase.
    consent,
    ...(state.offerKey ? { offers: { publicKey: state.offerKey } } : {}),
  });
  state.startMs = Math.round(performance.now() - t0);
  flushPending();
  // For the console checks of docs/PRIVACY.md ("Verify it yourself": `await rec.audit()`). Demo only:
  // a shop need not expose its recommender.
  window.rec = state.rec;
  if (state.signedOffers) {
    try {
      await state.rec.setOffers(state.signedOffers);
    } catch (e) {
      state.signedOffers = null;
      state.offersError = `The shop’s signed offers were refused (${e?.message ?? e}), so none are shown on this visit.`;
      fail(e);
    }
  }
  // (Asked when there is no answer: at a first visit, or after an erase.)
  showConsent(consent === 'required', { first: true });
  // The resting status line (restingStatus) takes over at the next refresh.
  statusAt = 0;
}

async function refresh() {
  const rec = state.rec;
  const gen = state.generation;
  if (!rec) return;
  let stats = await rec.stats();
  if (gen !== state.generation) return;
  // Browsing tracked on this page since the last training run (offers shown are events too, but
  // nothing to learn from; the page counts its own calls: stored totals stop at the retention cap).
  if (stats.model.pendingEvents > 0 && state.browsingTracked - state.browsingTrained >= TRAIN_EVERY && !state.training) {
    await train();
    if (gen !== state.generation) return;
    stats = await rec.stats();
  }
  const [recs, audit, offers] = await Promise.all([
    rec.recommend({ k: 8, exclude: 'seen' }),
    rec.audit(),
    // (A failure is shown on the shelf, not as "no offer fits you".)
    state.signedOffers ? rec.offers({ k: SHELF_OFFERS, seed: state.offerSeed, context: offerContext({ page: 'home' }) }).catch((e) => (console.warn('offers:', e), { error: e })) : [],
  ]);
  if (gen !== state.generation) return;
  state.stats = stats;
  state.audit = audit;
  renderRecs(recs);
  // (The grid's personal order is not recomputed here: a background refresh must not move the
  // products under the pointer. It follows the shopper's own actions: renderGrid() below.)
  // How many browsing events (not offer impressions) the shelf was computed with (tests wait on it).
  document.body.dataset.recsHistory = String(Object.entries(stats.events.byType).reduce((a, [t, n]) => a + (t.startsWith('offer_') ? 0 : n), 0));
  renderOffers(offers);
  renderModel(stats);
  renderPrivacy(stats, audit);
  renderRounds();
  // The banner's words follow what is stored (what "Decline" would delete).
  if (!$('consent-banner').hidden) wordConsent(false);
  restingStatus(stats);
  document.body.dataset.audits = String(Number(document.body.dataset.audits ?? 0) + 1);
  // Once the stored history is worth an update: the automatic sync (once per page view).
  void autoSync().catch(fail);
}

/** Sets a button's aria-disabled (not `disabled`: a disabled button drops keyboard focus to <body>). */
function setBusy(button, busy) {
  button.setAttribute('aria-disabled', String(!!busy));
}
const isBusy = (button) => button.getAttribute('aria-disabled') === 'true';

/** A training run; `announce`: its result is said (a run the shopper asked for with "Train now"). */
async function train({ announce: say = false } = {}) {
  const rec = state.rec;
  const gen = state.generation;
  const run = ++state.runs;
  // Every training run (this one, or "Train now") takes in what was browsed so far.
  state.browsingTrained = state.browsingTracked;
  setBusy($('train-now'), true);
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
      // (The automatic runs, every few events, are not said: the caption shows them.)
      if (say) announce(`Trained. ${$('loss-caption').textContent}`);
      return r;
    })
    .finally(() => {
      state.training = null;
      setBusy($('train-now'), false);
    });
  return state.training;
}

// ---------------------------------------------------------------- rendering

let cardSeq = 0;
function card(item, { reason, compact = false } = {}) {
  const li = document.createElement('li');
  li.className = compact ? 'card compact' : 'card';
  li.dataset.itemId = item.id;
  const tile = document.createElement('button');
  tile.type = 'button';
  tile.className = 'card-hit';
  // Its name says what the card shows (title, price); the category and the reason describe it.
  const uid = `card-${++cardSeq}`;
  tile.setAttribute('aria-label', `${item.title}, ${money.format(item.price)}`);
  const described = [`${uid}-cat`];
  const pic = document.createElement('div');
  paintTile(pic, item);
  tile.append(pic);
  const body = document.createElement('div');
  body.className = 'card-body';
  body.innerHTML = `
    <p class="card-cat" id="${uid}-cat">${esc(categoryLabel(item.category))}</p>
    <${compact ? 'h4' : 'h3'} class="card-title">${esc(item.title)}</${compact ? 'h4' : 'h3'}>
    <p class="card-price">${money.format(item.price)}</p>`;
  tile.append(body);
  li.append(tile);
  if (reason) {
    const why = document.createElement('p');
    why.className = `reason reason-${reason.kind}`;
    why.dataset.testid = 'reason';
    why.id = `${uid}-why`;
    why.textContent = reason.text;
    why.title = reason.itemIds.length ? `Based on: ${reason.itemIds.map((id) => state.byId.get(id)?.title ?? id).join(', ')}` : 'No history yet: popular picks';
    li.append(why);
    described.push(why.id);
    // The tooltip's list, for keyboard and screen-reader users too (a description of the card's button).
    if (reason.itemIds.length > 1) {
      const basis = document.createElement('span');
      basis.id = `${uid}-basis`;
      basis.hidden = true;
      basis.textContent = why.title;
      li.append(basis);
      described.push(basis.id);
    }
  }
  tile.setAttribute('aria-describedby', described.join(' '));
  if (!compact) {
    const add = document.createElement('button');
    add.type = 'button';
    add.className = 'btn ghost small add';
    add.textContent = 'Add to cart';
    add.setAttribute('aria-label', `Add ${item.title} to cart`);
    add.addEventListener('click', () => addToCart(item.id));
    li.append(add);
  }
  return li;
}

/**
 * Gives keyboard focus to the card for `itemId` in `list` (its `part`: the card's link or its "Add to
 * cart"), or, when that product is no longer listed, to the card now at `index`. False when the list
 * is empty.
 */
function focusCard(list, { itemId, index = 0, part = '.card-hit' }, options) {
  const cards = [...list.querySelectorAll(':scope > .card')];
  const same = cards.find((c) => c.dataset.itemId === itemId) ?? cards[Math.min(index, cards.length - 1)];
  const target = same?.querySelector(part) ?? same?.querySelector('.card-hit');
  if (!target) return false;
  target.focus(options);
  return true;
}

/** Where focus is, when it is on a card of `list`: enough to find the same place after a re-render. */
function focusedCard(list, el = document.activeElement) {
  const c = el && list.contains(el) ? el.closest('.card') : null;
  if (!c) return null;
  return { list, itemId: c.dataset.itemId, index: [...list.children].indexOf(c), part: el.classList.contains('add') ? '.add' : '.card-hit' };
}

/** Replaces the cards of a list; focus on one of them stays on the same product (or the same place). */
function replaceCards(list, cards) {
  const at = focusedCard(list);
  list.replaceChildren(...cards);
  // (preventScroll: a refresh must not scroll the page back to a shelf the shopper scrolled away from.)
  if (at) focusCard(list, at, { preventScroll: true });
}

/**
 * The shelf while the recommender starts (seconds: the backend probe, the worker, the model): the
 * shop's bestsellers by the catalog's popularity, so that it is never empty. Not a render of the
 * recommender's (recsRenders stays, and the first refresh replaces it).
 */
function renderBestsellers() {
  const top = [...state.items].sort((a, b) => (b.popularity ?? 0) - (a.popularity ?? 0)).slice(0, 8);
  const popular = { kind: 'popular', text: 'Popular in this shop', itemIds: [], basis: [] };
  replaceCards($('recs'), top.map((it) => card(it, { reason: popular })));
  $('recs-hint').textContent = 'The shop’s bestsellers, while this browser starts its own recommender…';
}

function renderRecs(recs) {
  replaceCards($('recs'), recs.map((r) => card(state.byId.get(r.itemId), { reason: r.reason })));
  const personal = recs.some((r) => r.reason.kind === 'personal');
  const history = Object.entries(state.stats?.events.byType ?? {}).some(([t, n]) => n > 0 && !t.startsWith('offer_'));
  // What leaves follows the consent: never the events or the profile made from them; with sharing
  // model updates on, a clipped, noised model update (the privacy panel lists each request).
  $('recs-hint').textContent = personal
    ? state.audit?.privacy.federatedActive
      ? 'Computed in this browser from what you did here. Your events and the taste profile made from them stay on this device; only a clipped, noised model update is shared (see Privacy).'
      : 'Computed in this browser from what you did here. Your events and the taste profile made from them stay on this device, and nothing is shared.'
    : history
      ? 'What you did here does not single anything out yet, so these are the shop’s bestsellers.'
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

let countTimer;
/**
 * The product grid. Called on the shopper's own actions only (the Order select, a category, a search;
 * at start and after an erase), never by a background refresh: with "For you" a re-ranking would move
 * the products under the pointer. `typing`: the count (a live region) waits for a pause in the
 * search field, so that a screen reader says it once, not at every key.
 */
function renderGrid({ typing = false } = {}) {
  const shown = state.items.filter((it) => (!state.category || it.category === state.category) && matches(it, state.query));
  const gen = ++state.gridGeneration;
  const show = (items, order) => {
    replaceCards($('grid'), items.map((it) => card(it)));
    document.body.dataset.gridOrder = order;
  };
  if (state.order === 'you' && state.rec && shown.length > 0) {
    // The page's own list, put in this shopper's order on the device (seen products stay listed);
    // the grid changes once, when the order is known.
    const generation = state.generation;
    state.rec
      .recommend({ candidates: shown.map((it) => it.id), exclude: 'none' })
      .then((ranked) => {
        if (gen !== state.gridGeneration || generation !== state.generation) return;
        const byId = new Map(shown.map((it) => [it.id, it]));
        const first = ranked.map((r) => byId.get(r.itemId)).filter(Boolean);
        const placed = new Set(first.map((it) => it.id));
        show([...first, ...shown.filter((it) => !placed.has(it.id))], 'you');
      })
      .catch((e) => {
        console.warn('personal order:', e);
        if (gen !== state.gridGeneration || generation !== state.generation) return;
        // The shop's order then, and the select says so.
        state.order = 'shop';
        $('order').value = 'shop';
        show(shown, 'shop');
        setStatus(`Could not put the products in your order (${e?.message ?? e}): showing the shop’s order.`, 'error');
      });
  } else show(shown, 'shop');
  const what = [state.category && categoryLabel(state.category), state.query && `“${state.query}”`].filter(Boolean).join(' · ');
  const count = `${shown.length} product${shown.length === 1 ? '' : 's'}${what ? ` for ${what}` : ''}`;
  clearTimeout(countTimer);
  const showCount = () => {
    if ($('result-count').textContent !== count) $('result-count').textContent = count;
  };
  if (typing) countTimer = setTimeout(showCount, 700);
  else showCount();
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
  const nb = s.model.neighbors;
  $('m-neighbors').textContent = nb
    ? `Ranking: your history through the shop’s neighbour table (${nb.items} products × ${nb.width} neighbours, ${nb.hash.slice(0, 8)}…), then the federated model.`
    : 'Ranking: the federated model (no neighbour table loaded).';
  $('m-events').textContent = String(s.events.total);
  $('m-trained').textContent = state.training ? 'training…' : ago(s.model.trainedAt);
  $('m-steps').textContent = String(s.model.trainSteps);
  // Browsing tracked here since the last training run (offers shown are events too, but not counted:
  // they do not start a run). At most what the store holds untrained (a sync trains too).
  const pending = Math.max(0, Math.min(state.browsingTracked - state.browsingTrained, s.model.pendingEvents));
  $('m-pending').textContent = `${pending} browsing event${pending === 1 ? '' : 's'} (trains every ${TRAIN_EVERY})`;
  drawLossChart($('loss-chart'), state.losses);
}

const bytes = (n) => (n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1024 / 1024).toFixed(2)} MB`);
const eps = (x) => (Math.round(x * 100) / 100).toFixed(2);
const ENDPOINT_KIND = {
  config: 'read server settings',
  model: 'download global model',
  update: 'upload noised update',
  cohort: 'secure aggregation: join or poll a cohort',
  neighbors: 'download the shop’s neighbour table (the same file for everyone)',
};
const FEDERATED_KINDS = new Set(['config', 'model', 'update', 'cohort']);
/** A URL on this page's own address as its path (the egress table keeps the whole URL in a title). */
const ownPath = (url) => (url.startsWith(`${location.origin}/`) ? url.slice(location.origin.length) : url);

/** The privacy panel: `rec.audit()` (docs/PRIVACY.md) written out for people. */
function renderPrivacy(s, a) {
  const rows = Object.entries(EVENT_LABELS).map(([type, label]) => {
    const n = a.events.byType[type] ?? 0;
    return `<tr class="${n ? '' : 'zero'}" data-type="${type}"><th scope="row">${label}</th><td>${n}</td></tr>`;
  });
  rows.push(`<tr class="total"><th scope="row">Total events</th><td data-testid="privacy-total">${a.events.total}</td></tr>`);
  $('privacy-counts').innerHTML = rows.join('');
  // Where it is kept: the storage actually in use (IndexedDB, or this tab's memory in private mode),
  // or nowhere without consent to personalization.
  const noConsent = a.consent.current.personalization === false;
  const kept = a.storage.kind === 'indexeddb';
  const f = state.forgotten;
  // (A date too: a withdrawal is remembered across visits.)
  const erasedWhen = f ? `${f.why === 'erased' ? 'by “Erase everything”' : 'when you withdrew your consent'} on ${new Date(f.t).toLocaleString()}` : '';
  $('a-where-line').textContent = kept
    ? 'Stored only in this browser (IndexedDB), used only here.'
    : noConsent
      ? 'Nothing is stored: without your consent to personalization this browser keeps no events, not even in memory.'
      : 'Kept only in this tab’s memory (this browser gives the shop no storage, as in private mode), used only here; gone when the tab closes.';
  // "No consent yet" only while the banner has not been answered: after a "Decline" it says so.
  const answeredNo = noConsent && (f?.why === 'withdrawn' || rememberedConsent()?.personalization === false);
  $('privacy-range').textContent = a.events.total
    ? `Oldest ${new Date(a.events.oldest).toLocaleString()}, newest ${new Date(a.events.newest).toLocaleString()}.`
    : noConsent
      ? f?.why === 'withdrawn'
        ? `Nothing stored: what was stored was erased ${erasedWhen}, and without consent events are not even kept in memory.`
        : answeredNo
          ? 'Nothing stored: you declined, so events are not even kept in memory.'
          : f
            ? `Nothing stored: everything was erased ${erasedWhen}, and until you answer the banner events are not even kept in memory.`
            : 'Nothing stored: no consent yet, so events are not even kept in memory.'
      : kept
        ? 'Nothing stored yet.'
        : 'Nothing kept yet (in this tab’s memory only).';
  $('a-storage').textContent = kept
    ? `IndexedDB “${a.storage.database}” (${a.storage.stores.join(', ')})`
    : noConsent
      ? 'nowhere (without consent nothing is kept, not even in memory)'
      : 'this tab’s memory only (no IndexedDB here: nothing persisted)';
  $('a-events-bytes').textContent = bytes(a.events.bytes);
  $('a-events-bytes').dataset.bytes = String(a.events.bytes);
  $('a-model').textContent = a.model.stored
    ? `${a.model.items} × ${a.model.dim}, ${bytes(a.model.bytes)}, global version ${a.model.version}${a.model.trainedAt ? `, trained ${time.format(a.model.trainedAt)}` : ''}`
    : 'none stored';
  $('a-retention').textContent = `${a.retention.maxEvents.toLocaleString()} events, ${a.retention.maxAgeDays} days`;

  // What left: every request the SDK made, from its own log.
  const log = a.egress.log;
  // After a withdrawal or an erase the SDK's log starts afresh: say so, instead of "nothing has left".
  $('a-egress-summary').textContent = log.length
    ? `${f ? `Since the log was erased with your data ${erasedWhen}: ` : ''}${a.egress.requests} request${a.egress.requests === 1 ? '' : 's'}, ${bytes(a.egress.bytesSent)} sent in all — model traffic and the shop’s neighbour table, never an event. Newest first:`
    : f
      ? `No record: the log of what left this device was erased with your data ${erasedWhen}; nothing has left since. (The page itself loads the catalog and polls the round status; those requests carry no data about you.)`
      : 'Nothing has left this device. (The page itself loads the catalog and polls the round status; those requests carry no data about you.)';
  $('a-egress').innerHTML = log
    .slice(-12)
    .reverse()
    .map(
      (e) =>
        `<tr data-kind="${esc(e.kind)}"><td>${esc(clock.format(e.t))}</td><td class="request" title="${esc(e.method)} ${esc(e.endpoint)}: ${esc(ENDPOINT_KIND[e.kind] ?? e.kind)}${e.bodySha256 ? ` · body SHA-256 ${esc(e.bodySha256)}` : ''}"><code>${esc(e.method)} ${esc(ownPath(e.endpoint))}</code></td><td>${e.bytes ? bytes(e.bytes) : '—'}</td><td class="${e.status >= 200 && e.status < 400 ? 'ok' : 'bad'}">${e.status || 'offline'}</td></tr>`,
    )
    .join('');

  // ε: spent against the budget, and what is left of it in syncs (known after the first sync,
  // which tells the device the server's σ).
  const syncsLeftText = (n) =>
    n === null
      ? `Each sync spends part of the budget; how much depends on this server’s noise (σ = ${state.serverConfig?.noiseMultiplier ?? '…'}).`
      : n === 0
        ? 'At this server’s noise this device can send no more updates: it refuses, for good (“Sync now” still receives the newest global model).'
        : `At this server’s noise this device can sync ${n === 1 ? 'once' : `${n} times`} more; then it refuses, for good.`;
  const p = a.privacy;
  const frac = p.epsilonBudget > 0 ? Math.min(1, p.epsilonSpent / p.epsilonBudget) : 0;
  $('a-eps-bar').style.width = `${frac * 100}%`;
  $('a-eps-meter').setAttribute('aria-valuenow', String(Math.round(frac * 100)));
  $('a-eps-bar').classList.toggle('full', frac >= 0.75);
  // Why sharing is off, when it is: in the ε line, and under "Sync now" (its description, and that of
  // the automatic-sync box).
  const offWhy = p.federatedActive
    ? null
    : !p.federatedConfigured
      ? 'federated learning is not configured here'
      : p.globalPrivacyControl && p.globalPrivacyControlHonored
        ? 'your browser sends Global Privacy Control, which this shop honours'
        : noConsent
          ? answeredNo
            ? 'you declined'
            : 'you have not consented (yet)'
          : !a.consent.current.federated
            ? 'you chose “Only on this device”'
            : 'this device does not sync now';
  const consentCan = noConsent || (p.federatedConfigured && !a.consent.current.federated && !(p.globalPrivacyControl && p.globalPrivacyControlHonored));
  const off = offWhy && `Sharing model updates is off: ${offWhy}, so nothing is sent.${consentCan ? ' “Change consent” → “Accept all” turns it on.' : ''}`;
  const spent = `ε ${eps(p.epsilonSpent)} of ${eps(p.epsilonBudget)} spent (δ = ${p.delta < 0.001 ? p.delta.toExponential(0) : p.delta}) in ${p.syncs} sync${p.syncs === 1 ? '' : 's'}`;
  $('a-eps').textContent = !p.federatedConfigured
    ? 'Federated learning is not configured: nothing is ever sent.'
    : f && noConsent
      ? `No record: the count of the ε this device spent was erased with your data ${erasedWhen}. Sharing is off: nothing is sent, no ε is spent. Accepting again starts a new budget of ε ${eps(p.epsilonBudget)}.`
      : `${spent}${f ? ` (a new budget: the count before was erased with your data ${erasedWhen})` : ''}. ${
          offWhy ? `Sharing model updates is off (${offWhy}): nothing is sent and no ε is spent.` : syncsLeftText(p.syncsLeft)
        }`;
  $('a-eps').dataset.epsilon = eps(p.epsilonSpent);

  const c = a.consent;
  const yes = (b) => (b ? 'yes' : 'no');
  $('a-consent').textContent = `Personalization: ${yes(c.current.personalization)} · sharing model updates: ${yes(c.current.federated)} · sync ${p.federatedActive ? 'allowed' : 'off'}${c.droppedBeforeConsent ? ` · ${c.droppedBeforeConsent} event${c.droppedBeforeConsent === 1 ? '' : 's'} dropped before consent` : ''}`;
  $('a-consent-history').innerHTML = c.history
    .slice(-5)
    .reverse()
    .map((h) => `<li>${esc(time.format(h.t))}: personalization ${yes(h.personalization)}, updates ${yes(h.federated)} <span class="src">(${esc(h.source)})</span></li>`)
    .join('');
  $('a-gpc').textContent = p.globalPrivacyControl
    ? p.globalPrivacyControlHonored
      ? 'Your browser sends Global Privacy Control: this shop honours it, so nothing is sent (sync is off).'
      : 'Your browser sends Global Privacy Control, but this shop chose to sync anyway.'
    : 'Global Privacy Control: not sent by your browser.';
  $('a-gpc').dataset.gpc = String(p.globalPrivacyControl);
  // Past the budget "Sync now" still receives the newest global model (the upload is refused).
  // (aria-disabled: the button keeps keyboard focus, and says why it is off: #sync-why.)
  setBusy($('sync-now'), !!off || !!state.syncing);
  const syncWhy = off ?? (p.syncsLeft === 0 ? 'This device’s privacy budget has no room for another update: “Sync now” only receives the newest global model now.' : '');
  // The automatic sync: off (and unchecked) while sharing is off, or without storage (private mode),
  // where it never runs; the shopper's own choice comes back with sharing.
  const autoOff =
    off ??
    (kept ? null : 'No automatic sync without storage (private mode): this device could not remember the ε it spends (“Sync now” only receives).') ??
    // It syncs once per device (autoSync): after a first sync it has nothing left to do.
    (p.syncs > 0 ? 'This device has synced: the automatic sync (once per device) is done; “Sync now” syncs again.' : null);
  $('auto-sync').disabled = !!autoOff;
  $('auto-sync').checked = !autoOff && state.autoSyncWanted;
  // Why, in words next to the buttons (not only a tooltip): what "Sync now" can do, then why the box is off.
  const why = [...new Set([syncWhy, autoOff].filter(Boolean))].join(' ');
  if ($('sync-why').textContent !== why) $('sync-why').textContent = why;
}

/** Downloads `rec.export()` as a JSON file. */
async function exportData() {
  if (!state.rec) return;
  const file = await state.rec.export();
  const blob = new Blob([JSON.stringify(file, null, 2)], { type: 'application/json' });
  const a = Object.assign(document.createElement('a'), { href: URL.createObjectURL(blob), download: `localrec-export-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-')}.json` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  setStatus(`Exported ${file.events.length} event${file.events.length === 1 ? '' : 's'}, the consent history and the egress log as JSON.`, 'ok');
}

// ---------------------------------------------------------------- consent

/** Shows or hides the banner; `first`: with the words of a first visit (no answer yet). */
function showConsent(show, { first = false } = {}) {
  if (show) wordConsent(first);
  $('consent-banner').hidden = !show;
}

const CONSENT_ASK = 'Personalize this shop, on this device?';
const CONSENT_WHAT =
  'localrec would keep what you view, search and buy in this browser only, to recommend products and offers. With “Accept all” it also sends the shop’s server a clipped, noised model update now and then — never your events.';

/**
 * The banner's words for who sees it: a first visit (or after an erase: nothing is stored until an
 * answer), a shopper who declined (nothing is stored), or one who consented, whose data "Decline"
 * deletes: it says what, before the click.
 */
function wordConsent(first) {
  const a = state.audit;
  const c = a?.consent.current;
  const answered = !first && !!c && (c.personalization || rememberedConsent() !== null || state.forgotten?.why === 'withdrawn');
  const note = $('consent-decline-note');
  note.hidden = true;
  note.textContent = '';
  if (!answered) {
    $('consent-title').textContent = CONSENT_ASK;
    $('consent-text').textContent = `${CONSENT_WHAT} Until you choose, nothing is stored.`;
  } else if (!c.personalization) {
    $('consent-title').textContent = CONSENT_ASK;
    $('consent-text').textContent = `${CONSENT_WHAT} You declined, so nothing is stored now.`;
  } else {
    const n = a.events.total;
    $('consent-title').textContent = 'Change your consent';
    $('consent-text').textContent = `Now: personalization on, ${c.federated ? 'and noised model updates may be shared with the shop' : 'on this device only (nothing is sent)'}. “Accept all” also sends the shop’s server a clipped, noised model update now and then — never your events; “Only on this device” keeps your data here and sends nothing.`;
    note.textContent = `“Decline” deletes what this browser keeps for the shop: ${n} event${n === 1 ? '' : 's'}, the personal model, the log of what was sent and the count of the privacy budget spent. This cannot be undone.`;
    note.hidden = false;
  }
}

/** Where focus goes once the banner is answered: the control that opened it ("Change consent", Erase). */
let consentReturn = null;

/**
 * Shows the banner on request: it sits at the top of the page, so bring it into view (under the
 * sticky top bar) and move focus into it; the answer gives focus back to `from`.
 */
function openConsent(from) {
  const banner = $('consent-banner');
  showConsent(true);
  consentReturn = from ?? null;
  const top = banner.getBoundingClientRect().top + window.scrollY - document.querySelector('.topbar').offsetHeight - 12;
  window.scrollTo({ top: Math.max(0, top), behavior: scrollBehavior() });
  banner.focus({ preventScroll: true });
  banner.classList.remove('flash');
  void banner.offsetWidth; // restart the animation
  banner.classList.add('flash');
}

/** Hides the banner after an answer, without leaving keyboard focus on the hidden buttons (<body>). */
function closeConsent() {
  const banner = $('consent-banner');
  const back = consentReturn;
  consentReturn = null;
  const had = banner.contains(document.activeElement) || document.activeElement === document.body;
  showConsent(false);
  if (!had) return;
  if (back?.isConnected && !back.disabled && back.offsetParent !== null) back.focus();
  // Shown at start (a first visit, or after an erase): the shelf the answer changes, just below where it was.
  else $('recs-section').focus({ preventScroll: true });
}

function rememberedConsent() {
  try {
    const c = JSON.parse(localStorage.getItem(CONSENT_KEY) ?? 'null');
    return c && typeof c.personalization === 'boolean' && typeof c.federated === 'boolean' ? { personalization: c.personalization, federated: c.federated } : null;
  } catch {
    return null;
  }
}

/** When the remembered answer withdrew a consent given before (state.forgotten), or null. */
function rememberedWithdrawal() {
  try {
    const t = JSON.parse(localStorage.getItem(CONSENT_KEY) ?? 'null')?.withdrawnAt;
    return Number.isFinite(t) ? t : null;
  } catch {
    return null;
  }
}

function rememberConsent(c) {
  try {
    if (c) localStorage.setItem(CONSENT_KEY, JSON.stringify(c));
    else localStorage.removeItem(CONSENT_KEY);
  } catch {
    // Storage blocked: the banner asks again next time.
  }
}

/**
 * The model panel as on a fresh device: what it showed came from data that is now gone (`erased`:
 * data there was, the record of its syncs included).
 */
function forgetModelPanel(erased = true) {
  state.lastSync = null;
  $('sync-result').textContent = erased ? 'No sync on record: the record of this device’s syncs was erased with your data.' : 'No sync from this page yet.';
  delete $('sync-result').dataset.kind;
  state.losses = [];
  state.runs = 0;
  $('loss-caption').textContent = 'Training loss appears here after the first training run.';
}

async function chooseConsent(personalization, federated) {
  if (!state.rec) return;
  // Consent to personalization given before (as the panel last read it): a "Decline" now withdraws it.
  const withdraws = !personalization && state.audit?.consent.current.personalization === true;
  const had = state.audit?.events.total ?? 0;
  try {
    await state.rec.setConsent({ personalization, federated });
    // A withdrawal erases everything stored, the egress log and the ε count included: the privacy
    // panel says so (instead of "nothing has left this device"), at later visits too.
    if (withdraws) state.forgotten = { t: Date.now(), why: 'withdrawn' };
    rememberConsent({ personalization, federated, ...(state.forgotten?.why === 'withdrawn' ? { withdrawnAt: state.forgotten.t } : {}) });
    // Declining erases what was stored and the personal model: the panel forgets them too.
    if (!personalization) {
      forgetModelPanel(withdraws);
      state.ratings.clear();
      state.browsingTrained = state.browsingTracked;
    }
    closeConsent();
    setStatus(
      personalization
        ? federated
          ? 'Thanks: personalization on; noised model updates may be shared.'
          : 'Thanks: personalization on, on this device only; nothing will be sent.'
        : withdraws
          ? `Declined: deleted from this device ${had} event${had === 1 ? '' : 's'}, the personal model, the log of what was sent and the count of the privacy budget spent. Nothing is stored from now on; you see the shop’s bestsellers.`
          : 'Declined: nothing is stored; you see the shop’s bestsellers.',
      'ok',
    );
    await refresh();
  } catch (e) {
    fail(e);
  }
}

// ---------------------------------------------------------------- offers

function cartLines() {
  return [...state.cart].map(([itemId, quantity]) => ({ itemId, quantity, price: state.byId.get(itemId)?.price }));
}

/**
 * The context of an rec.offers() call: the cart only when it holds something. A known cart below an
 * offer's minimum basket hides the offer, an empty one too; left out, "£2 off orders over £20" and
 * the welcome offer are advertised to fill the cart (docs/OFFERS.md).
 */
function offerContext(context) {
  return state.cart.size ? { ...context, cart: cartLines() } : context;
}

function discountText(d) {
  return d.kind === 'percent' ? `${d.percent}% off${d.maxAmount ? ` (up to ${money.format(d.maxAmount)})` : ''}` : `${money.format(d.amount)} off`;
}

function offerCard(o) {
  const li = document.createElement('li');
  const applied = state.appliedOffer?.offerId === o.offerId;
  li.className = `offer${o.explore ? ' explore' : ''}${applied ? ' applied' : ''}`;
  li.dataset.offerId = o.offerId;
  li.innerHTML = `
    <p class="offer-discount">${esc(o.discount.kind === 'percent' ? `${o.discount.percent}% off` : `${money.format(o.discount.amount)} off`)}${o.discount.maxAmount ? ` <span class="fine">up to ${esc(money.format(o.discount.maxAmount))}</span>` : ''}</p>
    <h3 class="offer-title">${esc(o.title)}</h3>
    <p class="reason reason-offer" data-testid="offer-reason">${esc(o.reason)}</p>
    ${o.explore ? '<p class="explore-tag" title="Picked to learn what you like (a little exploration), not because it scored best">Trying something new</p>' : ''}
    <p class="fine offer-value" title="What the policy expects the offer to be worth to the shop for you">expected value ${money.format(o.expectedValue)}</p>`;
  const use = document.createElement('button');
  use.type = 'button';
  use.className = 'btn ghost small use-offer';
  // aria-disabled, not disabled: the button the shopper just used keeps keyboard focus.
  useOfferButton(use, o.title, applied);
  use.addEventListener('click', () => {
    if (state.appliedOffer?.offerId !== o.offerId) redeem(o);
  });
  li.append(use);
  return li;
}

function impress(offers) {
  // Without consent the SDK drops the event: not marked, so it is recorded once consent is given.
  if (!state.audit?.consent.current.personalization) return;
  // One impression per offer per page view: refreshes do not count again.
  for (const o of offers) {
    if (state.impressed.has(o.offerId)) continue;
    state.impressed.add(o.offerId);
    track({ type: 'offer_impression', offerId: o.offerId });
  }
}

/** How many offers the shelf shows. */
const SHELF_OFFERS = 3;

/** A line of small print on an offers shelf (nothing fits, or what went wrong). */
function offerNote(text, kind = 'info') {
  const li = document.createElement('li');
  li.className = 'fine offer-note';
  li.dataset.kind = kind;
  li.textContent = text;
  return li;
}

/** The offers shelf: `offers` from rec.offers(), or `{ error }` when choosing them failed. */
function renderOffers(offers) {
  $('offers-section').hidden = !state.signedOffers && !state.offersError;
  const error = Array.isArray(offers) ? null : offers.error;
  if (error) offers = [];
  // The offer on the cart keeps its place on the shelf, marked applied, until checkout (rec.offers()
  // need not pick it again meanwhile): without it the next offer's button would slide under the
  // pointer.
  let shown = offers;
  const applied = state.appliedOffer;
  if (applied) {
    shown = offers.filter((o) => o.offerId !== applied.offerId).slice(0, SHELF_OFFERS - 1);
    const was = state.shelfOffers.indexOf(applied.offerId);
    shown.splice(was >= 0 ? Math.min(was, shown.length) : shown.length, 0, applied);
  }
  const list = $('offers');
  const focused = list.contains(document.activeElement) ? document.activeElement.closest('.offer')?.dataset.offerId : undefined;
  list.replaceChildren(...shown.map(offerCard));
  if (!state.signedOffers && state.offersError) list.replaceChildren(offerNote(state.offersError, 'error'));
  else if (error) list.append(offerNote(`Offers could not be chosen right now (${error?.message ?? error}); they come back with the next refresh.`, 'error'));
  else if (state.signedOffers && shown.length === 0) list.replaceChildren(offerNote('No offer fits you right now.'));
  // Focus on an offer's button stays on that offer when it is still shown (else on the shelf's first).
  if (focused !== undefined) (list.querySelector(`.offer[data-offer-id="${CSS.escape(focused)}"] .use-offer`) ?? list.querySelector('.use-offer'))?.focus({ preventScroll: true });
  state.shelfOffers = shown.map((o) => o.offerId);
  document.body.dataset.offers = state.shelfOffers.join(',');
  impress(shown);
}

/** Marks the applied offer's cards (shelf and product page) as applied, and the others as usable. */
function markApplied() {
  for (const li of document.querySelectorAll('.offer[data-offer-id]')) {
    const on = li.dataset.offerId === state.appliedOffer?.offerId;
    li.classList.toggle('applied', on);
    const b = li.querySelector('.use-offer');
    if (!b) continue;
    useOfferButton(b, li.querySelector('.offer-title')?.textContent ?? '', on);
  }
}

/** An offer's button: "Use offer", or "Applied ✓" (aria-disabled), named with the offer it is for. */
function useOfferButton(b, title, applied) {
  b.textContent = applied ? 'Applied ✓' : 'Use offer';
  b.setAttribute('aria-label', applied ? `Offer applied: ${title}` : `Use offer: ${title}`);
  b.setAttribute('aria-disabled', String(applied));
}

/** The signed catalog's offer behind a shown one (its scope and minimum basket). */
function catalogOffer(offerId) {
  return state.signedOffers?.catalog?.offers?.find((o) => o.id === offerId);
}

function inOfferScope(offer, item) {
  const s = offer.scope;
  return s.kind === 'all' || (s.kind === 'categories' && s.categories.includes(item.category)) || (s.kind === 'items' && s.itemIds.includes(item.id));
}

/** What the applied offer takes off the cart as it is, or why it does not apply (yet). */
function offerEffect(shown) {
  const offer = catalogOffer(shown.offerId);
  if (!offer) return { amount: 0, why: 'the shop no longer offers it' };
  let basket = 0;
  let inScope = 0;
  for (const [id, q] of state.cart) {
    const it = state.byId.get(id);
    basket += q * it.price;
    if (inOfferScope(offer, it)) inScope += q * it.price;
  }
  if (inScope === 0) return { amount: 0, why: offer.scope.kind === 'all' ? 'your cart is empty' : 'add an item it covers to your cart' };
  if (offer.minBasket && basket < offer.minBasket) return { amount: 0, why: `it needs a basket of ${money.format(offer.minBasket)} (yours: ${money.format(basket)})` };
  const d = offer.discount;
  const amount = d.kind === 'percent' ? Math.min((inScope * d.percent) / 100, d.maxAmount ?? Infinity) : Math.min(d.amount, inScope);
  return { amount: Math.round(amount * 100) / 100, why: null };
}

/**
 * "Use offer": puts the offer on the cart. Nothing is recorded yet: checkout() records the
 * redemption (`offer_redeemed`), and only when the offer applies to the order.
 */
function redeem(o) {
  state.appliedOffer = o;
  renderCart();
  markApplied();
  const effect = offerEffect(o);
  setStatus(
    effect.why
      ? `Offer “${o.title}” is on your cart, but it does not apply yet: ${effect.why}. It counts as used only if it applies when you check out.`
      : `Offer “${o.title}” applied: ${money.format(effect.amount)} off your cart. It counts as used when you check out; the shop learns only that you used it.`,
    'ok',
  );
  // The shelf is read again with the offer on the cart (it keeps its place there: renderOffers).
  scheduleRefresh();
}

// ---------------------------------------------------------------- federated sync

/**
 * The page's own requests to the aggregation server (its status panel), made as privately as the
 * SDK makes its own (PRIVATE_FETCH in src/federated/sync.ts): no cookie, no Referer, nothing from or
 * into the HTTP cache, so that the server cannot tie a session cookie of the shop to the time and
 * address of a model update.
 */
const SERVER_FETCH = { credentials: 'omit', referrerPolicy: 'no-referrer', cache: 'no-store' };

async function loadServerConfig() {
  try {
    const res = await fetch('/v1/config', SERVER_FETCH);
    // An error body is not a config (σ would read as undefined); the rounds panel says what is wrong.
    if (res.ok) state.serverConfig = await res.json();
  } catch {
    // shown as unreachable by the rounds panel
  }
}

function syncError(e) {
  switch (e?.name) {
    case 'PrivacyBudgetError':
      if (/cannot remember/.test(e.message ?? '')) return 'Not sent: this browser keeps no storage for the shop (private mode), so this device could not remember the privacy budget it spends.';
      return 'Not sent: this device’s privacy budget has no room for another update, so it will not send one — that is the point of a budget.';
    case 'NetworkError':
      return e.status ? `The server refused the update (${e.status}): ${e.message}` : `Offline: the aggregation server could not be reached (${e.message}). Nothing was lost; try again later.`;
    case 'ConsentError':
      return `Sync is off: ${e.message}`;
    default:
      return `${e?.name ?? 'Error'}: ${e?.message ?? e}`;
  }
}

async function sync(how = 'button') {
  const rec = state.rec;
  const gen = state.generation;
  if (!rec || state.syncing) return;
  // Past the budget (the audit says no sync fits any more) "Sync now" only receives: the newest
  // global model, nothing uploaded, no ε spent (a contributing call would be refused). So it does
  // without IndexedDB (private mode: storage is memory), where the device would forget the ε it
  // spent at the next visit (the SDK refuses to contribute there).
  const noStorage = state.audit != null && state.audit.storage.kind !== 'indexeddb';
  const receiveOnly = state.audit?.privacy.syncsLeft === 0 || noStorage;
  setBusy($('sync-now'), true);
  $('sync-result').dataset.kind = 'busy';
  $('sync-result').textContent =
    how === 'auto'
      ? `Syncing automatically (once, now that ${AUTO_SYNC_MIN_EVENTS} browsing events are stored)…`
      : receiveOnly
        ? `Receiving the newest global model (${noStorage ? 'this browser keeps no storage for the shop, so this device could not remember its privacy budget' : 'this device’s privacy budget has no room for another update'}: nothing is sent)…`
        : 'Syncing: pulling the global model, training here, sending a noised update…';
  // rec.sync() reports each phase; under secure aggregation the wait for a cohort can take minutes.
  const onProgress = (p) => {
    if (gen !== state.generation) return;
    const what = {
      config: 'reading the server’s settings',
      model: 'pulling the global model',
      training: 'training here on this device',
      cohort: `waiting for a cohort of ${p.size} devices (${p.joined} joined)`,
      upload: `sending one clipped, noised update (${bytes(p.bytes ?? 0)})`,
      recovery: `waiting for the cohort’s other members (${p.submitted} of ${p.size} uploaded)`,
    }[p.phase];
    $('sync-result').textContent = `${how === 'auto' ? 'Syncing automatically (once)' : receiveOnly ? 'Receiving (nothing is sent)' : 'Syncing'}: ${what}…`;
  };
  state.syncing = (async () => {
    await state.training?.catch(() => undefined);
    return rec.sync(receiveOnly ? { onProgress, contribute: false } : { onProgress });
  })();
  try {
    const r = await state.syncing;
    if (gen !== state.generation) return;
    state.lastSync = r;
    $('sync-result').dataset.kind = 'ok';
    $('sync-result').textContent = receiveOnly
      ? `Received at ${time.format(Date.now())}: now on global version ${r.version}${r.modelChanged ? '' : ' (no newer one)'}. Nothing sent: ${noStorage ? 'without storage (private mode) this device could not remember the ε it spends, so it only receives' : `this device’s privacy budget has no room for another update (one more would pass ε ${eps(r.budget)}), so it only receives now (ε ${eps(r.epsilon)} spent, unchanged)`}.`
      : r.sent
        ? `${how === 'auto' ? 'Synced automatically' : 'Synced'} at ${time.format(Date.now())}: now on global version ${r.version}; uploaded ${bytes(r.uploadedBytes)} (one clipped, noised update, no events); ε ${eps(r.epsilon)} of ${eps(r.budget)} spent.${r.published != null ? ` It completed a round: version ${r.published} published.` : r.pending !== undefined ? ` ${r.pending} update${r.pending === 1 ? '' : 's'} now waiting at the server for the next round.` : ''}`
        : `Pulled global version ${r.version} (nothing uploaded: too little history here to learn from yet); ε ${eps(r.epsilon)} of ${eps(r.budget)}.`;
    document.body.dataset.syncs = String(Number(document.body.dataset.syncs ?? 0) + 1);
  } catch (e) {
    if (gen !== state.generation) return;
    let message = syncError(e);
    if (e?.name === 'PrivacyBudgetError') {
      // Past the budget the device still receives what everyone else taught the model: the refused
      // sync brought the newest version with it (a second, receiving sync here would be a second
      // pair of requests, which would set this device apart at the server).
      const version = /version (\d+)\)/.exec(e.message ?? '')?.[1];
      if (version !== undefined) message += ` It still receives: now on global version ${version}, nothing sent.`;
    }
    $('sync-result').dataset.kind = 'error';
    $('sync-result').textContent = message;
    document.body.dataset.syncErrors = String(Number(document.body.dataset.syncErrors ?? 0) + 1);
  } finally {
    state.syncing = null;
  }
  await pollRounds();
  await refresh().catch(fail);
}

/** Browsing events (views, searches, cart changes, purchases, ratings; not offers shown) stored, as an audit says. */
function storedBrowsing(a) {
  return Object.entries(a.events.byType).reduce((n, [t, k]) => n + (t.startsWith('offer_') ? 0 : k), 0);
}

/**
 * After a refresh: one automatic sync per page view, only when allowed, never the device's last ε,
 * and only once AUTO_SYNC_MIN_EVENTS browsing events are stored (fewer teach the model next to
 * nothing, for more than half of the budget). The sync trains on them first.
 */
async function autoSync() {
  const a = state.audit;
  if (!$('auto-sync').checked || state.autoSynced || state.syncing || !a?.privacy.federatedActive) return;
  // Without IndexedDB (private mode) the accountant lives in memory: every visit would start with
  // `syncs` 0 and send an update again. No automatic sync there ("Sync now" only receives).
  if (a.storage.kind !== 'indexeddb') return;
  if (a.privacy.syncs > 0) return; // leave the rest of the budget to "Sync now"
  if (storedBrowsing(a) < AUTO_SYNC_MIN_EVENTS) return;
  state.autoSynced = true;
  await sync('auto');
}

// ---------------------------------------------------------------- simulated shoppers

let simTimer;
/** A run is under way on this page: its end is said. */
let simWatched = false;
async function startSimulation() {
  setBusy($('simulate'), true);
  try {
    const res = await fetch('/demo/simulate', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ shoppers: SHOPPERS }) });
    const body = await res.json().catch(() => ({}));
    // 409: one is running already (shown as it goes); 503 with `unavailable`: the data is missing,
    // which the status line says and the button keeps (it stays off).
    if (!res.ok && res.status !== 409 && !body.unavailable) throw new Error(body.error ?? `HTTP ${res.status}`);
    renderSimulation(body);
    if (body.unavailable) return;
  } catch (e) {
    $('sim-status').textContent = `Could not start the simulation: ${e.message}`;
    setBusy($('simulate'), false);
    return;
  }
  pollSimulation();
}

async function pollSimulation() {
  clearTimeout(simTimer);
  let s;
  try {
    const res = await fetch('/demo/simulate/status');
    // A 404 is a server without the demo's endpoints (only npm start has them): no button then.
    if (res.status === 404) {
      setBusy($('simulate'), true);
      $('simulate-cancel').hidden = true;
      $('sim-status').textContent = 'Not available here: this server has no /demo/simulate (start the demo shop with npm start).';
      return;
    }
    if (!res.ok) throw new Error(`the server answered HTTP ${res.status}`);
    s = await res.json();
  } catch (e) {
    $('sim-status').textContent = `Lost the server: ${e.message}`;
    setBusy($('simulate'), false);
    return;
  }
  renderSimulation(s);
  if (s.running) simTimer = setTimeout(pollSimulation, 800);
  else if (s.phase !== 'idle') void pollRounds();
}

const pct = (x) => `${(x * 100).toFixed(1)}%`;

function renderSimulation(s) {
  const running = s.running;
  // Without the retail data there is nothing to replay: the button stays off and says why.
  setBusy($('simulate'), running || !!s.unavailable);
  $('simulate').title = s.unavailable ? 'Off: the online-retail data is missing on the server' : '';
  $('simulate-cancel').hidden = !running;
  $('sim-meter').hidden = s.phase === 'idle';
  const simPct = s.shoppers ? (100 * s.done) / s.shoppers : 0;
  $('sim-bar').style.width = `${simPct}%`;
  $('sim-meter').setAttribute('aria-valuenow', String(Math.round(simPct)));
  document.body.dataset.sim = s.phase;
  const el = $('sim-status');
  el.dataset.phase = s.phase;
  if (s.phase === 'idle') {
    el.textContent = s.unavailable ? `Off: ${s.unavailable}.` : '';
    return;
  }
  if (s.phase === 'loading') {
    el.textContent = s.message ?? 'Reading purchase histories…';
    return;
  }
  if (s.phase === 'failed') {
    el.textContent = `Simulation failed: ${s.error}`;
    return;
  }
  const secs = Math.round(s.elapsedMs / 1000);
  const head =
    `${s.done} of ${s.shoppers} shoppers synced in ${secs} s · global model version ${s.startVersion} → ${s.version}` +
    ` · ${s.sent} updates${s.bytesPerUpdate ? ` of ${bytes(s.bytesPerUpdate)}` : ''}` +
    (s.epsilonPerDevice ? ` · ε ${eps(s.epsilonPerDevice)} per device` : '') +
    (s.failed ? ` · ${s.failed} failed (${s.lastError})` : '') +
    (s.message ? ` · ${s.message}` : '');
  if (running) {
    el.textContent = head;
    simWatched = true;
    return;
  }
  const q = s.quality;
  const verdict = !q || q.after === null
    ? ''
    : ` “Similar items” against what ${q.pairs.toLocaleString()} held-out purchases went on to buy: hit rate ${pct(q.before)} → ${pct(q.after)} (random picks: ${pct(q.random)}).` +
      (q.after > q.before * 1.5 && q.after > q.random * 1.5
        ? ' The shoppers taught the global model.'
        : state.serverConfig?.noiseMultiplier === 0
          ? ` Little change: ${s.shoppers} shoppers, each sending one clipped update, move the global model only a little.`
          : ` That is about chance: with σ = ${state.serverConfig?.noiseMultiplier ?? 1} each update is mostly noise, and ${s.shoppers} shoppers are far too few for their average to beat it (quality under differential privacy needs many thousands of devices; docs/protocol.md).`);
  const next = s.version > (state.stats?.model.version ?? 0) ? ` Press “Sync now” to pull version ${s.version} into this browser.` : '';
  el.textContent = `${s.phase === 'done' ? 'Done' : s.phase === 'cancelled' ? 'Cancelled' : 'Stopped'}: ${head}.${verdict}${next}`;
  // Said once when a run this page watched ends (its progress, every second, is not).
  if (simWatched) {
    simWatched = false;
    announce(`Simulated shoppers ${s.phase === 'done' ? 'done' : s.phase}: ${s.done} of ${s.shoppers} synced, global model version ${s.startVersion} → ${s.version}.`);
  }
}

// ---------------------------------------------------------------- federated rounds

let lastRounds = null;
/** GET a JSON endpoint of the aggregation server: its status and body (null when not JSON). */
async function getJson(path) {
  const res = await fetch(path, SERVER_FETCH);
  return { path, status: res.status, ok: res.ok, body: await res.json().catch(() => null) };
}

async function pollRounds() {
  const at = Date.now();
  try {
    const [health, round] = await Promise.all([getJson('/v1/health'), getJson('/v1/rounds/current')]);
    // An error answer is not a round: say what the server said instead of reading fields off it.
    const bad = [health, round].find((r) => !r.ok || !r.body);
    if (bad?.status === 404) lastRounds = { error: `no aggregation server behind ${bad.path}, HTTP 404`, at };
    else if (bad) lastRounds = { unhealthy: `${bad.path} answered HTTP ${bad.status}${bad.body?.error ? `: ${bad.body.error}` : ''}`, at };
    else if (health.body.ok !== true || typeof round.body.hash !== 'string') lastRounds = { unhealthy: '/v1/health does not report ok', at };
    else lastRounds = { health: health.body, round: round.body, at };
  } catch (e) {
    lastRounds = { error: String(e?.message ?? e), at };
  }
  renderRounds();
}

/** The server's state last said to screen readers ('unreachable', or 'online' again after it): once per change. */
let saidServer = null;
function renderRounds() {
  const r = lastRounds;
  const local = state.stats?.model.version;
  $('f-local').textContent = local === undefined ? '…' : `version ${local}${local === 0 ? ' (the initial model)' : ''}`;
  if (!r) return;
  if (r.error && saidServer !== 'unreachable') {
    saidServer = 'unreachable';
    announce('The aggregation server cannot be reached: syncing is not possible for now. Browsing and your recommendations keep working on this device.');
  } else if (!r.error && saidServer === 'unreachable') {
    saidServer = 'online';
    announce('The aggregation server can be reached again.');
  }
  if (r.error) {
    $('f-health').innerHTML = '<span class="dot off"></span>unreachable';
    $('f-pending').textContent = `Could not reach the aggregation server (${r.error}).`;
    return;
  }
  if (r.unhealthy) {
    $('f-health').innerHTML = '<span class="dot off"></span>unhealthy';
    $('f-pending').textContent = `The aggregation server answers, but not normally (${r.unhealthy}); checking again every few seconds.`;
    return;
  }
  $('f-health').innerHTML = '<span class="dot on"></span>online';
  const { version, pending, minClients, publishedAt, hash } = r.round;
  $('f-version').innerHTML = `version ${esc(version)} <span class="fine">· ${esc(hash.slice(0, 8))} · ${esc(new Date(publishedAt).toLocaleString())}</span>`;
  const roundPct = Math.min(100, (pending / minClients) * 100);
  $('f-bar').style.width = `${roundPct}%`;
  $('f-meter').setAttribute('aria-valuenow', String(Math.round(roundPct)));
  $('f-pending').textContent = `${pending} of ${minClients} updates needed for the next round (each one clipped and noised on its device).`;
}

// ---------------------------------------------------------------- product page

function openProduct(id, via, from) {
  const item = state.byId.get(id);
  if (!item) return;
  const dlg = $('product-modal');
  // The card it was opened from (not a similar item inside the dialog): focus goes back there.
  if (!dlg.open) {
    const list = from?.closest('ol, ul');
    state.opener = from ? { el: from, ...(list ? focusedCard(list, from) : {}) } : null;
  }
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
  $('p-note').textContent = '';
  $('p-add').setAttribute('aria-label', `Add ${item.title} to cart`);
  $('p-rating').innerHTML =
    '<span class="fine">Rate it:</span>' +
    [1, 2, 3, 4, 5].map((v) => `<button type="button" class="star${v <= (state.ratings.get(id) ?? 0) ? ' on' : ''}" data-value="${v}" aria-label="${v} star${v > 1 ? 's' : ''}" aria-pressed="${v === state.ratings.get(id)}">★</button>`).join('');
  $('similar').replaceChildren();
  $('p-offer').replaceChildren();
  if (!dlg.open) dlg.showModal();
  dlg.scrollTop = 0;
  const gen = state.generation;
  // The recommender may not exist yet (still starting) or no more (being erased): the dialog shows
  // the product, without similar items or an offer.
  const rec = state.rec;
  if (!rec) return;
  rec
    .similar(id, { k: 6 })
    .then((alike) => {
      if (gen !== state.generation || state.open !== id) return;
      $('similar').replaceChildren(...alike.map((r) => card(state.byId.get(r.itemId), { reason: r.reason, compact: true })));
    })
    .catch(fail);
  if (state.signedOffers) {
    rec
      .offers({ k: 1, seed: state.offerSeed, context: offerContext({ page: 'product', itemId: id }) })
      .then((offers) => {
        if (gen !== state.generation || state.open !== id) return;
        const ol = document.createElement('ol');
        ol.className = 'offer-row single';
        ol.append(...offers.map(offerCard));
        $('p-offer').replaceChildren(...(offers.length ? [ol] : []));
        impress(offers);
      })
      .catch((e) => {
        console.warn('offers:', e);
        if (gen !== state.generation || state.open !== id) return;
        const p = document.createElement('p');
        p.className = 'fine offer-note';
        p.dataset.kind = 'error';
        p.textContent = `Offers could not be chosen for this product right now (${e?.message ?? e}).`;
        $('p-offer').replaceChildren(p);
      });
  }
}

// ---------------------------------------------------------------- cart

const itemsText = (n) => `${n} item${n === 1 ? '' : 's'}`;
const cartSize = () => [...state.cart.values()].reduce((a, q) => a + q, 0);

function addToCart(id, quantity = 1) {
  state.cart.set(id, (state.cart.get(id) ?? 0) + quantity);
  track({ type: 'add_to_cart', itemId: id, quantity });
  renderCart();
  const b = $('open-cart');
  b.classList.remove('bump');
  void b.offsetWidth; // restart the animation
  b.classList.add('bump');
  // Said (in the product dialog, shown there too; in the cart; or on the page) as well as shown by the badge.
  const title = state.byId.get(id)?.title ?? id;
  const q = state.cart.get(id);
  announce(`Added ${title} to your cart${q > 1 ? ` (${q} of them now)` : ''}. Cart: ${itemsText(cartSize())}.`);
}

function removeFromCart(id, quantity) {
  const have = state.cart.get(id) ?? 0;
  const q = Math.min(have, quantity ?? have);
  if (q <= 0) return;
  if (have - q > 0) state.cart.set(id, have - q);
  else state.cart.delete(id);
  track({ type: 'remove_from_cart', itemId: id, quantity: q });
  renderCart();
  const title = state.byId.get(id)?.title ?? id;
  announce(`${have - q > 0 ? `${title}: ${have - q} in your cart` : `Removed ${title} from your cart`}. Cart: ${itemsText(cartSize())}.`);
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
    li.dataset.itemId = id;
    const minus = Object.assign(document.createElement('button'), { type: 'button', className: 'btn ghost small less', textContent: '−', ariaLabel: `One less ${it.title}` });
    minus.addEventListener('click', () => removeFromCart(id, 1));
    const plus = Object.assign(document.createElement('button'), { type: 'button', className: 'btn ghost small more', textContent: '+', ariaLabel: `One more ${it.title}` });
    plus.addEventListener('click', () => addToCart(id, 1));
    const count = document.createElement('span');
    count.className = 'qty-count';
    count.innerHTML = `<span class="visually-hidden">Quantity: </span>${q}`;
    qty.append(minus, count, plus);
    li.append(qty);
    return li;
  });
  // Focus on a line's button stays there (the lines are rebuilt), or on the next line when that one went.
  const list = $('cart-lines');
  const from = document.activeElement?.closest?.('.cart-line');
  const at = from && list.contains(from) ? { id: from.dataset.itemId, index: [...list.children].indexOf(from), less: document.activeElement.classList.contains('less') } : null;
  list.replaceChildren(...(lines.length ? lines : [Object.assign(document.createElement('li'), { className: 'fine', textContent: 'Your cart is empty.' })]));
  if (at) {
    const same = lines.find((li) => li.dataset.itemId === at.id);
    const target = same ? same.querySelector(at.less ? '.less' : '.more') : lines[Math.min(at.index, lines.length - 1)]?.querySelector('.less');
    (target ?? $('cart-drawer').querySelector('.modal-close button')).focus();
  }
  const o = state.appliedOffer;
  const effect = o ? offerEffect(o) : null;
  $('cart-total').textContent = n ? (effect && !effect.why ? `Total ${money.format(total - effect.amount)} (${money.format(total)} − ${money.format(effect.amount)} offer)` : `Total ${money.format(total)}`) : '';
  $('cart-offer').hidden = !o;
  if (o) {
    $('cart-offer').textContent = effect.why
      ? `Offer: ${o.title} (${discountText(o.discount)}) does not apply yet: ${effect.why}.`
      : `Offer applied: ${o.title} (${discountText(o.discount)}): −${money.format(effect.amount)}. The shop checks it at checkout.`;
  }
  $('checkout').disabled = n === 0;
  $('cart-count').textContent = String(n);
  // The button's name has the count that its badge shows.
  $('open-cart').setAttribute('aria-label', `Cart, ${itemsText(n)}`);
}

function checkout() {
  // The offer on the cart is redeemed with the order, when it applies to it (its scope, its minimum
  // basket); one that does not is simply not used.
  const o = state.appliedOffer;
  const effect = o ? offerEffect(o) : null;
  for (const [id, q] of state.cart) track({ type: 'purchase', itemId: id, quantity: q, price: state.byId.get(id).price });
  if (o && effect.why === null) track({ type: 'offer_redeemed', offerId: o.offerId });
  state.cart.clear();
  state.appliedOffer = null;
  renderCart();
  markApplied();
  $('cart-drawer').close();
  setStatus(
    `Thank you! The purchase is recorded on this device only.${
      !o ? '' : effect.why === null ? ` Offer “${o.title}” used: −${money.format(effect.amount)}.` : ` Offer “${o.title}” was not used: ${effect.why}.`
    }`,
    'ok',
  );
}

// ---------------------------------------------------------------- erase

/**
 * "Erase everything" asks first: the first press arms it (and says so), the second erases. It stays
 * armed, without a time limit, until the shopper presses it again, presses Escape or moves focus away.
 */
let eraseArmed = false;
let erasing = false;
function disarmErase(say) {
  if (!eraseArmed) return;
  eraseArmed = false;
  $('erase').textContent = 'Erase everything';
  $('erase').classList.remove('armed');
  if (say) setStatus('Not erased: nothing was deleted.');
  else if ($('status').dataset.kind === 'warn' && state.stats) {
    // The question on the status line goes with it.
    statusAt = 0;
    restingStatus(state.stats);
  }
}

async function erase() {
  const b = $('erase');
  if (erasing) return;
  if (!eraseArmed) {
    eraseArmed = true;
    b.textContent = 'Really erase? Click again';
    b.classList.add('armed');
    setStatus('Erase everything? This deletes every event, the personal model, the record of what was sent and your consent answer from this device. Press “Erase everything” again to erase, or Escape to keep them.', 'warn');
    return;
  }
  eraseArmed = false;
  // aria-disabled, not disabled: a disabled button drops keyboard focus to <body>.
  erasing = true;
  b.setAttribute('aria-disabled', 'true');
  b.textContent = 'Erasing…';
  const rec = state.rec;
  state.rec = null;
  window.rec = null;
  state.generation++;
  let erased = false;
  try {
    await state.training?.catch(() => undefined);
    await rec.erase();
    erased = true;
    // Everything is gone, the answer to the consent banner too: the fresh recommender starts
    // without consent and the banner asks again (even under ?consent=granted), so that nothing is
    // stored, trained or shared before the shopper answers.
    rememberConsent(null);
    state.erased = true;
    // The audit starts afresh: the privacy panel says that the record went with the data.
    state.forgotten = { t: Date.now(), why: 'erased' };
    // What was done while erasing belongs to the erased session (the cart below goes too).
    pendingEvents.length = 0;
    state.cart.clear();
    state.ratings.clear();
    state.impressed.clear();
    state.appliedOffer = null;
    state.browsingTrained = state.browsingTracked;
    forgetModelPanel();
    renderCart();
    await startRecommender();
    // (The fresh recommender has no consent: nothing it is shown or told is stored until the banner
    // is answered, the offers on screen included.)
    setStatus('Erased: every event, the personal model and your consent answer are gone from this device. Nothing is stored or shared again until you answer the banner.', 'ok');
    await refresh();
    // A personal grid order came from the erased history: rank again with the fresh recommender.
    if (state.order === 'you') renderGrid();
  } catch (e) {
    console.error(e);
    const why = `${e?.name ?? 'Error'}: ${e?.message ?? e}`;
    // Without a recommender the page would do nothing more: start one again (over what is left, when
    // the erase itself failed), or say that only a reload helps.
    let restarted = !!state.rec;
    if (!restarted) {
      try {
        await startRecommender();
        restarted = true;
        await refresh();
        if (state.order === 'you') renderGrid();
      } catch (e2) {
        console.error(e2);
      }
    }
    setStatus(
      erased
        ? `Erased, but starting again failed (${why}).${restarted ? '' : ' Reload the page.'}`
        : `Could not erase (${why}): your data may still be on this device. ${restarted ? 'Press “Erase everything” again, or reload the page and try again.' : 'Reload the page and try again.'}`,
      'error',
    );
  } finally {
    erasing = false;
    b.removeAttribute('aria-disabled');
    b.textContent = 'Erase everything';
    b.classList.remove('armed');
    // Focus stays on the button (unless the shopper moved on); after an erase the banner asks again,
    // and gets it (given back here after the answer).
    const here = document.activeElement === b || document.activeElement === document.body;
    if (!$('consent-banner').hidden && here) openConsent(b);
    else if (here) b.focus();
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
    openProduct(id, inGrid && state.query ? 'search' : 'browse', hit);
  });
  let searchTimer;
  const search = $('search');
  const commitSearch = () => {
    clearTimeout(searchTimer);
    const q = searchQuery();
    if (q && q !== state.lastTrackedQuery) {
      state.lastTrackedQuery = q;
      track({ type: 'search', query: q });
    }
  };
  // (The field takes 512 characters, what a search event holds; the slice covers a value set by script.)
  const searchQuery = () => search.value.trim().slice(0, 512);
  search.addEventListener('input', () => {
    state.query = searchQuery();
    renderGrid({ typing: true });
    clearTimeout(searchTimer);
    searchTimer = setTimeout(commitSearch, 800);
  });
  $('search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    commitSearch();
    $('catalog-title').scrollIntoView({ behavior: scrollBehavior() });
  });
  $('category').addEventListener('change', (e) => setCategory(e.target.value));
  $('order').addEventListener('change', (e) => {
    state.order = e.target.value;
    renderGrid();
  });
  $('p-add').addEventListener('click', () => state.open && addToCart(state.open));
  $('p-buy').addEventListener('click', () => {
    const id = state.open;
    if (!id) return;
    $('product-modal').close();
    $('cart-drawer').showModal();
    // (Added with the cart open: its live region says so.)
    addToCart(id);
  });
  $('p-rating').addEventListener('click', (e) => {
    const star = e.target.closest('.star');
    if (!star || !state.open) return;
    const value = Number(star.dataset.value);
    track({ type: 'rating', itemId: state.open, value });
    if (!declined()) state.ratings.set(state.open, value);
    for (const s of $('p-rating').querySelectorAll('.star')) {
      s.classList.toggle('on', Number(s.dataset.value) <= value);
      s.setAttribute('aria-pressed', String(Number(s.dataset.value) === value));
    }
  });
  $('product-modal').addEventListener('close', () => {
    state.open = null;
    const back = state.opener;
    state.opener = null;
    // "Buy now" opened the cart: focus goes back to the card when the cart closes.
    if ($('cart-drawer').open) state.cartReturn = back;
    else returnFocus(back);
  });
  $('cart-drawer').addEventListener('close', () => {
    const back = state.cartReturn;
    state.cartReturn = null;
    if (document.activeElement && document.activeElement !== document.body) return; // the browser gave it back
    if (!returnFocus(back)) $('open-cart').focus();
  });
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
    followPausedUntil = Date.now() + 1500;
    p.scrollIntoView({ behavior: scrollBehavior(), block: 'start' });
    p.focus({ preventScroll: true });
    p.classList.remove('flash');
    void p.offsetWidth;
    p.classList.add('flash');
  });
  $('erase').addEventListener('click', () => void erase());
  $('erase').addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && eraseArmed) {
      e.preventDefault();
      disarmErase(true);
    }
  });
  $('erase').addEventListener('blur', () => disarmErase(false));
  $('export').addEventListener('click', () => void exportData().catch(fail));
  $('show-consent').addEventListener('click', (e) => openConsent(e.currentTarget));
  $('consent-accept').addEventListener('click', () => void chooseConsent(true, true));
  $('consent-local').addEventListener('click', () => void chooseConsent(true, false));
  $('consent-decline').addEventListener('click', () => void chooseConsent(false, false));
  $('sync-now').addEventListener('click', (e) => {
    if (!isBusy(e.currentTarget)) void sync('button');
  });
  $('auto-sync-text').textContent = `sync once, after ${AUTO_SYNC_MIN_EVENTS} browsing events`;
  $('auto-sync').addEventListener('change', (e) => {
    state.autoSyncWanted = e.target.checked;
    if (state.autoSyncWanted) void autoSync().catch(fail);
  });
  $('simulate').addEventListener('click', (e) => {
    if (!isBusy(e.currentTarget)) void startSimulation();
  });
  $('simulate').textContent = `Simulate ${SHOPPERS} shopper${SHOPPERS === 1 ? '' : 's'}`;
  $('simulate-cancel').addEventListener('click', () => void fetch('/demo/simulate/cancel', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' }).then(pollSimulation));
  $('train-now').addEventListener('click', () => {
    if (!state.rec || state.training) return;
    train({ announce: true })
      .then(() => refresh())
      .catch(fail);
  });
  // Keep "last training … s ago" honest.
  setInterval(() => state.stats && !state.training && ($('m-trained').textContent = ago(state.stats.model.trainedAt)), 5000);
}

/**
 * On a wide screen the side panels are a sticky column with a scroll of its own: scrolling the page
 * scrolls it too, so that its end ("Sync now", "Simulate") comes into view for a shopper who scrolls
 * the page, not only for one who finds the column's scrollbar. (Not while a scroll of the page's
 * own, the Privacy button's, moves the column to a panel.) And the top bar's height is the page's
 * scroll padding (style.css): what gets focus or is scrolled to is not hidden under the bar.
 */
let followPausedUntil = 0;
function followScroll() {
  const aside = $('panels');
  const wide = matchMedia('(min-width: 981px)');
  let last = window.scrollY;
  addEventListener(
    'scroll',
    () => {
      const dy = window.scrollY - last;
      last = window.scrollY;
      if (wide.matches && Date.now() > followPausedUntil) aside.scrollTop += dy;
    },
    { passive: true },
  );
  const bar = document.querySelector('.topbar');
  new ResizeObserver(() => document.documentElement.style.setProperty('--topbar-h', `${bar.offsetHeight}px`)).observe(bar);
}

/**
 * Gives focus back to where a dialog was opened from: the card itself, or (the shelves and the
 * personal grid rebuild their cards) the same product's card in the same list, or the card now in its
 * place. False when there is none.
 */
function returnFocus(back) {
  if (!back) return false;
  if (back.el?.isConnected && back.el.offsetParent !== null) {
    back.el.focus();
    return true;
  }
  return !!back.list?.isConnected && focusCard(back.list, back);
}

/** The shop's signed offer catalog, from the shop's server (the key that verifies it is in the page's code: offer-key.js). */
async function loadOffers() {
  try {
    const r = await fetch('offers.json');
    if (!r.ok) throw new Error(`offers.json: HTTP ${r.status}`);
    state.offerKey = offerPublicKey;
    state.signedOffers = await r.json();
  } catch (e) {
    console.warn('no offers:', e);
    // Said on the shelf (renderOffers), instead of a shelf that silently is not there.
    state.offersError = `The shop’s offers could not be loaded (${e?.message ?? e}), so none are shown on this visit.`;
  }
}

async function main() {
  const withdrawnAt = rememberedWithdrawal();
  if (withdrawnAt !== null) state.forgotten = { t: withdrawnAt, why: 'withdrawn' };
  wire();
  followScroll();
  const res = await fetch('catalog.json');
  if (!res.ok) throw new Error(`catalog.json: HTTP ${res.status}`);
  const catalog = await res.json();
  state.items = catalog.items;
  state.byId = new Map(state.items.map((i) => [i.id, i]));
  renderCategories();
  renderGrid();
  renderCart();
  renderBestsellers();
  void pollRounds();
  setInterval(() => void pollRounds(), POLL_MS);
  await Promise.all([loadServerConfig(), loadOffers()]);
  void pollSimulation();
  await startRecommender();
  await refresh();
  // A reload may bring the Order select back as the shopper left it: rank once the recommender is up.
  if ($('order').value !== state.order) {
    state.order = $('order').value;
    renderGrid();
  }
  document.body.dataset.state = 'ready';
}

main().catch((e) => {
  fail(e);
  document.body.dataset.state = 'failed';
});
