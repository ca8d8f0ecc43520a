/**
 * Stateful, model-based property test of the on-device OFFERS feature through the public in-process
 * Engine API (`setOffers()`, `offers()`, `enqueue()`, `setConsent()`, `erase()`, close + reopen; on
 * fake-indexeddb, with an injected clock), against a small model of what docs/OFFERS.md promises.
 *
 * fast-check generates, per sequence:
 *  - three signed offer catalogs (plus, sometimes, a renewal of the first: the same catalog signed
 *    again with a later `expiresAt`) of one to five offers drawn from a shared pool of offer ids, so
 *    that an impression or redemption counts for the same id across catalogs: percent (with or
 *    without `maxAmount`) or fixed discounts; scopes on items (a ghost id among them), categories (one
 *    the product catalog lacks among them) or everything; a minimum basket; validity windows around
 *    the start of the clock; audience all / new / returning; `maxRedemptions`, `maxImpressions`,
 *    `coolDownHours` (0 and 0.5 included); value hints or none (then the mean price in scope, or the
 *    minimum basket, as the doc says), some with a cost that makes the net value ≤ 0 (never shown);
 *    versions 0–3 and two issue times, so that older, same-version-earlier and same-version-other-
 *    content catalogs occur; an `expiresAt` (already more than a day past, or not) on some; a learned
 *    affinity snapshot on some (the other `offers()` path); the retention (`maxEvents` 10,000, or 6
 *    or 2 so that offer events and purchases are folded into the offer ledger); `offers.minVersion`;
 *  - operations, as plain data: `track` (views, searches with a clicked result, adds to cart and
 *    removals with or without a quantity, purchases, ratings of 5 or 1, `offer_impression` /
 *    `offer_redeemed` of pool ids and of an unknown id, stamped now, without `t`, in the past, or two
 *    hours ahead; and invalid ones: more than a day ahead, an empty or missing offerId, a typo'd
 *    field, a negative quantity); `offers({ k, context: { cart, page, itemId, now }, seed,
 *    exploration, objective })` (k 1–6; a known cart, an empty one or none; a `now` equal to, ahead
 *    of, within a day before, exactly a day before or more than a day before — a replay — the
 *    device's clock), optionally followed by the page tracking an impression of every offer shown and
 *    a redemption of the first; `setOffers` with one of the catalogs, a tampered one (a signed catalog
 *    with one discount changed) or garbage; the clock moving forward (1 min … 3 days, across the hour
 *    boundaries of the windows) or back (10 min, 2 h); `flush`; close + reopen on the same dbName,
 *    some with another `offers.minVersion` or trusted key (one that signed nothing, or both);
 *    erase + reopen; consent withdrawal and grant (`setConsent({ personalization })`); the stored
 *    catalog record edited in IndexedDB (a higher version, another discount); invalid `offers()`
 *    calls; and an `offers()` call with a track or a setOffers started before it settles.
 *
 * After every `offers()` call it checks, against the model (every event accepted since the last
 * erase / withdrawal, with its time; the catalog installed; the clock):
 *  - [offers-catalog] every shown offer is one of the installed (latest accepted, verifying) catalog,
 *    with its title and discount; [offers-dup] each once; [offers-k] at most k; [expired-catalog]
 *    nothing from a catalog more than a day past its `expiresAt` at the call's `now`; [min-version]
 *    nothing from a catalog below the page's `offers.minVersion`;
 *  - every shown offer is eligible at the call's `now` (docs/OFFERS.md, Policy 1): [validity] inside
 *    `[validFrom, validUntil)`; [audience] new = no purchase event on the device (a purchase folded
 *    into the ledger included); [min-basket] a known cart (an empty one included) reaches
 *    `minBasket`; [redemption-cap] / [impression-cap] the shopper's own `offer_redeemed` /
 *    `offer_impression` events (also those retention folded into the ledger, also across reopen)
 *    below the cap; [cool-down] not within `coolDownHours` of the last redemption; [net-value] its net
 *    value per use is > 0 (Policy 4). Live calls count an event or purchase stamped ahead of `now` as
 *    now; a replay (`now` more than a day before the clock) counts only events up to `now`;
 *  - [withheld] exactly min(k, number of eligible offers worth showing) come back: none withheld;
 *  - [explore] `explore` is a boolean, never true with `exploration: 0`; [ev] `expectedValue` is
 *    finite, ≥ 0 and at most the net value per use; [ev-value] with an affinity snapshot it is what
 *    Policy 2–4 give (purchases grouped into 30-minute baskets, `predictAffinity`, the page context's
 *    lift of 0.2 / 0.5, the Beta posterior of prior strength 10 over showings and redemptions);
 *    [order] with the `value` objective a greedy (non-explore) slot's expected value is at least
 *    every later slot's;
 *  - [reason] `why` follows Policy 6 exactly — the most recent citable event on an in-scope catalog
 *    item (not a low rating, nor an add to cart removals took back, by units), else the product on
 *    screen, else the first cart line in scope, else the most recent citable event in the same
 *    category (item scopes), else `explore` / `shop` (always so for scope `all`) — built only from
 *    events of this shopper (never an invented history), and `reason` is its English wording;
 *  - [determinism] the same call with the same seed, right after, gives the same answer; so does it
 *    after close + reopen ([determinism-reopen]), when nothing else changed;
 * and after the other operations:
 *  - [setOffers] a catalog is accepted or refused exactly as "Catalog format" says (minVersion, a
 *    day past expiresAt, an older version, an earlier issue at the same version, other content at the
 *    same version and issue time unless a renewal, a stored record that no longer verifies being no
 *    floor; a tampered or garbage one, or any under a key that signed nothing, is a SignatureError),
 *    and a refused one changes nothing ([catalog-kept] the next offers() shows the previous one);
 *    [never-shown] its answer counts the offers and names those with a net value per use ≤ 0;
 *    [offers-stored] `audit().offers.version` is the stored record's;
 *  - [track] `enqueue()` accepts the valid events, throws a ValidationError naming the first invalid
 *    one's field, and takes nothing without consent; [bad-call] an invalid `offers()` option is a
 *    ValidationError naming it, with or without a catalog;
 *  - [hang] no call takes longer than OP_TIMEOUT_MS; [unhandled] no unhandled rejection;
 *    [untyped-error] every rejection is one of localrec's typed errors.
 *
 * Where the model cannot be exact it is lenient, and says so here: after evictions (`maxEvents` 6
 * or 2), a reason's precedence is not checked (a newer cited event may be gone, a removal that took
 * an add back too), only that what it cites happened, and [ev-value] is not checked (the affinity
 * reads only stored purchases); two events at the same time are both "the most recent"; a net value
 * within 1e-9 of 0 may go either way. An offers() call together with another operation passes when
 * its answer fits the model before or after that operation.
 *
 * Found when this file was written (stop 39), each pinned by a test at the end:
 *  - [replay-ledger] (documented in docs/OFFERS.md "Policy", not changed; counted but not failing
 *    by default, OFFERS_STATEFUL_IGNORE, its pinned test a `todo`): a replay (`context.now` more than a day back) shows an offer at its impression
 *    or redemption cap as of that time when retention folded those events into the offer ledger
 *    together with a later one of the same offer: `ledgerAsOf` (src/offers/policy.ts) leaves the
 *    offer's whole ledger entry out. The same for the audience ("returning" forgotten) and
 *    completeness in such replays; these fire under this code, not the rule's.
 *  - [reason-queued] (fixed): an event tracked while `offers()` runs (after it wrote the queue) was
 *    appended after the stored events, out of time order, and the reason could cite it as "the most
 *    recent" though a later event existed (`counted()` in Engine.offersOpen concatenated
 *    `this.queue`; it now puts them in time order).
 *  - [cart-line-key] (fixed): a cart line with an unknown key (`{ itemId, qty: 2 }`) was taken
 *    silently (as quantity 1), where every other options object refuses unknown keys (`knownKeys`).
 *
 * Env: OFFERS_STATEFUL_RUNS (default 40; CI 30), OFFERS_STATEFUL_SEED (CI: 11),
 * OFFERS_STATEFUL_MAX_OPS (default 25), OFFERS_STATEFUL_IGNORE (comma-separated violation codes
 * counted instead of failing; default `replay-ledger`, set it empty to
 * fail on those), OFFERS_STATEFUL_VERBOSE=1 (print every sequence, and each ignored violation),
 * OFFERS_STATEFUL_STATS=1 (count what the sequences reached), OFFERS_STATEFUL_NO_SHRINK=1,
 * OFFERS_STATEFUL_OP_TIMEOUT_MS (20,000).
 *
 * Under CI the seed is fixed unless OFFERS_STATEFUL_SEED is given, so that a run can be repeated;
 * elsewhere each run draws new sequences (fast-check prints the seed of a failure).
 */
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { Engine } from '../../src/engine/engine.js';
import { MemoryEventStore } from '../../src/events/store.js';
import { predictAffinity } from '../../src/offers/affinity-model.js';
import { base64urlEncode } from '../../src/offers/base64url.js';
import { canonicalJson } from '../../src/offers/canonical-json.js';
import { generateOfferKeys, signedPayload, type OfferKeyPair } from '../../src/offers/signing.js';
import { validateOfferCatalog } from '../../src/offers/validate-catalog.js';
import type { CartLine, Offer, OfferCatalog, OffersOptions, ShownOffer, SignedOfferCatalog } from '../../src/offers/types.js';
import '../../src/model/tf.js';
import { hangGuard, IDS, ITEMS } from '../stateful-helpers.js';

const RUNS = Number(process.env.OFFERS_STATEFUL_RUNS ?? (process.env.CI ? 30 : 40));
const MAX_OPS = Number(process.env.OFFERS_STATEFUL_MAX_OPS ?? 25);
const SEED = process.env.OFFERS_STATEFUL_SEED !== undefined ? Number(process.env.OFFERS_STATEFUL_SEED) : process.env.CI ? 11 : undefined;
/**
 * Violation codes counted instead of failing. By default [replay-ledger] (a documented limitation,
 * see the header): set OFFERS_STATEFUL_IGNORE= (empty) to fail on it.
 */
