/**
 * Stateful, model-based property test of the public Engine API (the in-process engine of
 * `localrec/node`, on fake-indexeddb, with an in-process aggregation server).
 *
 * fast-check generates sequences of operations — events valid and invalid, recommend, similar,
 * train, setOffers/offers, consent changes and withdrawal, erase, close, reopen on the same dbName,
 * sync (contributing and receiving), wrong calls, and pairs of operations started together without
 * awaiting the first — runs them against a fresh engine, and after every step compares what the
 * public API reports (stats(), audit(), indexedDB.databases()) with a small model:
 *
 *  - every accepted event is stored (by type) until an erase or a withdrawal of personalization,
 *    also across close() and a new Engine on the same dbName; nothing is stored after either;
 *  - invalid input is refused with a typed error naming the field, and changes nothing else;
 *  - the ε spent never exceeds the budget, this database's releases equal the model's and the
 *    uploads the server received, and never go down but by erase / withdrawal;
 *  - recommend()/similar() return catalog items only, each once, at most k, honouring category,
 *    candidates and exclude; offers() returns offers of the installed catalog only, each once;
 *  - consent in force is what the model says, across reopen (a federated withdrawal is remembered,
 *    a personalization withdrawal starts from the default again);
 *  - after erase() the database is gone, and every later call on that instance is a ClosedError;
 *  - no unhandled promise rejection, and no call takes longer than OP_TIMEOUT_MS (a hang).
 *
 * Two operations started together may come out in either order; one of them may also be cut short
 * by the other (an AbortError/ClosedError of a train/sync/track against an erase, close or
 * withdrawal): the check accepts any of those outcomes, and nothing else.
 *
 * Env: STATEFUL_RUNS (default 60), STATEFUL_SEED, STATEFUL_MAX_OPS (default 20),
 * STATEFUL_IGNORE (comma-separated violation codes logged instead of failing, to look past one),
 * STATEFUL_VERBOSE=1 (print every sequence), STATEFUL_NO_SHRINK=1, STATEFUL_OP_TIMEOUT_MS.
 *
 * Every violation starts with a code: [events] [consent] [releases] [uploads] [budget]
 * [epsilon-down] [egress] [offers-stored] [dropped] [audit-vs-stats] [erase-db] [outcome]
 * [invalid-input] [<op>] [hang] [unhandled] [tensors], and two about error types:
 * [untyped-error] (a rejection that is not a localrec error, e.g. IndexedDB's InvalidStateError)
 * and [closed-as-storage-error] (a StorageError "… is closed" for a call the engine's own close()
 * or erase() cut short). Both were found when this file was written (stop 36), in about 1
 * sequence of 100 (of up to 30 operations): a recommend()/stats()/offers() call in flight when
 * erase() or close() is called on the in-process Engine; since then such a call rejects with a
 * ClosedError (`Engine.unlessClosing`).
 *
 * Under CI the seed is fixed (36) unless STATEFUL_SEED is given, so that a run can be repeated;
 * elsewhere each run draws new sequences (fast-check prints the seed of a failure).
 */
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { Engine } from '../../src/engine/engine.js';
import { isClosedError } from '../../src/errors.js';
import { startServer, type RunningServer } from '../../src/server/index.js';
import { createItemTable } from '../../src/model/item-table.js';
import { generateOfferKeys, signOfferCatalog, type OfferKeyPair } from '../../src/offers/signing.js';
import type { OfferCatalog, SignedOfferCatalog } from '../../src/offers/types.js';
import { offer } from './engine-helpers.js';
import type { FetchLike } from '../../src/federated/sync.js';
import * as tf from '../../src/model/tf.js';
import { CATEGORY, checkRecs, hangGuard, IDS, ITEMS, surelySeen } from '../stateful-helpers.js';

const RUNS = Number(process.env.STATEFUL_RUNS ?? 60);
const MAX_OPS = Number(process.env.STATEFUL_MAX_OPS ?? 20);
const SEED = process.env.STATEFUL_SEED !== undefined ? Number(process.env.STATEFUL_SEED) : process.env.CI ? 36 : undefined;
const IGNORE = new Set((process.env.STATEFUL_IGNORE ?? '').split(',').filter(Boolean));
const OP_TIMEOUT_MS = Number(process.env.STATEFUL_OP_TIMEOUT_MS ?? 20_000);
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

// ---------------------------------------------------------------------------------------------
// Fixtures: a tiny catalog (two categories, prices for offers), a server (dim 8, σ = 1, rounds of
// 100 so nothing is published), two signed offer catalogs (v1, v2).

const BUDGET = 8; // σ = 1: one sync ε 4.38, two 6.57, a third would be 8.39
const MAX_RELEASES = 2;
const LONG_ID = 'L'.repeat(256); // the longest id allowed

const OFFER_CATALOGS: Record<'A' | 'B', OfferCatalog> = {
  A: { version: 1, issuedAt: 1_000, currency: 'GBP', offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }), offer('bags', { kind: 'categories', categories: ['bag'] })] },
  B: { version: 2, issuedAt: 2_000, currency: 'GBP', offers: [offer('p0only', { kind: 'items', itemIds: ['p0'] }), offer('mugs', { kind: 'categories', categories: ['mug'] })] },
};
const OFFER_IDS = { A: new Set(['mugs', 'bags']), B: new Set(['p0only', 'mugs']) };
const VERSION = { A: 1, B: 2 } as const;

let keys: OfferKeyPair;
let signed: Record<'A' | 'B' | 'tampered', SignedOfferCatalog>;
let server: RunningServer;
let seq = 0;

// ---------------------------------------------------------------------------------------------
// Operations, as plain data (fast-check prints and shrinks them).

type ValidSpec = { type: 'view' | 'add_to_cart' | 'remove_from_cart' | 'purchase' | 'rating' | 'search' | 'offer_impression' | 'offer_redeemed'; item?: string; query?: string; quantity?: number; price?: number; value?: number; offerId?: string; ago?: number };
const BAD = {
  type: 'event.type',
  noItem: 'event.itemId',
  longItem: 'event.itemId',
  emptyItem: 'event.itemId',
  numItem: 'event.itemId',
  longQuery: 'event.query',
  hugeQuery: 'event.query',
  blankQuery: 'event.query',
  negQty: 'event.quantity',
  fracQty: 'event.quantity',
  rating7: 'event.value',
  typoField: 'event.itemID',
  null: 'event',
  array: 'event',
  future: 'event.t',
  tooOld: 'event.t',
  tSeconds: 'event.t',
  nanPrice: 'event.price',
  emptyOffer: 'event.offerId',
} as const;
type BadKind = keyof typeof BAD;
type Spec = { v: ValidSpec } | { bad: BadKind };

type Op =
  | { op: 'track'; events: Spec[] }
  | { op: 'trackMany'; n: number }
  | { op: 'flush' }
  | { op: 'recommend'; k?: number; exclude?: 'seen' | 'purchased' | 'none' | string[]; category?: string; candidates?: string[] }
  | { op: 'similar'; item: string; k?: number }
  | { op: 'train'; epochs: number }
  | { op: 'setOffers'; which: 'A' | 'B' | 'tampered' | 'garbage' }
  | { op: 'offers'; k: number }
  | { op: 'consent'; personalization?: boolean; federated?: boolean }
  | { op: 'sync'; contribute: boolean }
  | { op: 'erase' }
  | { op: 'close' }
  | { op: 'reopen' }
  /** A new instance created while the old one closes (a page's remount): not awaited in between. */
  | { op: 'reopenOverlap' }
  | { op: 'bad'; which: BadCall }
  | { op: 'par'; a: Op; b: Op; gap: number };

const BAD_CALLS = {
  enqueueNotArray: { kind: 'ValidationError', field: 'events' },
  recommendK0: { kind: 'ValidationError', field: 'options.k' },
  recommendK1001: { kind: 'ValidationError', field: 'options.k' },
  recommendTypo: { kind: 'ValidationError', field: 'options.kk' },
  recommendExclude: { kind: 'ValidationError', field: 'options.exclude' },
  recommendCandidates: { kind: 'ValidationError', field: 'options.candidates' },
  trainEpochs0: { kind: 'ValidationError', field: 'options.epochs' },
  trainTypo: { kind: 'ValidationError', field: 'options.epoch' },
  consentString: { kind: 'ValidationError', field: 'consent.personalization' },
  consentTypo: { kind: 'ValidationError', field: 'consent.perso' },
  syncContribute: { kind: 'ValidationError', field: 'options.contribute' },
  syncTypo: { kind: 'ValidationError', field: 'options.contributes' },
  offersK0: { kind: 'ValidationError', field: 'options.k' },
  similarUnknown: { kind: 'ValidationError', field: 'itemId' },
  similarK0: { kind: 'ValidationError', field: 'options.k' },
} as const;
type BadCall = keyof typeof BAD_CALLS;

const itemArb = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...IDS) }, { weight: 1, arbitrary: fc.constantFrom('ghost-1', 'ghost-2', LONG_ID) });
const validArb: fc.Arbitrary<ValidSpec> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ type: fc.constant('view' as const), item: itemArb }) },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('purchase' as const), item: itemArb, quantity: fc.integer({ min: 1, max: 5 }), price: fc.constantFrom(0, 4.5, 12) }) },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('add_to_cart' as const), item: itemArb }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('remove_from_cart' as const), item: itemArb }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('rating' as const), item: itemArb, value: fc.constantFrom(0, 2.5, 5) }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('search' as const), query: fc.constantFrom('mug', '  red mug  ', 'é✓ 漢字', 'x'.repeat(512)) }, { requiredKeys: ['type', 'query'] }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('search' as const), query: fc.constant('bag'), item: itemArb }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constantFrom('offer_impression' as const, 'offer_redeemed' as const), offerId: fc.constantFrom('mugs', 'bags', 'nope') }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('view' as const), item: itemArb, ago: fc.constantFrom(HOUR, 30 * DAY, -HOUR) }) },
);
const specArb: fc.Arbitrary<Spec> = fc.oneof({ weight: 4, arbitrary: validArb.map((v) => ({ v })) }, { weight: 1, arbitrary: fc.constantFrom(...(Object.keys(BAD) as BadKind[])).map((bad) => ({ bad })) });

const recommendArb: fc.Arbitrary<Op> = fc.record(
  {
    op: fc.constant('recommend' as const),
    k: fc.integer({ min: 1, max: 15 }),
    exclude: fc.oneof(fc.constantFrom('seen' as const, 'purchased' as const, 'none' as const), fc.array(itemArb, { maxLength: 3 })),
    category: fc.constantFrom('mug', 'bag', 'lamp'),
    candidates: fc.array(fc.oneof(itemArb, fc.constant('p3')), { maxLength: 6 }),
  },
  { requiredKeys: ['op'] },
);
const consentArb: fc.Arbitrary<Op> = fc.record({ op: fc.constant('consent' as const), personalization: fc.boolean(), federated: fc.boolean() }, { requiredKeys: ['op'] });