const IGNORE = new Set((process.env.OFFERS_STATEFUL_IGNORE ?? 'replay-ledger').split(',').filter(Boolean).map((c) => c.replace(/^\[|\]$/g, '')));
/** How often each ignored code fired (printed once at the end). */
const ignored: Record<string, number> = {};
const VERBOSE = process.env.OFFERS_STATEFUL_VERBOSE === '1';
const OP_TIMEOUT_MS = Number(process.env.OFFERS_STATEFUL_OP_TIMEOUT_MS ?? 20_000);
const STATS = process.env.OFFERS_STATEFUL_STATS === '1';
/** What the sequences reached (OFFERS_STATEFUL_STATS=1 prints it): offers() calls, those that showed something, offers shown, refused setOffers, reasons by kind. */
const stats: Record<string, number> = {};
const count = (k: string, n = 1) => void (stats[k] = (stats[k] ?? 0) + n);

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
/** How far ahead an event may be stamped, the day of slack a catalog's expiry gets, and how far before the clock `offers({ context: { now } })` is still live (FUTURE_SLACK_MS). */
const SLACK = DAY;

const ITEM_BY_ID = new Map(ITEMS.map((i) => [i.id, i]));
const GHOST = 'ghost-1';
const OFFER_POOL = ['o0', 'o1', 'o2', 'o3', 'o4'] as const;

// ---------------------------------------------------------------------------------------------
// Catalogs, as plain data (fast-check prints and shrinks them); times in hours from the clock's start.

interface OfferSpec {
  id: string;
  discount: { kind: 'percent'; percent: number; maxAmount?: number } | { kind: 'amount'; amount: number };
  scope: { kind: 'all' } | { kind: 'items'; itemIds: string[] } | { kind: 'categories'; categories: string[] };
  minBasket?: number;
  fromH?: number;
  untilH?: number;
  audience?: 'all' | 'new' | 'returning';
  limits?: { maxRedemptions?: number; maxImpressions?: number; coolDownHours?: number };
  hints?: 'fixed' | 'costly' | 'none';
}
interface CatalogSpec {
  version: number;
  issued: 0 | 1;
  expiresH?: number;
  affinity: boolean;
  offers: OfferSpec[];
}
interface Setup {
  catalogs: CatalogSpec[];
  renewal: boolean;
  maxEvents: number;
  minVersion?: number;
}

const HOURS = [-48, -1, 0, 1, 2, 25, 72];
/** `arb`, or (with weight `absent` against 1) undefined. */
const some = <T>(arb: fc.Arbitrary<T>, absent: number): fc.Arbitrary<T | undefined> => fc.oneof({ weight: absent, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: arb });
/** `o` without its undefined fields (plain data that prints and compares well). */
function dropUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
const offerSpecArb = (id: string): fc.Arbitrary<OfferSpec> =>
  fc
    .record(
      {
        discount: fc.oneof(
          fc.record({ kind: fc.constant('percent' as const), percent: fc.constantFrom(5, 10, 25, 25, 60) }),
          fc.record({ kind: fc.constant('percent' as const), percent: fc.constantFrom(10, 50), maxAmount: fc.constantFrom(0.5, 2) }),
          fc.record({ kind: fc.constant('amount' as const), amount: fc.constantFrom(1, 3, 9) }),
        ),
        scope: fc.oneof(
          { weight: 2, arbitrary: fc.record({ kind: fc.constant('items' as const), itemIds: fc.uniqueArray(fc.constantFrom(...IDS.slice(0, 8), GHOST), { minLength: 1, maxLength: 3 }) }) },
          { weight: 2, arbitrary: fc.record({ kind: fc.constant('categories' as const), categories: fc.constantFrom(['mug'], ['bag'], ['mug', 'bag'], ['lamp']) }) },
          { weight: 1, arbitrary: fc.constant({ kind: 'all' as const }) },
        ),
        minBasket: some(fc.constantFrom(0, 10, 30, 80), 1),
        window: some(fc.tuple(some(fc.constantFrom(...HOURS), 1), some(fc.constantFrom(...HOURS), 1)), 2),
        audience: some(fc.constantFrom('all' as const, 'new' as const, 'returning' as const), 1),
        limits: some(fc.record({ maxRedemptions: some(fc.constantFrom(1, 2), 1), maxImpressions: some(fc.constantFrom(1, 2, 4), 1), coolDownHours: some(fc.constantFrom(0, 0.5, 1, 24), 1) }).map(dropUndefined), 1),
        hints: fc.constantFrom('fixed' as const, 'fixed' as const, 'fixed' as const, 'costly' as const, 'none' as const),
      },
    )
    .map(({ window, ...r }) => {
      const s: OfferSpec = dropUndefined({ id, ...r }) as OfferSpec;
      if (window) {
        const [a, b] = window;
        if (a !== undefined && b !== undefined) {
          if (a < b) [s.fromH, s.untilH] = [a, b];
          else if (b < a) [s.fromH, s.untilH] = [b, a];
          else s.fromH = a;
        } else {
          if (a !== undefined) s.fromH = a;
          if (b !== undefined) s.untilH = b;
        }
      }
      return s;
    });
const catalogSpecArb: fc.Arbitrary<CatalogSpec> = fc
  .record(
    {
      version: fc.constantFrom(0, 1, 1, 2, 2, 3),
      issued: fc.constantFrom(0 as const, 1 as const),
      expiresH: some(fc.constantFrom(-60, -12, 30, 200), 2),
      affinity: fc.boolean(),
      ids: fc.uniqueArray(fc.constantFrom(...OFFER_POOL), { minLength: 1, maxLength: 5 }),
    },
  )
  .chain(({ ids, ...c }) => fc.tuple(...ids.map((id) => offerSpecArb(id))).map((offers) => dropUndefined({ ...c, offers }) as CatalogSpec));
const setupArb: fc.Arbitrary<Setup> = fc.record(
  {
    catalogs: fc.tuple(catalogSpecArb, catalogSpecArb, catalogSpecArb).map((t) => [...t]),
    renewal: fc.boolean(),
    maxEvents: fc.constantFrom(10_000, 10_000, 6, 2),
    minVersion: some(fc.constant(1), 3),
  },
).map(dropUndefined);

function buildOffer(s: OfferSpec, base: number): Offer {
  const o: Offer = { id: s.id, title: `Offer ${s.id}`, discount: { ...s.discount }, scope: s.scope.kind === 'all' ? { kind: 'all' } : s.scope.kind === 'items' ? { kind: 'items', itemIds: [...s.scope.itemIds] } : { kind: 'categories', categories: [...s.scope.categories] } };
  if (s.minBasket !== undefined) o.minBasket = s.minBasket;
  if (s.fromH !== undefined) o.validFrom = base + s.fromH * HOUR;
  if (s.untilH !== undefined) o.validUntil = base + s.untilH * HOUR;
  if (s.audience !== undefined) o.audience = s.audience;
  if (s.limits !== undefined) o.limits = { ...s.limits };
  if (s.hints === 'fixed') o.hints = { margin: 0.4, typicalSpend: 20 };
  if (s.hints === 'costly') o.hints = { margin: 0.4, typicalSpend: 20, cost: 7 };
  return o;
}
function buildCatalog(s: CatalogSpec, base: number): OfferCatalog {
  const c: OfferCatalog = { version: s.version, issuedAt: base - 10 * DAY + s.issued * 1000, currency: 'GBP', offers: s.offers.map((o) => buildOffer(o, base)) };
  if (s.expiresH !== undefined) c.expiresAt = base + s.expiresH * HOUR;
  if (s.affinity) {
    c.affinity = {
      features: ['popularity', 'returning', 'timesBought', 'inLastBasket', 'daysSinceBought', 'basketsSoFar'],
      weights: [-1, 1.5, 0.7, 0.8, 0.5, -0.3, -0.2],
      offers: { [s.offers[0]!.id]: { popularity: 0.2, recentPopularity: 0.1, repeatRate: 0.3 } },
    };
  }
  return validateOfferCatalog(c);
}

/** Signs without `signOfferCatalog`'s refusal of an already expired catalog: a replayed old one is what a device must refuse. */
async function sign(catalog: OfferCatalog, keys: OfferKeyPair): Promise<SignedOfferCatalog> {
  const key = await crypto.subtle.importKey('jwk', keys.privateJwk as JsonWebKey, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
  const envelope = { alg: 'ES256' as const, catalog };
  const sig = new Uint8Array(await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, key, signedPayload(envelope)));
  return { ...envelope, signature: base64urlEncode(sig) };
}

// ---------------------------------------------------------------------------------------------
// Operations.

type Ago = 'omit' | 'now' | '1m' | '2h' | '3d' | 'ahead2h';
const AGO_MS: Record<Exclude<Ago, 'omit'>, number> = { now: 0, '1m': MIN, '2h': 2 * HOUR, '3d': 3 * DAY, ahead2h: -2 * HOUR };
type EvSpec =
  | { type: 'view' | 'purchase'; item: string; ago: Ago }
  | { type: 'add_to_cart' | 'remove_from_cart'; item: string; quantity?: number; ago: Ago }
  | { type: 'search'; item?: string; ago: Ago }
  | { type: 'rating'; item: string; value: 1 | 5; ago: Ago }
  | { type: 'offer_impression' | 'offer_redeemed'; offerId: string; ago: Ago }
  | { bad: 'future' | 'emptyOffer' | 'noOfferId' | 'typo' | 'negQty' };
const BAD_FIELD = { future: 'event.t', emptyOffer: 'event.offerId', noOfferId: 'event.offerId', typo: 'event.offerID', negQty: 'event.quantity' } as const;