/** Operations that may be started together (no reopen: it is close + create). */
const parMemberArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ op: fc.constant('track' as const), events: fc.array(validArb.map((v) => ({ v }) as Spec), { minLength: 1, maxLength: 4 }) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'flush' as const }) },
  { weight: 2, arbitrary: recommendArb },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('train' as const), epochs: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('sync' as const), contribute: fc.boolean() }) },
  { weight: 2, arbitrary: consentArb },
  { weight: 2, arbitrary: fc.constant({ op: 'erase' as const }) },
  { weight: 1, arbitrary: fc.constant({ op: 'close' as const }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setOffers' as const), which: fc.constantFrom('A' as const, 'B' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('offers' as const), k: fc.integer({ min: 1, max: 3 }) }) },
);

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ op: fc.constant('track' as const), events: fc.array(specArb, { minLength: 1, maxLength: 5 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('trackMany' as const), n: fc.constantFrom(150, 450) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'flush' as const }) },
  { weight: 3, arbitrary: recommendArb },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('similar' as const), item: fc.constantFrom(...IDS), k: fc.integer({ min: 1, max: 12 }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('train' as const), epochs: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('setOffers' as const), which: fc.constantFrom('A' as const, 'B' as const, 'tampered' as const, 'garbage' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('offers' as const), k: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 3, arbitrary: consentArb },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('sync' as const), contribute: fc.boolean() }) },
  { weight: 1, arbitrary: fc.constant({ op: 'erase' as const }) },
  { weight: 1, arbitrary: fc.constant({ op: 'close' as const }) },
  { weight: 4, arbitrary: fc.constant({ op: 'reopen' as const }) },
  { weight: 1, arbitrary: fc.constant({ op: 'reopenOverlap' as const }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('bad' as const), which: fc.constantFrom(...(Object.keys(BAD_CALLS) as BadCall[])) }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('par' as const), a: parMemberArb, b: parMemberArb, gap: fc.constantFrom(0, 0, 1, 5, 25) }) },
);

// ---------------------------------------------------------------------------------------------
// The model.

type Life = 'open' | 'closed' | 'erased';
interface StoredEv {
  type: ValidSpec['type'];
  item?: string;
}
interface Model {
  life: Life;
  p: boolean;
  f: boolean;
  events: StoredEv[];
  /** This database's releases (syncs that spent ε). */
  releases: number;
  /** Every release over the sequence (erase / withdrawal included): the uploads the server must have had. */
  uploads: number;
  offersMem: 'A' | 'B' | null;
  offersStored: 'A' | 'B' | null;
  /** stats().dropped of this session. */
  dropped: number;
}
const fresh = (): Model => ({ life: 'open', p: true, f: true, events: [], releases: 0, uploads: 0, offersMem: null, offersStored: null, dropped: 0 });

type Outcome = { ok: true; value: unknown } | { ok: false; err: unknown };
/** What the model expects of one operation, given its actual outcome: the next model, or why the outcome is wrong. */
type Step = { next: Model } | { problem: string };

const errName = (e: unknown): string => (typeof e === 'object' && e !== null && typeof (e as { name?: unknown }).name === 'string' ? (e as { name: string }).name : typeof e);
const show = (o: Outcome): string => (o.ok ? `ok ${JSON.stringify(o.value)?.slice(0, 200)}` : `${errName(o.err)}: ${String((o.err as Error)?.message ?? o.err).slice(0, 300)}`);
const isErr = (o: Outcome, name: string, field?: string): boolean =>
  !o.ok && errName(o.err) === name && (field === undefined || ((o.err as { field?: string }).field === field && String((o.err as Error).message).startsWith(`${field}:`)));

const anyCatalogItems = (events: StoredEv[]) => new Set(events.filter((e) => e.item && CATEGORY.has(e.item)).map((e) => e.item!));

function specToEvent(s: Spec, now: number): unknown {
  if ('v' in s) {
    const v = s.v;
    const e: Record<string, unknown> = { type: v.type };
    if (v.item !== undefined) e.itemId = v.item;
    if (v.query !== undefined) e.query = v.query;
    if (v.quantity !== undefined) e.quantity = v.quantity;
    if (v.price !== undefined) e.price = v.price;
    if (v.value !== undefined) e.value = v.value;
    if (v.offerId !== undefined) e.offerId = v.offerId;
    if (v.ago !== undefined) e.t = now - v.ago;
    return e;
  }
  switch (s.bad) {
    case 'type': return { type: 'VIEW', itemId: 'p1' };
    case 'noItem': return { type: 'view' };
    case 'longItem': return { type: 'view', itemId: 'x'.repeat(100_000) };
    case 'emptyItem': return { type: 'purchase', itemId: '' };
    case 'numItem': return { type: 'view', itemId: 7 };
    case 'longQuery': return { type: 'search', query: 'q'.repeat(513) };
    case 'hugeQuery': return { type: 'search', query: 'q'.repeat(2_000_000) };
    case 'blankQuery': return { type: 'search', query: '   \n ' };
    case 'negQty': return { type: 'purchase', itemId: 'p2', quantity: -2 };
    case 'fracQty': return { type: 'add_to_cart', itemId: 'p2', quantity: 1.5 };
    case 'rating7': return { type: 'rating', itemId: 'p2', value: 7 };
    case 'typoField': return { type: 'view', itemID: 'p1' };
    case 'null': return null;
    case 'array': return ['view', 'p1'];
    case 'future': return { type: 'view', itemId: 'p1', t: now + 2 * DAY };
    case 'tooOld': return { type: 'view', itemId: 'p1', t: now - 400 * DAY };
    case 'tSeconds': return { type: 'view', itemId: 'p1', t: Math.floor(now / 1000) };
    case 'nanPrice': return { type: 'purchase', itemId: 'p1', price: Number.NaN };
    case 'emptyOffer': return { type: 'offer_impression', offerId: '' };
  }
}

const closedOnly = (m: Model, o: Outcome): Step => (isErr(o, 'ClosedError') ? { next: m } : { problem: `expected ClosedError on a ${m.life} engine, got ${show(o)}` });

/** The model's transition for one sequential operation, judged against its actual outcome. */
function step(m: Model, op: Op, o: Outcome): Step {
  const same = (): Step => ({ next: m });
  const bad = (why: string): Step => ({ problem: `${why}; got ${show(o)}` });
  if (op.op === 'reopen' || op.op === 'reopenOverlap') {
    if (!o.ok) return bad('reopen failed');
    const keep = m.life !== 'erased' && m.p;
    return { next: { ...(keep ? m : { ...fresh(), uploads: m.uploads }), life: 'open', offersMem: null, offersStored: keep ? m.offersStored : null, dropped: 0 } };
  }
  if (op.op === 'close') {
    if (!o.ok) return bad('close() rejected');
    return { next: { ...m, life: m.life === 'erased' ? 'erased' : 'closed' } };
  }
  if (op.op === 'erase') {
    if (m.life !== 'open' && !o.ok && isErr(o, 'ClosedError')) return same();
    if (!o.ok) return bad('erase() rejected');
    return { next: { ...fresh(), uploads: m.uploads, life: 'erased' } };
  }
  // flush() has nothing to refuse on a closed engine (nothing is queued): either answer is fine.
  if (m.life !== 'open' && op.op === 'flush') return o.ok || isErr(o, 'ClosedError') ? same() : bad('flush() on a closed engine');
  if (m.life !== 'open') return closedOnly(m, o);
  switch (op.op) {
    case 'track': {
      if (!m.p) {
        if (!o.ok || o.value !== 0) return bad('without consent enqueue() takes nothing and returns 0');
        return { next: { ...m, dropped: m.dropped + op.events.length } };
      }
      const valid = op.events.filter((s): s is { v: ValidSpec } => 'v' in s).map((s) => ({ type: s.v.type, ...(s.v.item !== undefined ? { item: s.v.item } : {}) }));
      const firstBad = op.events.find((s): s is { bad: BadKind } => 'bad' in s);
      const next = { ...m, events: [...m.events, ...valid], dropped: m.dropped + op.events.length - valid.length };
      if (firstBad) return isErr(o, 'ValidationError', BAD[firstBad.bad]) ? { next } : bad(`expected ValidationError naming ${BAD[firstBad.bad]} (${firstBad.bad})`);
      return o.ok && o.value === valid.length ? { next } : bad(`expected ${valid.length} accepted`);
    }
    case 'trackMany': {
      if (!m.p) return o.ok && o.value === 0 ? { next: { ...m, dropped: m.dropped + op.n } } : bad('without consent enqueue() returns 0');
      return o.ok && o.value === op.n ? { next: { ...m, events: [...m.events, ...Array.from({ length: op.n }, (_, i) => ({ type: 'view' as const, item: IDS[i % IDS.length]! }))] } } : bad(`expected ${op.n} accepted`);
    }
    case 'flush':
      return o.ok ? same() : bad('flush() rejected');
    case 'recommend': {
      if (!o.ok) return bad('recommend() rejected');
      const why = checkRecs(m.p ? m.events : [], op, o.value);
      return why ? bad(why) : same();
    }
    case 'similar': {
      if (!o.ok) return bad('similar() rejected');
      const ids = (o.value as { itemId: string }[]).map((r) => r.itemId);
      if (ids.some((id) => !CATEGORY.has(id)) || new Set(ids).size !== ids.length || ids.length > (op.k ?? 10) || ids.includes(op.item)) return bad('similar(): unknown, duplicate, too many or the item itself');
      return same();
    }
    case 'train':
      if (!m.p) return isErr(o, 'ConsentError') ? same() : bad('train() without consent must be a ConsentError');
      return o.ok ? same() : bad('train() rejected');
    case 'setOffers': {
      if (op.which === 'tampered' || op.which === 'garbage') return isErr(o, 'SignatureError') || (op.which === 'garbage' && isErr(o, 'ValidationError')) ? same() : bad('a tampered/garbage catalog must be refused with a SignatureError');
      const v = VERSION[op.which];
      const floor = Math.max(m.offersMem ? VERSION[m.offersMem] : -1, m.p && m.offersStored ? VERSION[m.offersStored] : -1);
      if (v < floor) return isErr(o, 'ValidationError', 'catalog.version') ? same() : bad(`catalog v${v} under the installed v${floor} must be refused (catalog.version)`);
      if (!o.ok) return bad(`setOffers(${op.which}) rejected`);
      return { next: { ...m, offersMem: op.which, offersStored: m.p ? op.which : m.offersStored } };
    }
    case 'offers': {
      if (!o.ok) return bad('offers() rejected');
      const shown = (o.value as { offerId: string }[]).map((x) => x.offerId);
      const cat = m.offersMem ?? (m.p ? m.offersStored : null);
      if (!cat) return shown.length === 0 ? same() : bad('offers without a catalog');
      if (shown.some((id) => !OFFER_IDS[cat].has(id)) || new Set(shown).size !== shown.length || shown.length > op.k) return bad(`offers outside catalog ${cat}, duplicated or > k`);
      return { next: { ...m, offersMem: cat } };
    }
    case 'consent': {
      if (!o.ok) return bad('setConsent() rejected');
      const p = op.personalization ?? m.p;
      const f = op.federated ?? m.f;
      let next: Model = { ...m, p, f };
      if (m.p && !p) next = { ...next, events: [], releases: 0, offersStored: null };
      if (!m.p && p) next = { ...next, events: [], releases: 0, offersStored: m.offersMem };
      return { next };
    }
    case 'sync': {
      if (!(m.p && m.f)) return isErr(o, 'ConsentError') ? same() : bad('sync() without consent must be a ConsentError');
      if (!op.contribute) return o.ok && (o.value as { sent: boolean }).sent === false ? same() : bad('a receiving sync must succeed and send nothing');
      const sure = surelySeen(m.events).size;
      const any = anyCatalogItems(m.events).size;
      if (m.releases >= MAX_RELEASES && any >= 2) return isErr(o, 'PrivacyBudgetError') ? same() : bad(`past the budget (${m.releases} releases) sync() must be a PrivacyBudgetError`);
      if (!o.ok) return isErr(o, 'PrivacyBudgetError') && m.releases >= MAX_RELEASES ? same() : bad('sync() rejected');
      const sent = (o.value as { sent: boolean }).sent;
      if (sent && any < 2) return bad(`sent an update with ${any} distinct catalog item(s)`);
      if (!sent && sure >= 2) return bad(`sent nothing though the history has ${sure} distinct items`);
      return { next: sent ? { ...m, releases: m.releases + 1, uploads: m.uploads + 1 } : m };
    }
    case 'bad': {
      const want = BAD_CALLS[op.which];
      if (!m.p && op.which === 'enqueueNotArray') return isErr(o, want.kind, 'field' in want ? want.field : undefined) ? same() : bad('expected ValidationError');
      return isErr(o, want.kind, 'field' in want ? want.field : undefined) ? same() : bad(`expected ${want.kind}${'field' in want ? ` naming ${want.field}` : ''}`);
    }
    case 'par':
      throw new Error('unreachable');
  }
}