type At = 'clock' | 'ahead90m' | 'back20h' | 'back24h' | 'back24h1' | 'back3d';
const AT_MS: Record<At, number> = { clock: 0, ahead90m: 90 * MIN, back20h: -20 * HOUR, back24h: -DAY, back24h1: -DAY - 1, back3d: -3 * DAY };
interface OffersSpec {
  k: number;
  cart?: { item: string; quantity?: number; price?: number }[];
  page?: 'home' | 'product' | 'cart';
  itemId?: string;
  at?: At;
  seed?: number;
  exploration?: number;
  objective?: 'reach';
  then: 'none' | 'impressions' | 'redeemFirst';
}
const BAD_OFFERS = {
  k0: ['options.k', { k: 0 }],
  k21: ['options.k', { k: 21 }],
  kFrac: ['options.k', { k: 1.5 }],
  page: ['options.context.page', { context: { page: 'nowhere' } }],
  nowNaN: ['options.context.now', { context: { now: Number.NaN } }],
  cartQty: ['options.context.cart[0].quantity', { context: { cart: [{ itemId: 'p1', quantity: 0 }] } }],
  cartPrice: ['options.context.cart[0].price', { context: { cart: [{ itemId: 'p1', price: -1 }] } }],
  typo: ['options.kk', { kk: 2 }],
  ctxTypo: ['options.context.item', { context: { item: 'p1' } }],
  seed: ['options.seed', { seed: -1 }],
  exploration: ['options.exploration', { exploration: 2 }],
  objective: ['options.objective', { objective: 'profit' }],
  priorStrength: ['options.priorStrength', { priorStrength: -1 }],
  ctxNull: ['options.context', { context: null }],
  ctxItemNum: ['options.context.itemId', { context: { itemId: 7 } }],
  cartNotArray: ['options.context.cart', { context: { cart: { itemId: 'p1' } } }],
  cartItemNum: ['options.context.cart[0].itemId', { context: { cart: [{ itemId: 1 }] } }],
  cartHole: ['options.context.cart[0]', { context: { cart: [, { itemId: 'p1' }] } }],
  cartLineTypo: ['options.context.cart[0].qty', { context: { cart: [{ itemId: 'p1', qty: 2 }] } }],
} as const;
type BadOffers = keyof typeof BAD_OFFERS;

type Op =
  | { op: 'track'; events: EvSpec[] }
  | { op: 'flush' }
  | ({ op: 'offers' } & OffersSpec)
  | { op: 'setOffers'; which: number | 'tampered' | 'garbage' }
  | { op: 'tick'; ms: number }
  /** close + a new Engine on the same dbName; the page may ship another `offers.minVersion` (null: none) or trust another key ('other'), or both keys. */
  | { op: 'reopen'; minVersion?: number | null; key?: 'main' | 'other' | 'both' }
  | { op: 'consent'; personalization: boolean }
  | { op: 'badOffers'; which: BadOffers }
  /** The stored catalog record edited in IndexedDB (as a shopper could in devtools): a higher version, or a bigger discount. */
  | { op: 'editStored'; kind: 'version' | 'discount' }
  /** erase(), then a new Engine on the same dbName. */
  | { op: 'eraseReopen' }
  /** offers() and, `gap` ms later (not awaiting it), a track or a setOffers: the answer must fit one order or the other. */
  | { op: 'par'; a: { op: 'offers' } & OffersSpec; b: { op: 'track'; events: EvSpec[] } | { op: 'setOffers'; which: number }; gap: number };

const itemArb = fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...IDS) }, { weight: 1, arbitrary: fc.constant(GHOST) });
const agoArb = fc.constantFrom<Ago>('omit', 'now', 'now', '1m', '2h', '3d', 'ahead2h');
const evArb: fc.Arbitrary<EvSpec> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ type: fc.constant('view' as const), item: itemArb, ago: agoArb }) },
  { weight: 3, arbitrary: fc.record({ type: fc.constantFrom('add_to_cart' as const, 'add_to_cart' as const, 'remove_from_cart' as const), item: fc.constantFrom('p0', 'p1', 'p6', 'p7', GHOST), quantity: some(fc.constantFrom(1, 2, 3), 1), ago: agoArb }).map(dropUndefined) },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('purchase' as const), item: itemArb, ago: agoArb }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('search' as const), item: itemArb, ago: agoArb }, { requiredKeys: ['type', 'ago'] }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('rating' as const), item: itemArb, value: fc.constantFrom(1 as const, 5 as const), ago: agoArb }) },
  { weight: 4, arbitrary: fc.record({ type: fc.constantFrom('offer_impression' as const, 'offer_redeemed' as const), offerId: fc.constantFrom(...OFFER_POOL, 'zz'), ago: agoArb }) },
  { weight: 1, arbitrary: fc.record({ bad: fc.constantFrom(...(Object.keys(BAD_FIELD) as (keyof typeof BAD_FIELD)[])) }) },
);
const cartArb = fc.array(
  fc.record({ item: itemArb, quantity: fc.constantFrom(1, 3), price: fc.constantFrom(0, 2.5, 50) }, { requiredKeys: ['item'] }),
  { maxLength: 3 },
);
const offersArb: fc.Arbitrary<Op> = fc
  .record({
    k: fc.integer({ min: 1, max: 6 }),
    cart: some(cartArb, 1),
    page: some(fc.constantFrom('home' as const, 'product' as const, 'cart' as const), 1),
    itemId: some(itemArb, 1),
    at: some(fc.constantFrom<At>('clock', 'ahead90m', 'back20h', 'back24h', 'back24h1', 'back3d'), 2),
    seed: some(fc.integer({ min: 0, max: 3 }), 1),
    exploration: some(fc.constantFrom(0, 0.5, 1), 1),
    objective: some(fc.constant('reach' as const), 5),
    then: fc.constantFrom('none' as const, 'impressions' as const, 'impressions' as const, 'redeemFirst' as const),
  })
  .map((s) => {
    const op = { op: 'offers' as const } as { op: 'offers' } & OffersSpec;
    for (const [k, v] of Object.entries(s)) if (v !== undefined) (op as unknown as Record<string, unknown>)[k] = v;
    return op;
  });
const opArb = (catalogs: number): fc.Arbitrary<Op> =>
  fc.oneof(
    { weight: 5, arbitrary: fc.record({ op: fc.constant('track' as const), events: fc.array(evArb, { minLength: 1, maxLength: 5 }) }) },
    { weight: 1, arbitrary: fc.constant({ op: 'flush' as const }) },
    { weight: 7, arbitrary: offersArb },
    { weight: 3, arbitrary: fc.record({ op: fc.constant('setOffers' as const), which: fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: catalogs - 1 }) }, { weight: 1, arbitrary: fc.constantFrom('tampered' as const, 'garbage' as const) }) }) },
    { weight: 3, arbitrary: fc.record({ op: fc.constant('tick' as const), ms: fc.constantFrom(MIN, 29 * MIN, 31 * MIN, HOUR, HOUR + 1, 23 * HOUR, 25 * HOUR, 3 * DAY, -10 * MIN, -2 * HOUR) }) },
    { weight: 2, arbitrary: fc.constant({ op: 'reopen' as const }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('reopen' as const), minVersion: some(fc.constantFrom(null, 1, 2, 3), 1), key: some(fc.constantFrom('main' as const, 'other' as const, 'both' as const), 1) }).map(dropUndefined) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('consent' as const), personalization: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('badOffers' as const), which: fc.constantFrom(...(Object.keys(BAD_OFFERS) as BadOffers[])) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('editStored' as const), kind: fc.constantFrom('version' as const, 'discount' as const) }) },
    { weight: 1, arbitrary: fc.constant({ op: 'eraseReopen' as const }) },
    {
      weight: 2,
      arbitrary: fc.record({
        op: fc.constant('par' as const),
        a: offersArb.map((o) => ({ ...(o as { op: 'offers' } & OffersSpec), then: 'none' as const })),
        b: fc.oneof(
          fc.record({ op: fc.constant('track' as const), events: fc.array(evArb.filter((e) => !('bad' in e)), { minLength: 1, maxLength: 3 }) }),
          fc.record({ op: fc.constant('setOffers' as const), which: fc.integer({ min: 0, max: catalogs - 1 }) }),
        ),
        gap: fc.constantFrom(0, 0, 1, 3),
      }),
    },
  );

// ---------------------------------------------------------------------------------------------
// The model.

interface MEv {
  seq: number;
  t: number;
  type: string;
  itemId?: string;
  offerId?: string;
  value?: number;
  quantity?: number;
}
interface Model {
  /** Personalization consent in force. */
  p: boolean;
  /** Every event accepted since the last withdrawal (retention folds, never forgets, what the rules count). */
  events: MEv[];
  /** More events accepted than `maxEvents`: some were evicted (and folded into the ledger). */
  evicted: boolean;
  /** The catalog held in memory, and the one stored (index into the sequence's catalogs). */
  mem: number | null;
  stored: number | null;
  /** The version the stored record claims after it was edited in IndexedDB (it no longer verifies: `stored` is then null). */
  edited: number | null;
}
const fresh = (): Model => ({ p: true, events: [], evicted: false, mem: null, stored: null, edited: null });

/** What the doc's value formula gives per use (Policy 4), independently of src/offers/offer-value.ts. */
function netValue(o: Offer): number {
  const prices = (ids: string[]) => ids.map((id) => ITEM_BY_ID.get(id)?.price).filter((p): p is number => p !== undefined && p > 0);
  const mean = (ps: number[]) => (ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : undefined);
  const scopeIds = o.scope.kind === 'all' ? IDS : o.scope.kind === 'items' ? [...o.scope.itemIds] : ITEMS.filter((i) => (o.scope as { categories: readonly string[] }).categories.includes(i.category)).map((i) => i.id);
  const m = mean(prices(scopeIds));
  const spend = o.hints?.typicalSpend ?? (o.scope.kind === 'all' ? Math.max(m ?? 0, o.minBasket ?? 0) : (m ?? o.minBasket ?? 0));
  const value = (o.hints?.margin ?? 0.3) * spend;
  const d = o.discount;
  const discount = d.kind === 'amount' ? Math.min(d.amount, spend) : Math.min((d.percent / 100) * spend, d.maxAmount ?? Infinity);
  return value - discount - (o.hints?.cost ?? 0);
}

function inScope(o: Offer, itemId: string): boolean {
  switch (o.scope.kind) {
    case 'all':
      return true;
    case 'items':
      return o.scope.itemIds.includes(itemId);
    case 'categories': {
      const c = ITEM_BY_ID.get(itemId)?.category;
      return c !== undefined && o.scope.categories.includes(c);
    }
  }
}

interface CallView {
  now: number;
  live: boolean;
  /** Rule events (purchases, offer events) that count, with the time they count at. */
  rules: MEv[];
  /** Events a reason may look at (up to `now`; live, a purchase or offer event ahead counts as now). */
  past: MEv[];
  /** Checks the model cannot make exactly here (see the header). */
  lenientRules: boolean;
  lenientReasons: boolean;
}

function callView(m: Model, clock: number, at: At | undefined): CallView {
  const now = at === undefined ? clock : clock + AT_MS[at];
  const live = at === undefined || now >= clock - SLACK;
  const keeps = (e: MEv) => e.type === 'purchase' || e.type === 'offer_impression' || e.type === 'offer_redeemed';
  const rules = m.events.filter(keeps).flatMap((e) => (e.t <= now ? [e] : live ? [{ ...e, t: now }] : []));
  const past = m.events.flatMap((e) => (e.t <= now ? [e] : live && keeps(e) ? [{ ...e }] : []));
  return { now, live, rules, past, lenientRules: !live && m.evicted, lenientReasons: m.evicted };
}

/** The rules that count what retention may have folded into the offer ledger (a replay after evictions: [replay-ledger]). */
const LEDGER_RULES = new Set(['audience', 'redemption-cap', 'impression-cap', 'cool-down']);

/** The first rule of Policy 1 the offer fails at this call ([code] and why), or null. */
function ineligible(o: Offer, v: CallView, cartValue: number | undefined): [string, string] | null {
  if (o.validFrom !== undefined && v.now < o.validFrom) return ['validity', `not yet valid (validFrom ${o.validFrom}, now ${v.now})`];
  if (o.validUntil !== undefined && v.now >= o.validUntil) return ['validity', `expired (validUntil ${o.validUntil}, now ${v.now})`];
  const returning = v.rules.some((e) => e.type === 'purchase');
  if (o.audience === 'new' && returning) return ['audience', 'for new shoppers; this one has a purchase'];
  if (o.audience === 'returning' && !returning) return ['audience', 'for returning shoppers; this one has no purchase'];
  if (o.minBasket !== undefined && cartValue !== undefined && cartValue < o.minBasket) return ['min-basket', `cart ${cartValue} below minBasket ${o.minBasket}`];
  {
    const mine = v.rules.filter((e) => e.offerId === o.id);
    const redeemed = mine.filter((e) => e.type === 'offer_redeemed');
    const shown = mine.filter((e) => e.type === 'offer_impression').length;
    if (o.limits?.maxRedemptions !== undefined && redeemed.length >= o.limits.maxRedemptions) return ['redemption-cap', `redeemed ${redeemed.length} times, cap ${o.limits.maxRedemptions}`];
    if (o.limits?.maxImpressions !== undefined && shown >= o.limits.maxImpressions) return ['impression-cap', `shown ${shown} times, cap ${o.limits.maxImpressions}`];
    if (o.limits?.coolDownHours !== undefined && redeemed.length) {
      const last = Math.max(...redeemed.map((e) => e.t));
      if (v.now - last < o.limits.coolDownHours * HOUR) return ['cool-down', `redeemed at ${last}, ${(v.now - last) / HOUR} h before now, cool-down ${o.limits.coolDownHours} h`];
    }
  }
  const net = netValue(o);
  if (!(net > 1e-9) && !(Math.abs(net) <= 1e-9)) return ['net-value', `net value per use ${net} ≤ 0`];
  return null;
}

/**
 * The expected value Policy 2–4 give an eligible offer of a catalog with an affinity snapshot: the
 * shopper's purchases up to `now` grouped into baskets (a purchase 30 minutes or less after the
 * previous one joins its basket; a basket's time is its latest purchase), `predictAffinity` (the
 * doc's device side), lifted by the page's context (q = 0.2 for the product on screen in scope,
 * 0.5 for a cart line in scope), then the Beta posterior with prior strength 10 over the offer's
 * showings (impressions less than 30 minutes apart count once) and redemptions, times the net value.
 */
function expectedValueOf(o: Offer, cat: OfferCatalog, v: CallView, ctx: { itemId?: string; cart?: CartLine[] }): number {
  const purchases = v.rules.filter((e) => e.type === 'purchase' && e.itemId !== undefined).sort((a, b) => a.t - b.t || a.seq - b.seq);
  const baskets: { t: number; offers: Set<string> }[] = [];
  for (const e of purchases) {
    const last = baskets.at(-1);
    const b = last && e.t - last.t <= 30 * MIN ? last : (baskets.push({ t: e.t, offers: new Set() }), baskets.at(-1)!);
    b.t = e.t;
    for (const x of cat.offers) if (inScope(x, e.itemId!)) b.offers.add(x.id);
  }
  let p = predictAffinity(cat.affinity!, baskets, v.now, cat.offers.map((x) => x.id)).get(o.id) ?? 0;
  const scopeHas = (id: string) => (o.scope.kind === 'items' ? o.scope.itemIds.includes(id) : inScope(o, id));
  let miss = 1 - p;
  if (ctx.itemId !== undefined && scopeHas(ctx.itemId)) miss *= 1 - 0.2;
  if (ctx.cart?.some((l) => scopeHas(l.itemId))) miss *= 1 - 0.5;
  p = 1 - miss;
  const imps = v.rules.filter((e) => e.type === 'offer_impression' && e.offerId === o.id).map((e) => e.t).sort((a, b) => a - b);
  let showings = 0;
  let lastImp = -Infinity;
  for (const t of imps) {
    if (t - lastImp >= 30 * MIN) showings++;
    lastImp = Math.max(lastImp, t);
  }
  const used = Math.min(v.rules.filter((e) => e.type === 'offer_redeemed' && e.offerId === o.id).length, showings);
  const alpha = Math.max(10 * p, 1e-3) + used;
  const beta = Math.max(10 * (1 - p), 1e-3) + (showings - used);
  return (alpha / (alpha + beta)) * netValue(o);
}

const VERB: Record<string, string> = { view: 'viewed', search: 'searched for and opened', add_to_cart: 'added', purchase: 'bought', rating: 'rated' };
const title = (id: string) => ITEM_BY_ID.get(id)?.title ?? id;

/**
 * Which events a reason may cite (Policy 6), in the order the device keeps them (time, then the
 * order tracked): catalog items only; not a rating of 2.5 or less, nor one of an item whose latest
 * rating is; not an add to cart that later removals took back (by units, the latest adds first, the
 * whole line when a removal gives no quantity; never an add a purchase of the item has since
 * settled). After evictions an add or a rating the model rules out may be citable on the device
 * (the removal or the later rating may be gone): 'maybe'.
 */
function citability(v: CallView): (e: MEv) => 'yes' | 'maybe' | 'no' {
  const events = [...v.past].sort((a, b) => a.t - b.t || a.seq - b.seq);
  const out = new Map<number, 'yes' | 'maybe' | 'no'>();
  const latestRating = new Map<string, number>();
  for (const e of events) if (e.type === 'rating') latestRating.set(e.itemId!, e.value!);
  const carts = new Map<string, { seq: number; units: number }[]>();
  const taken = v.lenientReasons ? 'maybe' : 'no';
  for (const e of events) {
    if (!e.itemId || !ITEM_BY_ID.has(e.itemId)) {
      out.set(e.seq, 'no');
      if (e.type !== 'remove_from_cart' && e.type !== 'add_to_cart' && e.type !== 'purchase') continue;
    }
    const item = e.itemId!;
    if (e.type === 'add_to_cart') {
      if (ITEM_BY_ID.has(item)) out.set(e.seq, 'yes');
      carts.set(item, [...(carts.get(item) ?? []), { seq: e.seq, units: e.quantity ?? 1 }]);
    } else if (e.type === 'remove_from_cart') {
      out.set(e.seq, 'no');
      const adds = carts.get(item) ?? [];
      let units = e.quantity ?? Infinity;
      while (units > 0 && adds.length) {
        const last = adds.at(-1)!;
        const n = Math.min(units, last.units);
        last.units -= n;
        units -= n;
        if (last.units === 0) {
          if (ITEM_BY_ID.has(item)) out.set(last.seq, taken);
          adds.pop();
        }
      }
    } else if (e.type === 'purchase') {
      carts.delete(item);
      if (ITEM_BY_ID.has(item)) out.set(e.seq, 'yes');
    } else if (e.type === 'rating') out.set(e.seq, e.value! <= 2.5 ? 'no' : latestRating.get(item)! > 2.5 ? 'yes' : taken);
    else if (VERB[e.type]) out.set(e.seq, 'yes');
    else out.set(e.seq, 'no');
  }
  return (e) => out.get(e.seq) ?? 'no';
}