/** Whether `a` may be cut short (AbortError / ClosedError, no effect) by `b`. */
function cutBy(a: Op, b: Op, o: Outcome): boolean {
  const ends = b.op === 'erase' || b.op === 'close' || (b.op === 'consent' && (b.personalization === false || b.federated === false));
  return ends && !o.ok && (isErr(o, 'AbortError') || isErr(o, 'ClosedError') || (b.op === 'consent' && isErr(o, 'ConsentError')));
}

// ---------------------------------------------------------------------------------------------
// The system under test.

interface Sys {
  engine: Engine;
  dbName: string;
  serverUrl: string;
  updates: number;
  opts: Parameters<typeof Engine.create>[0];
}

const within = hangGuard(OP_TIMEOUT_MS);

/** Starts one operation; a synchronous throw becomes a rejection. */
function start(sys: Sys, op: Op): Promise<unknown> {
  try {
    const e = sys.engine;
    const now = Date.now();
    switch (op.op) {
      case 'track':
        return Promise.resolve(e.enqueue(op.events.map((s) => specToEvent(s, now)) as never));
      case 'trackMany':
        return Promise.resolve(e.enqueue(Array.from({ length: op.n }, (_, i) => ({ type: 'view' as const, itemId: IDS[i % IDS.length]! }))));
      case 'flush':
        return e.flush();
      case 'recommend': {
        const { op: _, ...o } = op;
        return e.recommend(o);
      }
      case 'similar':
        return e.similar(op.item, { k: op.k });
      case 'train':
        return e.train({ epochs: op.epochs });
      case 'setOffers':
        return e.setOffers(op.which === 'garbage' ? { hello: 'world' } : signed[op.which]);
      case 'offers':
        return e.offers({ k: op.k, seed: 1 });
      case 'consent': {
        const { op: _, ...c } = op;
        return e.setConsent(c);
      }
      case 'sync':
        return e.sync({ contribute: op.contribute });
      case 'erase':
        return e.erase();
      case 'close':
        return e.close();
      case 'reopenOverlap':
        return (async () => {
          const [, created] = await Promise.all([e.close(), Engine.create(sys.opts)]);
          sys.engine = created;
        })();
      case 'reopen':
        return (async () => {
          await e.close();
          sys.engine = await Engine.create(sys.opts);
        })();
      case 'bad':
        switch (op.which) {
          case 'enqueueNotArray': return Promise.resolve(e.enqueue('view' as never));
          case 'recommendK0': return e.recommend({ k: 0 });
          case 'recommendK1001': return e.recommend({ k: 1001 });
          case 'recommendTypo': return e.recommend({ kk: 1 } as never);
          case 'recommendExclude': return e.recommend({ exclude: 'everything' as never });
          case 'recommendCandidates': return e.recommend({ candidates: 'p1' as never });
          case 'trainEpochs0': return e.train({ epochs: 0 });
          case 'trainTypo': return e.train({ epoch: 2 } as never);
          case 'consentString': return e.setConsent({ personalization: 'yes' as never });
          case 'consentTypo': return e.setConsent({ perso: true } as never);
          case 'syncContribute': return e.sync({ contribute: 'no' as never });
          case 'syncTypo': return e.sync({ contributes: false } as never);
          case 'offersK0': return e.offers({ k: 0 });
          case 'similarUnknown': return e.similar('ghost-1');
          case 'similarK0': return e.similar('p1', { k: 0 });
        }
        break;
      case 'par':
        throw new Error('nested par');
    }
    throw new Error(`unknown op ${JSON.stringify(op)}`);
  } catch (err) {
    return Promise.reject(err);
  }
}

const LOCALREC_ERRORS = new Set(['ValidationError', 'StorageError', 'ModelError', 'ClosedError', 'NetworkError', 'PrivacyBudgetError', 'ConsentError', 'AbortError', 'SignatureError', 'LocalrecError']);
/**
 * A rejection that is not one of localrec's typed errors (a DOMException from IndexedDB, a
 * TypeError) is a finding of its own ([untyped-error]); when that code is ignored, it is read as
 * the ClosedError it stands in for, so that the run can look past it.
 */