/** What is wrong with `why`/`reason` of one shown offer (Policy 6), or undefined. */
function checkReason(o: Offer, s: ShownOffer, v: CallView, ctx: { itemId?: string; cart?: CartLine[] }): string | undefined {
  const why = s.why as { kind: string; itemId?: string; event?: string };
  const wording: Record<string, (w: typeof why) => string> = {
    event: (w) => `Because you ${VERB[w.event!]} ${title(w.itemId!)}`,
    'on-screen': (w) => `For the ${title(w.itemId!)} you are looking at`,
    'in-cart': (w) => `For the ${title(w.itemId!)} in your cart`,
    'same-category': (w) => `Like the ${title(w.itemId!)} you ${VERB[w.event!]}`,
    explore: () => 'Something new to try',
    shop: () => 'One of the shop’s current offers',
  };
  if (!wording[why.kind]) return `unknown why.kind ${JSON.stringify(why)}`;
  if (why.itemId !== undefined && !ITEM_BY_ID.has(why.itemId)) return `cites ${why.itemId}, which the product catalog lacks`;
  if ((why.kind === 'event' || why.kind === 'same-category') && !VERB[why.event!]) return `cites an event type ${why.event}`;
  const text = wording[why.kind]!(why);
  if (s.reason !== text) return `reason ${JSON.stringify(s.reason)} for why ${JSON.stringify(why)}, expected ${JSON.stringify(text)}`;
  const fallback = s.explore ? 'explore' : 'shop';
  if (o.scope.kind === 'all') return why.kind === fallback ? undefined : `an offer on everything cites ${JSON.stringify(why)}; expected ${fallback}`;
  const citable = citability(v);
  const exact = !v.lenientReasons;
  const order = (a: MEv, b: MEv) => a.t - b.t;
  /** The `kind` tier for events matching `match`: checks that a cited one is real and the most recent (ties: either). */
  const tier = (kind: 'event' | 'same-category', match: (e: MEv) => boolean): string | 'fallthrough' | undefined => {
    const cands = v.past.filter((e) => match(e) && citable(e) !== 'no').sort(order);
    const sure = cands.filter((e) => citable(e) === 'yes');
    if (why.kind === kind) {
      const cited = cands.filter((e) => e.itemId === why.itemId && e.type === why.event);
      if (!cited.length) return `cites ${why.event} of ${why.itemId}, which this shopper never did (as of now, in scope): invented history; events ${JSON.stringify(v.past.map((e) => [e.type, e.itemId ?? e.offerId, e.t]))}`;
      const latest = Math.max(...cited.map((e) => e.t));
      const newer = sure.find((e) => e.t > latest);
      if (exact && newer) return `cites ${why.event} of ${why.itemId} at ${latest}, but ${newer.type} of ${newer.itemId} at ${newer.t} is more recent`;
      return undefined;
    }
    if (exact && sure.length) return `why ${JSON.stringify(why)}, though the shopper's ${sure.at(-1)!.type} of ${sure.at(-1)!.itemId} qualifies for '${kind}'`;
    return 'fallthrough';
  };
  const first = tier('event', (e) => inScope(o, e.itemId!));
  if (first !== 'fallthrough') return first;
  const onScreen = ctx.itemId !== undefined && ITEM_BY_ID.has(ctx.itemId) && inScope(o, ctx.itemId) ? ctx.itemId : undefined;
  if (why.kind === 'on-screen') return why.itemId === onScreen ? undefined : `on-screen ${why.itemId}, but the product on screen in scope is ${onScreen}`;
  if (onScreen !== undefined) return `why ${JSON.stringify(why)}, though the product on screen ${onScreen} is in scope`;
  const inCart = ctx.cart?.find((l) => ITEM_BY_ID.has(l.itemId) && inScope(o, l.itemId))?.itemId;
  if (why.kind === 'in-cart') return why.itemId === inCart ? undefined : `in-cart ${why.itemId}, but the first cart line in scope is ${inCart}`;
  if (inCart !== undefined) return `why ${JSON.stringify(why)}, though cart line ${inCart} is in scope`;
  if (o.scope.kind === 'items') {
    const cats = new Set(o.scope.itemIds.map((id) => ITEM_BY_ID.get(id)?.category).filter((c) => c !== undefined));
    const r = tier('same-category', (e) => cats.has(ITEM_BY_ID.get(e.itemId!)?.category ?? '\0'));
    if (r !== 'fallthrough') return r;
  } else if (why.kind === 'same-category') return `same-category for a ${o.scope.kind} scope`;
  return why.kind === fallback ? undefined : `why ${JSON.stringify(why)}; nothing on the device points to the offer, expected ${fallback}`;
}

// ---------------------------------------------------------------------------------------------
// The system under test.

const within = hangGuard(OP_TIMEOUT_MS);
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => void unhandled.push(reason);
let keys: OfferKeyPair;
/** A key the shop never signed with (a page trusting only it verifies none of the catalogs). */
let otherKeys: OfferKeyPair;
let seq = 0;

type Outcome = { ok: true; value: unknown } | { ok: false; err: unknown };
const settle = async (p: Promise<unknown>): Promise<Outcome> => p.then((value) => ({ ok: true as const, value }), (err: unknown) => ({ ok: false as const, err }));
const errName = (e: unknown): string => (typeof e === 'object' && e !== null && typeof (e as { name?: unknown }).name === 'string' ? (e as { name: string }).name : typeof e);
const show = (o: Outcome): string => (o.ok ? `ok ${JSON.stringify(o.value)?.slice(0, 400)}` : `${errName(o.err)}: ${String((o.err as Error)?.message ?? o.err).slice(0, 300)}`);
const isErr = (o: Outcome, name: string, field?: string): boolean => !o.ok && errName(o.err) === name && (field === undefined || (o.err as { field?: string }).field === field);
const LOCALREC_ERRORS = new Set(['ValidationError', 'StorageError', 'ModelError', 'ClosedError', 'NetworkError', 'PrivacyBudgetError', 'ConsentError', 'AbortError', 'SignatureError', 'LocalrecError']);
const label = (op: unknown): string => JSON.stringify(op);

interface Sys {
  engine: Engine;
  opts: Parameters<typeof Engine.create>[0];
  clock: { t: number };
  base: number;
  catalogs: OfferCatalog[];
  signed: SignedOfferCatalog[];
  tampered: SignedOfferCatalog;
  setup: Setup;
  /** The page's `offers.minVersion` and trusted key(s) now (reopen may change them). */
  minVersion: number | undefined;
  key: 'main' | 'other' | 'both';
}

function eventOf(s: EvSpec, clock: number): Record<string, unknown> {
  if ('bad' in s) {
    switch (s.bad) {
      case 'future': return { type: 'view', itemId: 'p1', t: clock + SLACK + HOUR };
      case 'emptyOffer': return { type: 'offer_redeemed', offerId: '' };
      case 'noOfferId': return { type: 'offer_impression' };
      case 'typo': return { type: 'offer_redeemed', offerID: 'o1' };
      case 'negQty': return { type: 'purchase', itemId: 'p2', quantity: -1 };
    }
  }
  const e: Record<string, unknown> = { type: s.type };
  if ('item' in s && s.item !== undefined) e.itemId = s.item;
  if ('offerId' in s) e.offerId = s.offerId;
  if ('value' in s) e.value = s.value;
  if ('quantity' in s && s.quantity !== undefined) e.quantity = s.quantity;
  if (s.type === 'search') e.query = 'mug';
  if (s.ago !== 'omit') e.t = clock - AGO_MS[s.ago];
  return e;
}

function offersOptions(op: OffersSpec, clock: number): OffersOptions {
  const context: NonNullable<OffersOptions['context']> = {};
  if (op.cart) context.cart = op.cart.map((l) => ({ itemId: l.item, ...(l.quantity !== undefined ? { quantity: l.quantity } : {}), ...(l.price !== undefined ? { price: l.price } : {}) }));
  if (op.page) context.page = op.page;
  if (op.itemId) context.itemId = op.itemId;
  if (op.at) context.now = clock + AT_MS[op.at];
  const o: OffersOptions = { k: op.k, context };
  if (op.seed !== undefined) o.seed = op.seed;
  if (op.exploration !== undefined) o.exploration = op.exploration;
  if (op.objective) o.objective = op.objective;
  return o;
}

function cartValueOf(cart: CartLine[] | undefined): number | undefined {
  return cart?.reduce((s, l) => s + (l.quantity ?? 1) * (l.price ?? ITEM_BY_ID.get(l.itemId)?.price ?? 0), 0);
}

/** The catalog offers() shows from: the one held in memory, else (with consent) the stored one. */
let keyOk = true;
const installed = (m: Model): number | null => m.mem ?? (m.p && keyOk ? m.stored : null);

/** Everything wrong with one offers() answer, as [code, message]. */
function checkOffers(sys: Sys, m: Model, op: OffersSpec, value: unknown): [string, string][] {
  const out: [string, string][] = [];
  if (!Array.isArray(value)) return [['offers-catalog', `not an array: ${JSON.stringify(value)}`]];
  const shown = value as ShownOffer[];
  const idx = installed(m);
  const v = callView(m, sys.clock.t, op.at);
  if (idx === null) return shown.length ? [['offers-catalog', `${shown.length} offer(s) shown with no catalog installed`]] : [];
  const cat = sys.catalogs[idx]!;
  const ids = shown.map((s) => s.offerId);
  if (sys.minVersion !== undefined && cat.version < sys.minVersion) return shown.length ? [['min-version', `catalog #${idx} v${cat.version} is below the page's offers.minVersion ${sys.minVersion}, but offers() showed ${ids.join(',')}`]] : [];
  if (cat.expiresAt !== undefined && v.now >= cat.expiresAt + SLACK) return shown.length ? [['expired-catalog', `catalog #${idx} expired at ${cat.expiresAt} (+1 day) but offers() at ${v.now} showed ${ids.join(',')}`]] : [];
  if (new Set(ids).size !== ids.length) out.push(['offers-dup', `duplicates: ${ids.join(',')}`]);
  if (shown.length > op.k) out.push(['offers-k', `${shown.length} offers for k ${op.k}`]);
  const ctx = offersOptions(op, sys.clock.t).context!;
  const cartValue = cartValueOf(ctx.cart as CartLine[] | undefined);
  for (const s of shown) {
    const o = cat.offers.find((x) => x.id === s.offerId);
    if (!o) {
      out.push(['offers-catalog', `${s.offerId} is not in the installed catalog #${idx} (v${cat.version}: ${cat.offers.map((x) => x.id).join(',')})`]);
      continue;
    }
    if (s.title !== o.title || JSON.stringify(s.discount) !== JSON.stringify(o.discount)) out.push(['offers-catalog', `${s.offerId} shown as ${JSON.stringify([s.title, s.discount])}, the catalog has ${JSON.stringify([o.title, o.discount])}`]);
    const why = ineligible(o, v, cartValue);
    if (why) out.push([v.lenientRules && LEDGER_RULES.has(why[0]) ? 'replay-ledger' : why[0], `${s.offerId} shown though ineligible: ${why[1]} (${v.live ? 'live' : 'replay'} call at clock${op.at ? ` ${op.at}` : ''})`]);
    if (typeof s.explore !== 'boolean') out.push(['explore', `explore ${JSON.stringify(s.explore)} is not a boolean`]);
    else if (s.explore && op.exploration === 0) out.push(['explore', `${s.offerId} marked explore with exploration 0`]);
    if (typeof s.expectedValue !== 'number' || !Number.isFinite(s.expectedValue) || s.expectedValue < 0 || s.expectedValue > netValue(o) + 1e-4) out.push(['ev', `${s.offerId} expectedValue ${s.expectedValue} (net value per use ${netValue(o)})`]);
    else if (cat.affinity && !m.evicted && !why) {
      const want = expectedValueOf(o, cat, v, ctx as { itemId?: string; cart?: CartLine[] });
      count('ev-checked');
      if (!(Math.abs(s.expectedValue - want) <= 2e-4)) out.push(['ev-value', `${s.offerId} expectedValue ${s.expectedValue}, Policy 2–4 with the catalog's affinity snapshot give ${want}`]);
    }
    const r = checkReason(o, s, v, ctx as { itemId?: string; cart?: CartLine[] });
    if (r) out.push(['reason', `${s.offerId}: ${r}`]);
  }
  {
    const eligible = cat.offers.filter((o) => ineligible(o, v, cartValue) === null);
    const borderline = cat.offers.some((o) => Math.abs(netValue(o)) <= 1e-9);
    const want = Math.min(op.k, eligible.length);
    if (shown.length < want && !borderline) out.push([v.lenientRules ? 'replay-ledger' : 'withheld', `${shown.length} shown (${ids.join(',') || 'none'}), but ${eligible.length} eligible offer(s) worth showing (${eligible.map((o) => o.id).join(',')}) and k ${op.k}`]);
  }
  if (op.objective !== 'reach') {
    shown.forEach((s, i) => {
      if (s.explore) return;
      const later = shown.slice(i + 1).find((x) => x.expectedValue > s.expectedValue);
      if (later) out.push(['order', `greedy slot ${i} (${s.offerId}, EV ${s.expectedValue}) ranks below later ${later.offerId} (EV ${later.expectedValue})`]);
    });
  }
  return out;
}