function typed(o: Outcome, what: string, fail: (code: string, msg: string) => boolean): Outcome {
  if (o.ok) return o;
  if (errName(o.err) === 'StorageError' && /is closed$/.test(String((o.err as Error).message))) {
    // The store closed under a call by close()/erase(): that is the recommender closing, not storage failing.
    fail('[closed-as-storage-error]', `${what} rejected with ${show(o)}`);
    return { ok: false, err: Object.assign(new Error(String((o.err as Error).message)), { name: 'ClosedError' }) };
  }
  if (LOCALREC_ERRORS.has(errName(o.err))) return o;
  fail('[untyped-error]', `${what} rejected with ${show(o)}\n  at ${String((o.err as Error)?.stack ?? '').split('\n').filter((l) => l.includes('/src/')).slice(0, 4).join(' < ')}`);
  return { ok: false, err: Object.assign(new Error(`(untyped) ${String((o.err as Error)?.message)}`), { name: 'ClosedError' }) };
}

const settle = async (p: Promise<unknown>): Promise<Outcome> => p.then((value) => ({ ok: true as const, value }), (err: unknown) => ({ ok: false as const, err }));

/** What the public API says of the engine now (only on an open engine). */
async function observe(sys: Sys): Promise<{ byType: Record<string, number>; consent: { p: boolean; f: boolean }; releases: number; epsilon: number; budget: number; offersStored: number | null; dropped: number; auditTotal: number; queued: number; egress: number }> {
  const e = sys.engine;
  const s = await within(e.stats(), 'stats()');
  const a = await within(e.audit(), 'audit()');
  const byType: Record<string, number> = {};
  for (const [k, v] of Object.entries(s.events.byType)) if (v) byType[k] = v;
  return {
    byType,
    consent: { p: a.consent.current.personalization, f: a.consent.current.federated },
    releases: s.privacy.thisDatabase.syncs,
    epsilon: s.privacy.epsilon,
    budget: s.privacy.budget,
    offersStored: a.offers?.version ?? null,
    dropped: s.dropped,
    auditTotal: a.events.total,
    queued: s.queued,
    egress: a.egress.log.length,
  };
}
const countByType = (events: StoredEv[]): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const e of events) out[e.type] = (out[e.type] ?? 0) + 1;
  return out;
};
const sameCounts = (a: Record<string, number>, b: Record<string, number>) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());

/** Differences between the model and what the engine reports (empty when they agree). */
async function compare(sys: Sys, m: Model, obs: Awaited<ReturnType<typeof observe>> | null): Promise<string[]> {
  const out: string[] = [];
  if (sys.updates !== m.uploads) out.push(`[uploads] the server got ${sys.updates} update(s), the model counts ${m.uploads} release(s)`);
  const dbs = (await indexedDB.databases()).map((d) => d.name);
  if (m.life === 'erased' && dbs.includes(sys.dbName)) out.push('[erase-db] the database still exists after erase()');
  if (!obs) return out;
  const want = m.p ? countByType(m.events) : {};
  if (!sameCounts(obs.byType, want)) out.push(`[events] stored ${JSON.stringify(obs.byType)}, expected ${JSON.stringify(want)}`);
  if (obs.auditTotal !== Object.values(obs.byType).reduce((x, y) => x + y, 0)) out.push(`[audit-vs-stats] audit() ${obs.auditTotal} events, stats() ${JSON.stringify(obs.byType)}`);
  if (obs.consent.p !== m.p || obs.consent.f !== m.f) out.push(`[consent] in force ${JSON.stringify(obs.consent)}, expected ${JSON.stringify({ p: m.p, f: m.f })}`);
  if (obs.releases !== m.releases) out.push(`[releases] this database's syncs ${obs.releases}, expected ${m.releases}`);
  if (!(obs.epsilon <= obs.budget + 1e-9)) out.push(`[budget] ε ${obs.epsilon} above the budget ${obs.budget}`);
  if (m.p && obs.offersStored !== (m.offersStored ? VERSION[m.offersStored] : null)) out.push(`[offers-stored] stored catalog v${obs.offersStored}, expected ${m.offersStored ? `v${VERSION[m.offersStored]}` : 'none'}`);
  if (obs.dropped !== m.dropped) out.push(`[dropped] stats().dropped ${obs.dropped}, expected ${m.dropped}`);
  return out;
}

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => void unhandled.push(reason);

async function newSystem(auto: number): Promise<Sys> {
  const n = seq++;
  const sys = { dbName: `stateful-${process.pid}-${n}`, serverUrl: `http://s${n}.stateful.test`, updates: 0 } as Sys;
  const real = new URL(server.url);
  const fetch: FetchLike = (url, init) => {
    const u = new URL(url);
    if (init?.method === 'POST' && u.pathname === '/v1/updates') sys.updates++;
    u.protocol = real.protocol;
    u.host = real.host;
    return globalThis.fetch(u, init as RequestInit);
  };
  sys.opts = {
    catalog: { items: ITEMS },
    backend: 'cpu',
    dbName: sys.dbName,
    autoTrainEvery: auto,
    model: { dim: 8 },
    retention: { maxEvents: 100_000 },
    fetch,
    federated: { serverUrl: sys.serverUrl, budget: BUDGET },
    offers: { publicKey: keys.publicJwk },
  };
  sys.engine = await Engine.create(sys.opts);
  return sys;
}

const label = (op: Op): string => JSON.stringify(op, (k, v) => (typeof v === 'string' && v.length > 40 ? `${v.slice(0, 10)}…(${v.length})` : v));