async function newSystem(setup: Setup): Promise<Sys> {
  const n = seq++;
  const base = Math.floor(Date.now() / HOUR) * HOUR;
  const specs = [...setup.catalogs];
  const catalogs = specs.map((s) => buildCatalog(s, base));
  // A renewal: the first catalog signed again with a later expiresAt (the same version and issue time).
  if (setup.renewal) catalogs.push(validateOfferCatalog({ ...catalogs[0]!, expiresAt: (catalogs[0]!.expiresAt ?? base) + 48 * HOUR }));
  const signed = await Promise.all(catalogs.map((c) => sign(c, keys)));
  const tampered = structuredClone(signed[0]!);
  const first = tampered.catalog.offers[0]!;
  tampered.catalog = { ...tampered.catalog, offers: [{ ...first, discount: first.discount.kind === 'percent' ? { kind: 'percent', percent: 99 } : { kind: 'amount', amount: 99 } }, ...tampered.catalog.offers.slice(1)] };
  const clock = { t: base + 30 * MIN };
  const opts: Parameters<typeof Engine.create>[0] = {
    catalog: { items: ITEMS },
    backend: 'cpu',
    dbName: `offers-stateful-${process.pid}-${n}`,
    autoTrainEvery: 0,
    model: { dim: 8 },
    retention: { maxEvents: setup.maxEvents, maxAgeDays: 365 },
    offers: { publicKey: keys.publicJwk, ...(setup.minVersion !== undefined ? { minVersion: setup.minVersion } : {}) },
    now: () => clock.t,
  };
  const engine = await Engine.create(opts);
  return { engine, opts, clock, base, catalogs, signed, tampered, setup, minVersion: setup.minVersion, key: 'main' };
}

function start(sys: Sys, op: Op): Promise<unknown> {
  try {
    const e = sys.engine;
    switch (op.op) {
      case 'track':
        return Promise.resolve(e.enqueue(op.events.map((s) => eventOf(s, sys.clock.t)) as never));
      case 'flush':
        return e.flush();
      case 'offers':
        return e.offers(offersOptions(op, sys.clock.t));
      case 'setOffers':
        return e.setOffers(op.which === 'tampered' ? sys.tampered : op.which === 'garbage' ? { hello: 'world' } : sys.signed[op.which % sys.signed.length]);
      case 'tick':
        sys.clock.t += op.ms;
        return Promise.resolve();
      case 'reopen':
        return (async () => {
          await e.close();
          if (op.minVersion !== undefined) sys.minVersion = op.minVersion ?? undefined;
          if (op.key !== undefined) sys.key = op.key;
          const publicKey = sys.key === 'main' ? keys.publicJwk : sys.key === 'other' ? otherKeys.publicJwk : [otherKeys.publicJwk, keys.publicJwk];
          sys.opts = { ...sys.opts, offers: { publicKey, ...(sys.minVersion !== undefined ? { minVersion: sys.minVersion } : {}) } };
          sys.engine = await Engine.create(sys.opts);
        })();
      case 'consent':
        return e.setConsent({ personalization: op.personalization });
      case 'badOffers':
        return e.offers(BAD_OFFERS[op.which][1] as never);
      case 'editStored':
        return editStoredOffers(sys.opts.dbName!, op.kind);
      case 'eraseReopen':
        return (async () => {
          await e.erase();
          sys.engine = await Engine.create(sys.opts);
        })();
      case 'par':
        throw new Error('par is run by runSequence');
    }
  } catch (err) {
    return Promise.reject(err);
  }
}

const request = <T>(r: IDBRequest<T>): Promise<T> => new Promise((resolve, reject) => ((r.onsuccess = () => resolve(r.result)), (r.onerror = () => reject(r.error))));

/**
 * Edits the stored offers record through a second IndexedDB connection, as a shopper could in
 * devtools: resolves to the version the edited record claims, or null when none is stored.
 */
async function editStoredOffers(dbName: string, kind: 'version' | 'discount'): Promise<number | null> {
  const db = await request(indexedDB.open(dbName));
  try {
    const tx = db.transaction('meta', 'readwrite');
    const meta = tx.objectStore('meta');
    const rec = (await request(meta.get('offers'))) as SignedOfferCatalog | undefined;
    if (!rec) return null;
    const next = structuredClone(rec);
    if (kind === 'version') next.catalog = { ...next.catalog, version: 99 };
    else next.catalog = { ...next.catalog, offers: next.catalog.offers.map((o, i) => (i === 0 ? { ...o, discount: { kind: 'percent', percent: 1 } } : o)) };
    await request(meta.put(next, 'offers'));
    await new Promise<void>((resolve, reject) => ((tx.oncomplete = () => resolve()), (tx.onerror = () => reject(tx.error))));
    return next.catalog.version;
  } finally {
    db.close();
  }
}

/** The expected outcome of setOffers(i): null (accepted) or [error name, field]. */
function setOffersExpect(sys: Sys, m: Model, i: number): [string, string] | null {
  const c = sys.catalogs[i]!;
  const mv = sys.minVersion;
  if (sys.key === 'other') return ['SignatureError', ''];
  if (mv !== undefined && c.version < mv) return ['ValidationError', 'catalog.version'];
  if (c.expiresAt !== undefined && sys.clock.t >= c.expiresAt + SLACK) return ['ValidationError', 'catalog.expiresAt'];
  const held = [...new Set([m.mem, m.p ? m.stored : null].filter((x): x is number => x !== null))].map((j) => sys.catalogs[j]!);
  if (held.some((h) => c.version < h.version)) return ['ValidationError', 'catalog.version'];
  if (held.some((h) => h.version === c.version && h.issuedAt > c.issuedAt)) return ['ValidationError', 'catalog.issuedAt'];
  const renewal = (h: OfferCatalog) => h.expiresAt !== undefined && c.expiresAt !== undefined && c.expiresAt > h.expiresAt && canonicalJson({ ...h, expiresAt: undefined }) === canonicalJson({ ...c, expiresAt: undefined });
  if (held.some((h) => h.version === c.version && h.issuedAt === c.issuedAt && canonicalJson(h) !== canonicalJson(c) && !renewal(h))) return ['ValidationError', 'catalog.issuedAt'];
  return null;
}

function shownIds(v: unknown): string {
  return Array.isArray(v) ? (v as ShownOffer[]).map((s) => `${s.offerId}${s.explore ? '*' : ''}(${s.why.kind})`).join(',') : String(v);
}