async function runSequence(auto: number, ops: Op[]): Promise<void> {
  const tensorsBefore = tf.memory().numTensors;
  const sys = await newSystem(auto);
  let m = fresh();
  let lastEps = 0;
  let lastEgress = 0;
  const trace: string[] = [];
  const fail = (code: string, msg: string) => {
    const text = `${code} ${msg}\n  trace:\n    ${trace.join('\n    ')}`;
    if (IGNORE.has(code)) {
      console.log(`(ignored) ${text.split('\n')[0]}`);
      return false;
    }
    throw new Error(text);
  };
  try {
    for (const op of ops) {
      let next: Model | undefined;
      if (op.op === 'par') {
        const pa = settle(start(sys, op.a)); // handled at once: a may settle during the gap
        // b starts `gap` ms after a (a not awaited): 0 is the same tick, more lands inside a's run.
        if (op.gap > 0) await new Promise((r) => setTimeout(r, op.gap));
        const pb = settle(start(sys, op.b));
        const [oa0, ob0] = await within(Promise.all([pa, pb]), `together ${label(op.a)} and ${label(op.b)}`);
        trace.push(`par(${label(op.a)} → ${show(oa0)} ‖ ${label(op.b)} → ${show(ob0)})`);
        const oa = typed(oa0, `${label(op.a)} (together with ${label(op.b)})`, fail);
        const ob = typed(ob0, `${label(op.b)} (together with ${label(op.a)})`, fail);
        // Candidates: a then b, b then a, a cut short by b, b cut short by a.
        const cands: { how: string; m: Model }[] = [];
        const problems: string[] = [];
        const chain = (how: string, first: [Op, Outcome] | null, second: [Op, Outcome] | null) => {
          let cur = m;
          for (const s of [first, second]) {
            if (!s) continue;
            const r = step(cur, s[0], s[1]);
            if ('problem' in r) return void problems.push(`${how}: ${label(s[0])}: ${r.problem}`);
            cur = r.next;
          }
          cands.push({ how, m: cur });
        };
        chain('a;b', [op.a, oa], [op.b, ob]);
        chain('b;a', [op.b, ob], [op.a, oa]);
        // A sync cut short after its release was recorded keeps its ε spent, nothing uploaded
        // (docs/PRIVACY.md: an upload cancelled after its ε was recorded is logged notSent).
        const spent = (o: Outcome) => !o.ok && /ε is spent/.test(String((o.err as Error).message));
        if (cutBy(op.a, op.b, oa) && !spent(oa)) chain('a cut by b', null, [op.b, ob]);
        if (cutBy(op.b, op.a, ob) && !spent(ob)) chain('b cut by a', [op.a, oa], null);
        const released = (x: Model): Model => ({ ...x, releases: x.releases + 1 });
        if (op.a.op === 'sync' && cutBy(op.a, op.b, oa) && spent(oa)) {
          const r = step(released(m), op.b, ob);
          if ('next' in r) cands.push({ how: 'a cut by b after its release', m: r.next });
        }
        if (op.b.op === 'sync' && cutBy(op.b, op.a, ob) && spent(ob)) {
          const r = step(released(m), op.a, oa);
          if ('next' in r) cands.push({ how: 'b cut by a after its release', m: r.next });
        }
        // Two contributing syncs together are one sync (the second joins the first).
        if (op.a.op === 'sync' && op.b.op === 'sync' && oa.ok && ob.ok) chain('one joined sync', [op.a, oa], null);
        // Two trains, a train and a sync, etc. do not change the model beyond the above.
        if (!cands.length) {
          fail('[outcome]', `no order explains the outcomes: ${problems.join(' | ')}`);
          return;
        }
        await new Promise((r) => setTimeout(r, 0));
        const obs = m.life === 'open' || cands.some((c) => c.m.life === 'open') ? (sys.engine && cands.some((c) => c.m.life === 'open') ? await observe(sys).catch(() => null) : null) : null;
        let matched: Model | undefined;
        const diffs: string[] = [];
        for (const c of cands) {
          const d = await compare(sys, c.m, c.m.life === 'open' ? obs : null);
          if (!d.length && (c.m.life !== 'open' || obs)) {
            matched = c.m;
            break;
          }
          diffs.push(`${c.how}: ${d.join('; ') || 'could not observe'}`);
        }
        if (!matched) {
          const codes = diffs.map((d) => /\[[a-z-]+\]/.exec(d)?.[0] ?? '[state]');
          if (!fail(codes[0]!, `after ${label(op)}: state fits no order: ${diffs.join(' | ')}`)) matched = cands[0]!.m;
        }
        next = matched;
        if (next?.life === 'open' && obs) {
          lastEps = obs.epsilon;
          lastEgress = obs.egress;
        } else if (next?.life === 'erased') lastEps = lastEgress = 0;
        // Closed by the pair: what a sync in it logged before the close is not known here.
        else lastEgress = Number.NaN;
      } else {
        const o0 = await within(settle(start(sys, op)), label(op));
        trace.push(`${label(op)} → ${show(o0)}`);
        const o = typed(o0, label(op), fail);
        const r = step(m, op, o);
        if ('problem' in r) {
          const code = op.op === 'bad' || (op.op === 'track' && op.events.some((s) => 'bad' in s)) ? '[invalid-input]' : `[${op.op}]`;
          if (!fail(code, `${label(op)}: ${r.problem}`)) continue;
          return;
        }
        next = r.next;
        await new Promise((r) => setTimeout(r, 0));
        const obs = next.life === 'open' ? await observe(sys) : null;
        const d = await compare(sys, next, obs);
        for (const x of d) {
          if (!fail(/\[[a-z-]+\]/.exec(x)?.[0] ?? '[state]', `after ${label(op)}: ${x}`)) continue;
        }
        if (obs) {
          const reset = ((op.op === 'reopen' || op.op === 'reopenOverlap') && next.releases === 0) || (op.op === 'consent' && m.p && !next.p) || op.op === 'erase';
          if (obs.epsilon + 1e-12 < lastEps && !reset) fail('[epsilon-down]', `ε went from ${lastEps} to ${obs.epsilon} after ${label(op)}`);
          lastEps = obs.epsilon;
          // Nothing but a sync makes a request (no neighbour table is configured): the egress log
          // grows only at a sync, and is emptied only by an erase, a withdrawal, or a fresh database.
          const emptied = reset || ((op.op === 'reopen' || op.op === 'reopenOverlap') && obs.egress === 0 && m.life === 'erased');
          if (op.op !== 'sync' && !emptied && !Number.isNaN(lastEgress) && obs.egress !== lastEgress) fail('[egress]', `the egress log went from ${lastEgress} to ${obs.egress} entries at ${label(op)}`);
          if (op.op === 'sync' && !(m.p && m.f) && !Number.isNaN(lastEgress) && obs.egress !== lastEgress) fail('[egress]', `a sync refused for consent logged ${obs.egress - lastEgress} request(s)`);
          lastEgress = obs.egress;
        } else if (next.life === 'erased') lastEps = lastEgress = 0;
      }
      if (unhandled.length) fail('[unhandled]', `unhandled rejection(s): ${unhandled.splice(0).map((u) => String(u)).join(' | ')}`);
      m = next!;
    }
    // Every engine of the sequence has ended: nothing it made is left on the backend.
    await within(sys.engine.erase().catch(() => undefined), 'final erase()');
    await new Promise((r) => setTimeout(r, 10));
    const left = tf.memory().numTensors - tensorsBefore;
    if (left !== 0) fail('[tensors]', `${left} tensor(s) left on the backend after every engine of the sequence ended`);
  } finally {
    if (process.env.STATEFUL_VERBOSE) console.log(`--- sequence (autoTrainEvery ${auto})\n    ${trace.join('\n    ')}`);
    await within(sys.engine.erase().catch(() => undefined), 'cleanup erase()').catch(() => undefined);
    // An erased engine (closed) cannot erase again: a fresh one removes what it left.
    if ((await indexedDB.databases()).some((d) => d.name === sys.dbName)) {
      const again = await Engine.create(sys.opts).catch(() => undefined);
      await again?.erase().catch(() => undefined);
    }
  }
}

describe('Engine: stateful model-based test (random operation sequences)', () => {
  before(async () => {
    process.on('unhandledRejection', onUnhandled);
    keys = await generateOfferKeys();
    const a = await signOfferCatalog(OFFER_CATALOGS.A, keys.privateJwk);
    const b = await signOfferCatalog(OFFER_CATALOGS.B, keys.privateJwk);
    // Same signature, another discount: the signature must no longer verify.
    const tampered = structuredClone(a);
    tampered.catalog = { ...tampered.catalog, offers: tampered.catalog.offers.map((o, i) => (i === 0 ? { ...o, discount: { kind: 'percent' as const, percent: 90 } } : o)) };
    signed = { A: a, B: b, tampered };
    server = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(IDS, 8, { seed: 1 }), minClients: 100, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
  });
  after(async () => {
    process.off('unhandledRejection', onUnhandled);
    await server?.close();
  });

  it(`${RUNS} sequences of up to ${MAX_OPS} operations keep the model's invariants`, { timeout: 30 * 60_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(0, 2), fc.array(opArb, { minLength: 1, maxLength: MAX_OPS, size: 'max' }), async (auto, ops) => runSequence(auto, ops)),
      { numRuns: RUNS, ...(SEED !== undefined ? { seed: SEED } : {}), includeErrorInReport: true, ...(process.env.STATEFUL_NO_SHRINK === '1' ? { endOnFailure: true } : {}) },
    );
  });
  // The sequences' finding, pinned: it fired in about 1 random sequence of 100.
  it('a call in flight when erase() or close() begins resolves or rejects with a ClosedError, never a storage error', async () => {
    const outcomes = new Set<string>();
    for (const end of ['erase', 'close'] as const) {
      for (const op of ['recommend', 'stats', 'offers', 'audit'] as const) {
        for (const first of ['op', 'end'] as const) {
          const e = await Engine.create({ catalog: { items: IDS.map((id) => ({ id })) }, backend: 'cpu', autoTrainEvery: 0, dbName: `inflight-${end}-${op}-${first}`, model: { dim: 8 }, offers: { publicKey: keys.publicJwk } });
          e.enqueue([{ type: 'view', itemId: IDS[1]! }]);
          await e.flush();
          const call = () => (op === 'offers' ? e.offers() : op === 'stats' ? e.stats() : op === 'audit' ? e.audit() : e.recommend());
          const ending = () => (end === 'erase' ? e.erase() : e.close());
          const [a, b] = first === 'op' ? [call(), ending()] : [ending(), call()].reverse();
          const [r, done] = await Promise.allSettled([a, b]);
          assert.equal(done!.status, 'fulfilled', `${end}() itself`);
          const what = r!.status === 'fulfilled' ? 'ok' : (r!.reason as Error).name;
          outcomes.add(`${end}/${op}/${first}: ${what}`);
          assert.ok(what === 'ok' || isClosedError(r!.status === 'rejected' ? r!.reason : undefined), `${op}() during ${end}() (${first} first): ${what} ${r!.status === 'rejected' ? (r!.reason as Error).message : ''}`);
          if (end === 'close') await Engine.create({ catalog: { items: IDS.map((id) => ({ id })) }, backend: 'cpu', autoTrainEvery: 0, dbName: `inflight-${end}-${op}-${first}` }).then((x) => x.erase());
        }
      }
    }
    // (At least one call must really have been cut short, or the test says nothing.)
    assert.ok([...outcomes].some((o) => o.endsWith('ClosedError')), [...outcomes].join('; '));
  });
});