async function runSequence(setup: Setup, ops: Op[]): Promise<void> {
  const sys = await newSystem(setup);
  keyOk = true;
  let m = fresh();
  let evSeq = 0;
  const trace: string[] = [`setup: maxEvents ${setup.maxEvents}, minVersion ${setup.minVersion}, clock starts at base+30min; catalogs ${sys.catalogs.map((c, i) => `#${i} ${JSON.stringify({ ...c, issuedAt: c.issuedAt - sys.base, expiresAt: c.expiresAt !== undefined ? (c.expiresAt - sys.base) / HOUR + 'h' : undefined, offers: c.offers.map((o) => ({ ...o, validFrom: o.validFrom !== undefined ? (o.validFrom - sys.base) / HOUR + 'h' : undefined, validUntil: o.validUntil !== undefined ? (o.validUntil - sys.base) / HOUR + 'h' : undefined })) })}`).join('\n      ')}`];
  const fail = (code: string, msg: string): void => {
    const text = `[${code}] ${msg}\n  trace (times relative to base, in ms):\n    ${trace.join('\n    ')}`;
    if (IGNORE.has(code)) {
      ignored[code] = (ignored[code] ?? 0) + 1;
      if (VERBOSE) console.log(`(ignored) ${text.split('\n')[0]}`);
      return;
    }
    throw new Error(text);
  };
  const typed = (o: Outcome, what: string): void => {
    if (!o.ok && !LOCALREC_ERRORS.has(errName(o.err))) fail('untyped-error', `${what} rejected with ${show(o)}\n  ${String((o.err as Error)?.stack ?? '').split('\n').slice(0, 5).join('\n  ')}`);
  };
  const call = async (op: Op): Promise<Outcome> => {
    const o = await within(settle(start(sys, op)), label(op));
    typed(o, label(op));
    return o;
  };
  const accept = (evs: Record<string, unknown>[]) => {
    for (const e of evs) {
      m.events.push({ seq: evSeq++, t: (e.t as number | undefined) ?? sys.clock.t, type: e.type as string, ...(e.itemId !== undefined ? { itemId: e.itemId as string } : {}), ...(e.offerId !== undefined ? { offerId: e.offerId as string } : {}), ...(e.value !== undefined ? { value: e.value as number } : {}), ...(e.quantity !== undefined ? { quantity: e.quantity as number } : {}) });
    }
    if (m.events.length > setup.maxEvents) m.evicted = true;
  };
  /** The last seeded offers() call and its answer, while nothing changed since (for [determinism-reopen]). */
  let lastSeeded: { op: OffersSpec; value: unknown } | undefined;
  try {
    for (const op of ops) {
      const rel = sys.clock.t - sys.base;
      const changes = !(op.op === 'offers' || op.op === 'badOffers' || op.op === 'flush' || op.op === 'reopen');
      if (changes) lastSeeded = undefined;
      switch (op.op) {
        case 'track': {
          const evs = op.events.map((s) => eventOf(s, sys.clock.t));
          const o = await call(op);
          trace.push(`@${rel} ${label(op)} → ${show(o)}`);
          if (!m.p) {
            if (!(o.ok && o.value === 0)) fail('track', `without consent enqueue() must take nothing and return 0; got ${show(o)}`);
            break;
          }
          const valid = evs.filter((_, i) => !('bad' in op.events[i]!));
          const firstBad = op.events.find((s): s is Extract<EvSpec, { bad: string }> => 'bad' in s);
          if (firstBad) {
            if (!isErr(o, 'ValidationError', BAD_FIELD[firstBad.bad])) fail('track', `expected a ValidationError naming ${BAD_FIELD[firstBad.bad]}; got ${show(o)}`);
          } else if (!(o.ok && o.value === valid.length)) fail('track', `expected ${valid.length} accepted; got ${show(o)}`);
          accept(valid);
          break;
        }
        case 'flush': {
          const o = await call(op);
          trace.push(`@${rel} flush → ${show(o)}`);
          if (!o.ok) fail('flush', `flush() rejected: ${show(o)}`);
          break;
        }
        case 'tick':
          await call(op);
          trace.push(`@${rel} tick ${op.ms / MIN} min → clock base+${sys.clock.t - sys.base}`);
          break;
        case 'offers': {
          const o = await call(op);
          const at = op.at ? ` (now ${op.at})` : '';
          trace.push(`@${rel} ${label(op)}${at} → ${o.ok ? shownIds(o.value) : show(o)}`);
          if (!o.ok) {
            fail('offers', `offers() rejected: ${show(o)}`);
            break;
          }
          for (const [code, msg] of checkOffers(sys, m, op, o.value)) fail(code, msg);
          count('offers');
          const got = o.value as ShownOffer[];
          if (got.length) count('offers-nonempty');
          count('shown', got.length);
          for (const s of got) count(`why-${s.why.kind}`);
          if (got.some((s) => s.explore)) count('explored');
          if (op.at && callView(m, sys.clock.t, op.at).live === false) count('replays');
          if (STATS && installed(m) !== null) {
            const v = callView(m, sys.clock.t, op.at);
            if (v.lenientRules) count('lenient-calls');
            if (m.evicted && v.live) count('evicted-live-calls');
            const cv = cartValueOf(offersOptions(op, sys.clock.t).context!.cart as CartLine[] | undefined);
            for (const x of sys.catalogs[installed(m)!]!.offers) count(`rule-${ineligible(x, v, cv)?.[0] ?? 'eligible'}`);
          }
          const before = installed(m);
          m.mem = installed(m);
          if (op.seed !== undefined) {
            const again = await call(op);
            if (!again.ok || JSON.stringify(again.value) !== JSON.stringify(o.value)) fail('determinism', `the same call with seed ${op.seed} right after gave ${again.ok ? shownIds(again.value) : show(again)}, first ${shownIds(o.value)}\n  ${JSON.stringify(o.value)}\n  ${again.ok ? JSON.stringify(again.value) : ''}`);
            if (before === installed(m)) lastSeeded = { op, value: o.value };
          }
          // The page tracks what it showed (and the shopper uses the first).
          const shown = o.value as ShownOffer[];
          if (op.then !== 'none' && shown.length) {
            lastSeeded = undefined;
            const evs: EvSpec[] = shown.map((s) => ({ type: 'offer_impression', offerId: s.offerId, ago: 'omit' }));
            if (op.then === 'redeemFirst') evs.push({ type: 'offer_redeemed', offerId: shown[0]!.offerId, ago: 'omit' });
            const t = await call({ op: 'track', events: evs });
            trace.push(`    then track ${evs.map((e) => `${(e as { type: string }).type === 'offer_redeemed' ? 'redeem' : 'imp'}:${(e as { offerId: string }).offerId}`).join(' ')} → ${show(t)}`);
            if (m.p) {
              if (!(t.ok && t.value === evs.length)) fail('track', `tracking the impressions/redemption: ${show(t)}`);
              accept(evs.map((s) => eventOf(s, sys.clock.t)));
            } else if (!(t.ok && t.value === 0)) fail('track', `without consent enqueue() must return 0; got ${show(t)}`);
          }
          break;
        }
        case 'setOffers': {
          const which = op.which;
          const o = await call(op);
          trace.push(`@${rel} setOffers(${typeof which === 'number' ? `#${which % sys.catalogs.length}` : which}) → ${show(o)}`);
          count(o.ok ? 'setOffers-ok' : `setOffers-${errName(o.err)}-${(o.err as { field?: string }).field ?? ''}`);
          if (typeof which !== 'number') {
            if (!(isErr(o, 'SignatureError') || (which === 'garbage' && isErr(o, 'ValidationError')))) fail('setOffers', `a ${which} catalog must be refused with a SignatureError; got ${show(o)}`);
          } else {
            const i = which % sys.catalogs.length;
            const want = setOffersExpect(sys, m, i);
            if (want === null) {
              if (!o.ok) fail('setOffers', `catalog #${i} must be accepted (held: mem #${m.mem}, stored #${m.stored}); got ${show(o)}`);
              else {
                // { offers, neverShown }: the offers installed, and those with a net value per use ≤ 0 (Policy 4).
                const r = o.value as { offers: number; neverShown: { offerId: string; why: string }[] };
                const cat = sys.catalogs[i]!;
                const never = cat.offers.filter((x) => netValue(x) <= 1e-9).map((x) => x.id);
                const sure = cat.offers.filter((x) => netValue(x) < -1e-9).map((x) => x.id);
                const got = r.neverShown.map((x) => x.offerId);
                if (r.offers !== cat.offers.length || got.some((id) => !never.includes(id)) || sure.some((id) => !got.includes(id)) || r.neverShown.some((x) => typeof x.why !== 'string' || !x.why)) {
                  fail('never-shown', `setOffers(#${i}) answered ${JSON.stringify(r)}; the catalog has ${cat.offers.length} offers, never shown (net value per use ≤ 0): ${never.join(',') || 'none'}`);
                }
                m.mem = i;
                if (m.p) [m.stored, m.edited] = [i, null];
              }
            } else if (!isErr(o, want[0], want[1] || undefined)) {
              fail('setOffers', `catalog #${i} must be refused with ${want[0]} naming ${want[1]} (held: mem #${m.mem}, stored #${m.stored}); got ${show(o)}`);
              if (o.ok) {
                m.mem = i;
                if (m.p) [m.stored, m.edited] = [i, null];
              }
            }
          }
          // A refused catalog leaves the previous one in force: the next offers() (no context) shows only from it.
          if (!o.ok) {
            const probe = await call({ op: 'offers', k: 20, exploration: 0, seed: 0, then: 'none' });
            if (!probe.ok) fail('catalog-kept', `offers() after a refused setOffers rejected: ${show(probe)}`);
            else for (const [code, msg] of checkOffers(sys, m, { k: 20, then: 'none' }, probe.value)) fail(code === 'offers-catalog' ? 'catalog-kept' : code, `after a refused setOffers: ${msg}`);
            m.mem = installed(m);
          }
          if (m.p) await checkStored();
          break;
        }
        case 'reopen': {
          const o = await call(op);
          trace.push(`@${rel} reopen${op.minVersion !== undefined || op.key ? ` (offers.minVersion ${sys.minVersion}, key ${sys.key})` : ''} → ${show(o)}`);
          if (!o.ok) {
            fail('reopen', `close + reopen failed: ${show(o)}`);
            return;
          }
          // With personalization the database (events, ledger, stored catalog) is kept; after a
          // withdrawal nothing is, and the new engine starts from the default consent.
          const kept = m.p;
          // The catalog shown after reopen is the stored one: the same answer only when it is the one
          // held, and the page's key and floor are the same.
          const same = kept && m.edited === null && installed(m) === m.stored && op.minVersion === undefined && op.key === undefined;
          keyOk = sys.key !== 'other';
          m = kept ? { ...m, mem: null } : fresh();
          if (!same) lastSeeded = undefined;
          if (m.p) await checkStored();
          if (lastSeeded && same) {
            const again = await call({ op: 'offers', ...lastSeeded.op, then: 'none' });
            if (!again.ok || JSON.stringify(again.value) !== JSON.stringify(lastSeeded.value)) fail('determinism-reopen', `the seeded call ${label(lastSeeded.op)} gave ${shownIds(lastSeeded.value)} before close + reopen, ${again.ok ? shownIds(again.value) : show(again)} after, with nothing changed\n  ${JSON.stringify(lastSeeded.value)}\n  ${again.ok ? JSON.stringify(again.value) : ''}`);
            m.mem = installed(m);
          }
          break;
        }
        case 'consent': {
          const o = await call(op);
          trace.push(`@${rel} setConsent({ personalization: ${op.personalization} }) → ${show(o)}`);
          if (!o.ok) {
            fail('consent', `setConsent rejected: ${show(o)}`);
            break;
          }
          if (m.p && !op.personalization) m = { ...m, p: false, events: [], evicted: false, stored: null, edited: null };
          else if (!m.p && op.personalization) m = { ...m, p: true, events: [], evicted: false, stored: m.mem, edited: null };
          if (m.p) await checkStored();
          break;
        }
        case 'editStored': {
          // Without personalization there is no database to edit (opening one would create it).
          if (!m.p) break;
          const o = await call(op);
          trace.push(`@${rel} edit the stored catalog record (${op.kind}) → ${show(o)}`);
          if (!o.ok) {
            fail('editStored', `could not edit the stored record: ${show(o)}`);
            break;
          }
          if (o.value !== null) [m.stored, m.edited] = [null, o.value as number];
          if (o.value !== null) count('edited');
          break;
        }
        case 'eraseReopen': {
          const o = await call(op);
          trace.push(`@${rel} erase + reopen → ${show(o)}`);
          if (!o.ok) {
            fail('erase', `erase + reopen failed: ${show(o)}`);
            return;
          }
          m = fresh();
          await checkStored();
          break;
        }
        case 'par': {
          const pa = settle(start(sys, op.a));
          if (op.gap > 0) await new Promise((r) => setTimeout(r, op.gap));
          const evs = op.b.op === 'track' ? op.b.events.map((x) => eventOf(x, sys.clock.t)) : [];
          const pb = settle(start(sys, op.b));
          const [oa, ob] = await within(Promise.all([pa, pb]), `together ${label(op.a)} and ${label(op.b)}`);
          typed(oa, label(op.a));
          typed(ob, label(op.b));
          trace.push(`@${rel} together: ${label(op.a)} → ${oa.ok ? shownIds(oa.value) : show(oa)} ‖ ${label(op.b)} → ${show(ob)}`);
          const before: Model = structuredClone(m);
          before.mem = installed(before);
          if (op.b.op === 'track') {
            if (!m.p) {
              if (!(ob.ok && ob.value === 0)) fail('track', `without consent enqueue() must return 0; got ${show(ob)}`);
            } else {
              if (!(ob.ok && ob.value === evs.length)) fail('track', `expected ${evs.length} accepted; got ${show(ob)}`);
              accept(evs);
            }
          } else {
            const i = op.b.which % sys.catalogs.length;
            const want = setOffersExpect(sys, m, i);
            if (want === null ? !ob.ok : !isErr(ob, want[0], want[1] || undefined)) fail('setOffers', `catalog #${i} (together with offers()) must be ${want === null ? 'accepted' : `refused with ${want[0]} naming ${want[1]}`}; got ${show(ob)}`);
            if (ob.ok) {
              m.mem = i;
              if (m.p) [m.stored, m.edited] = [i, null];
            }
          }
          if (!oa.ok) fail('offers', `offers() (together with ${label(op.b)}) rejected: ${show(oa)}`);
          else {
            const vBefore = checkOffers(sys, before, op.a, oa.value);
            const vAfter = checkOffers(sys, m, op.a, oa.value);
            // A reason built with events tracked during the call ([reason-queued], a finding: see the header).
            const queued = (code: string) => (code === 'reason' && op.b.op === 'track' ? 'reason-queued' : code);
            if (vBefore.length && vAfter.length) for (const [code, msg] of vBefore) fail(queued(code), `offers() together with ${label(op.b)} fits neither order: before it: ${msg}; after it: ${vAfter.map(([c, x]) => `[${c}] ${x}`).join('; ')}`);
          }
          m.mem = installed(m);
          break;
        }
        case 'badOffers': {
          const [field] = BAD_OFFERS[op.which];
          const o = await call(op);
          trace.push(`@${rel} bad offers(${op.which}) → ${show(o)}`);
          // An unknown cart-line key ([cart-line-key], a finding: see the header).
          if (!isErr(o, 'ValidationError', field)) fail(op.which === 'cartLineTypo' ? 'cart-line-key' : 'bad-call', `offers(${JSON.stringify(BAD_OFFERS[op.which][1])}) must be a ValidationError naming ${field}; got ${show(o)}`);
          // A call that went through (one not refused, as [cart-line-key]) read the stored catalog, as offers() does.
          if (o.ok) m.mem = installed(m);
          break;
        }
      }
      if (unhandled.length) fail('unhandled', `unhandled rejection(s): ${unhandled.splice(0).map((u) => String((u as Error)?.stack ?? u)).join(' | ')}`);
    }
  } finally {
    if (VERBOSE) console.log(`--- sequence\n    ${trace.join('\n    ')}`);
    await within(sys.engine.erase().catch(() => undefined), 'cleanup erase()').catch(() => undefined);
    if ((await indexedDB.databases()).some((d) => d.name === sys.opts.dbName)) {
      const again = await Engine.create(sys.opts).catch(() => undefined);
      await again?.erase().catch(() => undefined);
    }
  }

  async function checkStored(): Promise<void> {
    const a = await within(sys.engine.audit(), 'audit()');
    const got = a.offers?.version ?? null;
    // audit() reports what the record claims, verified or not.
    const want = m.edited ?? (m.stored === null ? null : sys.catalogs[m.stored]!.version);
    if (got !== want) fail('offers-stored', `audit().offers.version ${got}, the model's stored catalog ${m.edited !== null ? `(edited) v${want}` : m.stored === null ? 'none' : `#${m.stored} v${want}`}`);
  }
}

describe('offers: stateful model-based test (random catalogs, events, clock, reopen, consent)', () => {
  before(async () => {
    process.on('unhandledRejection', onUnhandled);
    keys = await generateOfferKeys();
    otherKeys = await generateOfferKeys();
  });
  after(() => {
    process.off('unhandledRejection', onUnhandled);
  });

  it(`${RUNS} sequences of up to ${MAX_OPS} operations: offers() shows what docs/OFFERS.md allows, and all of it`, { timeout: 30 * 60_000 }, async () => {
    // Every sequence starts by installing one of its catalogs (which may be refused).
    const arb = setupArb.chain((setup) => {
      const n = setup.catalogs.length + (setup.renewal ? 1 : 0);
      const first = fc.integer({ min: 0, max: n - 1 }).map((which): Op => ({ op: 'setOffers', which }));
      return fc.tuple(fc.constant(setup), fc.tuple(first, fc.array(opArb(n), { minLength: Math.min(8, MAX_OPS), maxLength: MAX_OPS, size: 'max' })).map(([f, rest]) => [f, ...rest]));
    });
    await fc.assert(
      fc.asyncProperty(arb, async ([setup, ops]) => runSequence(setup, ops)),
      { numRuns: RUNS, ...(SEED !== undefined ? { seed: SEED } : {}), includeErrorInReport: true, ...(process.env.OFFERS_STATEFUL_NO_SHRINK === '1' ? { endOnFailure: true } : {}) },
    );
    assert.equal(unhandled.length, 0);
    for (const [code, n] of Object.entries(ignored)) console.log(`[${code}] fired ${n} time(s), ignored (OFFERS_STATEFUL_IGNORE)`);
    if (STATS) console.log(`stats: ${JSON.stringify(stats)}`);
  });

  // The findings of the sequences, pinned as plain tests. [replay-ledger] is a `todo` (a failing
  // todo test is reported, not counted as a failure): the limitation is documented, not changed;
  // the sequences count it (ignored by default: OFFERS_STATEFUL_IGNORE).
  const mugItems = [
    { id: 'm1', title: 'Red Mug', category: 'mug', price: 5 },
    { id: 'm2', title: 'Blue Mug', category: 'mug', price: 5 },
  ];
  const mugOffer: Offer = { id: 'mugs', title: '10% off mugs', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'categories', categories: ['mug'] }, hints: { margin: 0.4, typicalSpend: 20 } };

  it('[replay-ledger] a replay counts the impressions before its `now` that retention folded into the ledger', { todo: 'documented limitation (docs/OFFERS.md "Policy"): ledgerAsOf leaves out an offer\'s whole ledger entry when one folded event is after `now`' }, async () => {
    const clock = { t: Date.now() };
    const t0 = clock.t;
    const e = await Engine.create({ catalog: { items: mugItems }, backend: 'cpu', autoTrainEvery: 0, dbName: `offers-replay-ledger-${process.pid}`, retention: { maxEvents: 2 }, now: () => clock.t, offers: { publicKey: keys.publicJwk } });
    try {
      await e.setOffers(await sign(validateOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [{ ...mugOffer, limits: { maxImpressions: 1 } }] }), keys));
      e.enqueue([{ type: 'offer_impression', offerId: 'mugs' }]); // shown once, at t0: the cap is reached
      await e.flush();
      clock.t += 25 * HOUR + 30 * MIN;
      // Shown again a day later (the page ignored the cap), then two views: retention (2 events)
      // folds both impressions into the offer ledger.
      e.enqueue([{ type: 'offer_impression', offerId: 'mugs' }, { type: 'view', itemId: 'm1' }, { type: 'view', itemId: 'm2' }]);
      await e.flush();
      assert.equal((await e.exportData()).events.length, 2, 'retention keeps 2 events: both impressions are in the ledger');
      // A replay as of 1.5 h after t0 (more than a day before the clock): the impression at t0 is
      // before it and counts (docs/OFFERS.md: only "events after it count neither for the rules").
      const now = clock.t - DAY - 1;
      assert.ok(now > t0);
      assert.deepEqual(await e.offers({ k: 1, seed: 1, context: { now } }), [], 'an offer at its impression cap as of the replay time');
    } finally {
      await e.erase();
    }
  });

  it('[cart-line-key] a cart line with an unknown key is refused, naming it, as every other options object', async () => {
    const e = await Engine.create({ catalog: { items: mugItems }, backend: 'cpu', autoTrainEvery: 0, store: new MemoryEventStore(), offers: { publicKey: keys.publicJwk } });
    try {
      await e.setOffers(await sign(validateOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [{ ...mugOffer, minBasket: 10 }] }), keys));
      // `qty` for `quantity`: the cart is worth 5, not 10, and the offer is hidden without a word.
      await assert.rejects(e.offers({ context: { cart: [{ itemId: 'm1', qty: 2 } as never] } }), (err: Error & { field?: string }) => err.name === 'ValidationError' && err.field === 'options.context.cart[0].qty');
    } finally {
      await e.erase();
    }
  });

  it('[reason-queued] the reason cites the most recent in-scope event, also when an older one is tracked while offers() runs', async () => {
    const NOW = Date.now();
    const store = new MemoryEventStore({ maxEvents: 1000, maxAgeDays: 365 });
    const e = await Engine.create({ catalog: { items: mugItems }, backend: 'cpu', autoTrainEvery: 0, store, now: () => NOW, offers: { publicKey: keys.publicJwk } });
    try {
      // A catalog with an affinity snapshot: offers() reads the events straight away (no model to refresh).
      await e.setOffers(await sign(validateOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [mugOffer], affinity: { features: ['popularity'], weights: [0, 1], offers: {} } }), keys));
      e.enqueue([{ type: 'purchase', itemId: 'm1', t: NOW }]);
      // The page tracks an add to cart of a minute ago while offers() writes the purchase (here: as
      // soon as the store has taken it, which a real page cannot time but may hit).
      const add = store.add.bind(store);
      let late = true;
      store.add = async (events) => {
        const r = await add(events);
        if (late) e.enqueue([{ type: 'add_to_cart', itemId: 'm2', t: NOW - MIN }]);
        late = false;
        return r;
      };
      const during = await e.offers({ k: 1, seed: 1, exploration: 0 });
      const after = await e.offers({ k: 1, seed: 1, exploration: 0 });
      assert.equal(after[0]?.reason, 'Because you bought Red Mug', 'the same state, the queue written');
      assert.equal(during[0]?.reason, 'Because you bought Red Mug', 'the purchase (now) is more recent than the add to cart (a minute ago)');
    } finally {
      await e.erase();
    }
  });
});
