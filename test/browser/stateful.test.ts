/**
 * Stateful, model-based property test of the page API (`createRecommender`) through the real
 * worker, in Chromium: every call crosses comlink (structured clone of arguments and results,
 * errors revived on the page, transfer of a neighbour file's bytes), and the worker stores in real
 * IndexedDB. The in-process Engine has its own stateful test (test/unit/engine-stateful.test.ts);
 * this one is about the boundary and what only a browser has: the page's own checks and consent
 * gate, calls in flight when close()/erase() begins, a second page-side instance on the same
 * database (same page, or a second tab of the same profile), and reloading the page.
 *
 * fast-check generates sequences of operations — events of every kind, valid and invalid (some
 * invalid only on the page: a Symbol, a Date, a BigInt, a function, a field inherited from a
 * prototype; some valid in odd clothes: a Proxy, a key set to undefined), bursts, recommend,
 * similar, train (tiny: `dim` 8, 1–2 epochs, the cpu backend; an onProgress that records, throws
 * or never settles; a signal fired at the first step), stats/audit/egressLog/export, setConsent
 * (valid and not), setOffers/offers, setNeighbors (a Uint8Array or DataView into a larger buffer,
 * or a whole ArrayBuffer), calls whose options cannot be cloned, erase, close, close (or erase)
 * and create again (awaited, overlapping, or a storm of them), a second instance on the same
 * dbName (same page, or a second tab of the same profile), a reload (with views tracked and not
 * flushed), two or three calls on one instance started without awaiting the earlier ones, and a
 * call on each instance at once — with retention.maxEvents 5000 or 20, autoTrainEvery 0 or 3. Each
 * sequence runs in a fresh browser context (its own IndexedDB). After every step it compares what
 * the API reports (stats(), audit(), indexedDB.databases()) with a small model:
 *
 *  - every accepted event is stored (by type) until an erase or a withdrawal of personalization,
 *    across close(), a new instance and a reload, within retention.maxEvents (oldest first), and is
 *    seen by the other instance on the same database;
 *  - an invalid event throws a ValidationError (instanceof the page's class, `isValidationError`)
 *    whose `field` names the bad field and whose message starts with it; it is counted in
 *    stats().dropped, and an event tracked without consent in audit().consent.droppedBeforeConsent
 *    too;
 *  - every rejection is a localrec error of the documented class, rebuilt on the page (instanceof
 *    and the guard hold), with `field` for a ValidationError and `problem` for a SignatureError;
 *  - an argument the browser cannot copy to the worker is a ValidationError naming it;
 *  - after close() or erase() every call rejects (track() throws) with a ClosedError; calls made
 *    before it get their answers (a train() may be stopped: AbortError); calls keep the order the
 *    page made them in (a call after a track sees the event; after a consent change, the change);
 *  - after erase() or a withdrawal of personalization nothing is stored, and indexedDB.databases()
 *    no longer lists the database while no instance with consent is open;
 *  - recommend()/similar() return catalog items only, each once, at most k, honouring category,
 *    candidates and exclude (never an item the shopper surely saw with exclude 'seen');
 *  - consent in force is what the model says, in every open instance (a change in one reaches the
 *    other; a new instance without a host decision follows a live instance's decision from the
 *    start), across a new instance (a federated withdrawal is remembered), and the consent
 *    history's last record is the consent in force;
 *  - train() resolves after the page heard its last progress report, whatever the callback does;
 *  - the egress log stays empty (no server, no neighbour URL: nothing may leave the page);
 *  - export() is JSON-ready, oldest first, and lists exactly the stored events;
 *  - setNeighbors() leaves the caller's buffer whole (it is copied, never detached);
 *  - no page error, no unhandled rejection in the page or the worker, no console error, and no
 *    call takes longer than OP_TIMEOUT_MS (a hang).
 *
 * Findings (stop 38), each fixed and pinned by a test of its own below (and a violation code of
 * its own, so that a long run can look past a new one with BROWSER_STATEFUL_IGNORE):
 *  - [start-consent] a new instance started while a live one holds a withdrawal of
 *    personalization followed the default (stored events) until that one's answer arrived; now it
 *    reads the live withdrawal from the browser's lock manager before opening the database;
 *  - [grant-order] calls made right after setConsent({ personalization: true }) overtook the
 *    grant; now they wait for it on the page;
 *  - [offers-stored] an instance that wrote the database anew after another's page-side erase
 *    read it as empty (audit() said no catalog while one was stored) until its next write; now
 *    what it wrote goes with the erase;
 *  - [deleted-window] after erase() resolved in one instance, the other could refuse its next
 *    call with a StorageError "was deleted"; now the call waits until the erase is handled;
 *  - [consent-history] with two host answers in two tabs, a tab's consent history ended with a
 *    record that was not its consent in force; now a tab without a decision of its own follows
 *    the stored one, as a page load would.
 *
 * Env: BROWSER_STATEFUL_RUNS (default 8 under CI, 12 elsewhere), BROWSER_STATEFUL_MAX_OPS
 * (default 14), BROWSER_STATEFUL_SEED (fixed at 7 under CI), BROWSER_STATEFUL_VERBOSE=1 (print
 * every sequence), BROWSER_STATEFUL_NO_SHRINK=1 (always off under CI: one browser sequence is
 * seconds), BROWSER_STATEFUL_IGNORE (comma-separated violation codes logged instead of failing),
 * BROWSER_STATEFUL_PATH (with the seed: replays the counterexample fast-check printed),
 * BROWSER_STATEFUL_OP_TIMEOUT_MS (20000), BROWSER_STATEFUL_SETTLE_MS (10000: how long the other
 * instance may take to hear of a change).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { encodeNeighborTable } from '../../src/model/neighbors-wire.js';
import { generateOfferKeys, signOfferCatalog } from '../../src/offers/signing.js';
import type { OfferCatalog } from '../../src/offers/types.js';
import { launch, serveRepo, type StaticServer } from './harness.js';
import { CATEGORY, checkRecs, hangGuard, IDS, ITEMS, surelySeen } from '../stateful-helpers.js';

const env = process.env;
const RUNS = Number(env.BROWSER_STATEFUL_RUNS ?? (env.CI ? 8 : 12));
const MAX_OPS = Number(env.BROWSER_STATEFUL_MAX_OPS ?? 14);
const SEED = env.BROWSER_STATEFUL_SEED !== undefined ? Number(env.BROWSER_STATEFUL_SEED) : env.CI ? 7 : undefined;
/** Replays one counterexample: the `path` fast-check printed with its seed. */
const PATH = env.BROWSER_STATEFUL_PATH;
const IGNORE = new Set((env.BROWSER_STATEFUL_IGNORE ?? '').split(',').filter(Boolean).map((c) => `[${c.replace(/^\[|\]$/g, '')}]`));
const OP_TIMEOUT_MS = Number(env.BROWSER_STATEFUL_OP_TIMEOUT_MS ?? 20_000);
const SETTLE_MS = Number(env.BROWSER_STATEFUL_SETTLE_MS ?? 10_000);
const VERBOSE = env.BROWSER_STATEFUL_VERBOSE === '1';
const NO_SHRINK = env.BROWSER_STATEFUL_NO_SHRINK === '1' || !!env.CI;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const DB = 'stateful';

// ---------------------------------------------------------------------------------------------
// Fixtures: a tiny catalog (two categories), two signed offer catalogs (v1, v2), neighbour files.

const LONG_ID = 'L'.repeat(256);

const offer = (id: string, scope: OfferCatalog['offers'][number]['scope']): OfferCatalog['offers'][number] => ({
  id,
  title: `10% off ${id}`,
  discount: { kind: 'percent', percent: 10 },
  scope,
  hints: { margin: 0.4, typicalSpend: 20 },
});
const OFFER_CATALOGS: Record<'A' | 'B', OfferCatalog> = {
  A: { version: 1, issuedAt: 1_000, currency: 'GBP', offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }), offer('bags', { kind: 'categories', categories: ['bag'] })] },
  B: { version: 2, issuedAt: 2_000, currency: 'GBP', offers: [offer('p0only', { kind: 'items', itemIds: ['p0'] }), offer('mugs', { kind: 'categories', categories: ['mug'] })] },
};
const OFFER_IDS = { A: new Set(['mugs', 'bags']), B: new Set(['p0only', 'mugs']) };
const VERSION = { A: 1, B: 2 } as const;
type OfferWhich = 'A' | 'B';

/** A neighbour table over `ids`: each item's next two (ring), weights 0.5 and 0.25. */
function neighborFile(ids: string[]): number[] {
  const n = ids.length;
  const width = 2;
  const index = new Int32Array(n * width);
  const weight = new Float32Array(n * width);
  for (let i = 0; i < n; i++) {
    index[i * width] = (i + 1) % n;
    index[i * width + 1] = (i + 2) % n;
    weight[i * width] = 0.5;
    weight[i * width + 1] = 0.25;
  }
  return [...encodeNeighborTable({ itemIds: ids, width, index, weight })];
}

interface Ctx {
  items: typeof ITEMS;
  signed: Record<'A' | 'B' | 'tampered', unknown>;
  publicKey: JsonWebKey;
  nb: { full: number[]; foreign: number[]; garbage: number[] };
}
let ctx: Ctx;

// ---------------------------------------------------------------------------------------------
// Operations, as plain data (fast-check prints and shrinks them).

type Who = 'A' | 'O';
type EvType = 'view' | 'add_to_cart' | 'remove_from_cart' | 'purchase' | 'rating' | 'search' | 'offer_impression' | 'offer_redeemed';
type ValidSpec = { type: EvType; item?: string; query?: string; quantity?: number; price?: number; value?: number; offerId?: string; ago?: number };
/** Invalid events, and the field the ValidationError must name. Some are invalid only on the page (values a worker could not receive). */
const BAD = {
  type: 'event.type',
  noItem: 'event.itemId',
  longItem: 'event.itemId',
  numItem: 'event.itemId',
  symbolItem: 'event.itemId',
  protoItem: 'event.itemId',
  blankQuery: 'event.query',
  negQty: 'event.quantity',
  bigintQty: 'event.quantity',
  rating7: 'event.value',
  typoField: 'event.itemID',
  fnField: 'event.onClick',
  null: 'event',
  array: 'event',
  future: 'event.t',
  tooOld: 'event.t',
  dateT: 'event.t',
  nanPrice: 'event.price',
  emptyOffer: 'event.offerId',
} as const;
type BadKind = keyof typeof BAD;
/** Valid events in unusual clothes: a Proxy (a reactive store's object), a key set to undefined. */
type OddKind = 'proxyView' | 'undefinedKey';
type Spec = { v: ValidSpec } | { bad: BadKind } | { odd: OddKind; item: string };

const BAD_CALLS = {
  recommendK0: { kind: 'ValidationError', field: 'options.k' },
  recommendTypo: { kind: 'ValidationError', field: 'options.kk' },
  recommendExclude: { kind: 'ValidationError', field: 'options.exclude' },
  recommendCandidates: { kind: 'ValidationError', field: 'options.candidates' },
  recommendDateK: { kind: 'ValidationError', field: 'options.k' },
  recommendSymbol: { kind: 'ValidationError', field: 'options' },
  recommendFn: { kind: 'ValidationError', field: 'options' },
  recommendProxy: { kind: 'ValidationError', field: 'options' },
  recommendNull: { kind: 'ValidationError', field: 'options' },
  similarUnknown: { kind: 'ValidationError', field: 'itemId' },
  similarSymbol: { kind: 'ValidationError', field: 'itemId or options' },
  similarNumber: { kind: 'ValidationError', field: 'itemId' },
  similarK0: { kind: 'ValidationError', field: 'options.k' },
  trainEpochs0: { kind: 'ValidationError', field: 'options.epochs' },
  trainTypo: { kind: 'ValidationError', field: 'options.epoch' },
  trainProgress: { kind: 'ValidationError', field: 'options.onProgress' },
  trainSignal: { kind: 'ValidationError', field: 'options.signal' },
  trainAborted: { kind: 'AbortError' },
  consentString: { kind: 'ValidationError', field: 'consent.personalization' },
  consentTypo: { kind: 'ValidationError', field: 'consent.perso' },
  consentFn: { kind: 'ValidationError', field: 'consent' },
  consentNull: { kind: 'ValidationError', field: 'consent' },
  offersK0: { kind: 'ValidationError', field: 'options.k' },
  offersContext: { kind: 'ValidationError', field: 'options.context.pag' },
  setOffersFn: { kind: 'ValidationError', field: 'catalog' },
  setNeighborsString: { kind: 'ValidationError', field: 'neighbors' },
} as const;
type BadCall = keyof typeof BAD_CALLS;

type Progress = 'none' | 'collect' | 'throw' | 'hang';
const progressArb = fc.constantFrom<Progress>('none', 'collect', 'collect', 'throw', 'hang');
type HostConsent = 'default' | 'granted' | 'required' | { personalization: boolean; federated: boolean };

type Op =
  | { op: 'track'; who: Who; events: Spec[] }
  | { op: 'burst'; who: Who; n: number }
  | { op: 'flush'; who: Who }
  | { op: 'recommend'; who: Who; k?: number; exclude?: 'seen' | 'purchased' | 'none' | string[]; category?: string; candidates?: string[] }
  | { op: 'similar'; who: Who; item: string; k?: number; exclude?: 'seen' | 'none' | string[] }
  /** `progress`: an onProgress that records, throws, or returns a promise that never settles; `abort`: its signal fires at the first step. */
  | { op: 'train'; who: Who; epochs: number; progress: Progress; abort?: boolean }
  | { op: 'setOffers'; who: Who; which: OfferWhich | 'tampered' | 'garbage' }
  | { op: 'offers'; who: Who; k: number }
  | { op: 'setNeighbors'; who: Who; which: 'full' | 'foreign' | 'garbage'; as: 'view' | 'dataview' | 'buffer' }
  | { op: 'consent'; who: Who; personalization?: boolean; federated?: boolean }
  | { op: 'read'; who: Who; what: 'export' | 'egress' | 'audit' | 'stats' }
  | { op: 'bad'; who: Who; which: BadCall }
  | { op: 'erase'; who: Who }
  | { op: 'close'; who: Who }
  /**
   * close() then createRecommender() on the same dbName; `overlap`: the create starts before the
   * close has ended (a remount); `erase`: erase() instead of close() (an "erase my data" button
   * whose page mounts the SDK again at once).
   */
  | { op: 'reopen'; who: Who; consent: HostConsent; overlap: boolean; erase?: boolean }
  /** A second instance on the same dbName: in the same page, or in a second tab of the same profile. */
  | { op: 'openOther'; where: 'page' | 'tab' }
  /** Reloads the first page (its instances end without close()), then creates A again; `dirty` views are tracked just before, not flushed. */
  | { op: 'reload'; dirty: number; consent: HostConsent }
  /** Two or three calls started on the same instance without awaiting the earlier ones; each after `gaps[i]` ms. */
  | { op: 'par'; who: Who; calls: Op[]; gaps: number[] }
  /** `a` on the first instance and `b` on the second, started together (in one page, or in two tabs). */
  | { op: 'par2'; a: Op; b: Op; gap: number }
  /** `n` times close() and a new instance at once, each create starting before the last close ended (a remount storm). */
  | { op: 'storm'; who: Who; n: number };

const whoArb = fc.constantFrom<Who>('A', 'A', 'A', 'O');
const itemArb = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...IDS) }, { weight: 1, arbitrary: fc.constantFrom('ghost-1', LONG_ID) });
const validArb: fc.Arbitrary<ValidSpec> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ type: fc.constant('view' as const), item: itemArb }) },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('purchase' as const), item: itemArb, quantity: fc.integer({ min: 1, max: 5 }), price: fc.constantFrom(0, 4.5, 12) }) },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('add_to_cart' as const), item: itemArb }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('remove_from_cart' as const), item: itemArb }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('rating' as const), item: itemArb, value: fc.constantFrom(0, 2.5, 5) }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('search' as const), query: fc.constantFrom('mug', '  red mug  ', 'é✓ 漢字 \u{1F600}', 'x'.repeat(512)) }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('search' as const), query: fc.constant('bag'), item: itemArb }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constantFrom('offer_impression' as const, 'offer_redeemed' as const), offerId: fc.constantFrom('mugs', 'bags', 'nope') }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('view' as const), item: itemArb, ago: fc.constantFrom(HOUR, 30 * DAY, -HOUR) }) },
);
const specArb: fc.Arbitrary<Spec> = fc.oneof(
  { weight: 8, arbitrary: validArb.map((v) => ({ v })) },
  { weight: 2, arbitrary: fc.constantFrom(...(Object.keys(BAD) as BadKind[])).map((bad) => ({ bad })) },
  { weight: 1, arbitrary: fc.record({ odd: fc.constantFrom<OddKind>('proxyView', 'undefinedKey'), item: fc.constantFrom(...IDS) }) },
);
const recommendArb = (who: fc.Arbitrary<Who>): fc.Arbitrary<Op> =>
  fc.record(
    {
      op: fc.constant('recommend' as const),
      who,
      k: fc.integer({ min: 1, max: 15 }),
      exclude: fc.oneof(fc.constantFrom('seen' as const, 'purchased' as const, 'none' as const), fc.array(itemArb, { maxLength: 3 })),
      category: fc.constantFrom('mug', 'bag', 'lamp'),
      candidates: fc.array(fc.oneof(itemArb, fc.constant('p3')), { maxLength: 6 }),
    },
    { requiredKeys: ['op', 'who'] },
  );
const consentArb = (who: fc.Arbitrary<Who>): fc.Arbitrary<Op> =>
  fc.record({ op: fc.constant('consent' as const), who, personalization: fc.boolean(), federated: fc.boolean() }, { requiredKeys: ['op', 'who'] });
const hostConsentArb: fc.Arbitrary<HostConsent> = fc.oneof(
  { weight: 4, arbitrary: fc.constant('default' as const) },
  { weight: 1, arbitrary: fc.constantFrom('granted' as const, 'required' as const) },
  { weight: 1, arbitrary: fc.record({ personalization: fc.boolean(), federated: fc.boolean() }) },
);
const trackArb = (who: fc.Arbitrary<Who>, spec: fc.Arbitrary<Spec>): fc.Arbitrary<Op> => fc.record({ op: fc.constant('track' as const), who, events: fc.array(spec, { minLength: 1, maxLength: 5 }) });

/** Operations that may be started together on one instance. */
const parMemberArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: trackArb(fc.constant('A'), validArb.map((v) => ({ v }) as Spec)) },
  { weight: 1, arbitrary: fc.constant({ op: 'flush' as const, who: 'A' as const }) },
  { weight: 2, arbitrary: recommendArb(fc.constant('A')) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('train' as const), who: fc.constant('A' as const), epochs: fc.integer({ min: 1, max: 2 }), progress: progressArb, abort: fc.boolean() }, { requiredKeys: ['op', 'who', 'epochs', 'progress'] }) },
  { weight: 2, arbitrary: consentArb(fc.constant('A')) },
  { weight: 2, arbitrary: fc.constant({ op: 'erase' as const, who: 'A' as const }) },
  { weight: 2, arbitrary: fc.constant({ op: 'close' as const, who: 'A' as const }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setOffers' as const), who: fc.constant('A' as const), which: fc.constantFrom<OfferWhich>('A', 'B') }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('offers' as const), who: fc.constant('A' as const), k: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('read' as const), who: fc.constant('A' as const), what: fc.constantFrom('export' as const, 'stats' as const, 'audit' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setNeighbors' as const), who: fc.constant('A' as const), which: fc.constant('full' as const), as: fc.constantFrom('view' as const, 'buffer' as const) }) },
);

/** Operations of the second instance while the first does something else. */
const otherMemberArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: trackArb(fc.constant('O'), validArb.map((v) => ({ v }) as Spec)) },
  { weight: 1, arbitrary: fc.constant({ op: 'flush' as const, who: 'O' as const }) },
  { weight: 2, arbitrary: recommendArb(fc.constant('O')) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('train' as const), who: fc.constant('O' as const), epochs: fc.integer({ min: 1, max: 2 }), progress: progressArb, abort: fc.boolean() }, { requiredKeys: ['op', 'who', 'epochs', 'progress'] }) },
  { weight: 2, arbitrary: consentArb(fc.constant('O')) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('read' as const), who: fc.constant('O' as const), what: fc.constantFrom('export' as const, 'stats' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setOffers' as const), who: fc.constant('O' as const), which: fc.constantFrom<OfferWhich>('A', 'B') }) },
  { weight: 1, arbitrary: fc.constant({ op: 'close' as const, who: 'O' as const }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('openOther' as const), where: fc.constantFrom('page' as const, 'tab' as const) }) },
);

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: trackArb(whoArb, specArb) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('burst' as const), who: whoArb, n: fc.constantFrom(40, 150) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('flush' as const), who: whoArb }) },
  { weight: 3, arbitrary: recommendArb(whoArb) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('similar' as const), who: whoArb, item: fc.constantFrom(...IDS), k: fc.integer({ min: 1, max: 12 }), exclude: fc.oneof(fc.constantFrom('seen' as const, 'none' as const), fc.array(fc.constantFrom(...IDS), { maxLength: 3 })) }, { requiredKeys: ['op', 'who', 'item'] }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('train' as const), who: whoArb, epochs: fc.integer({ min: 1, max: 2 }), progress: progressArb, abort: fc.boolean() }, { requiredKeys: ['op', 'who', 'epochs', 'progress'] }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('setOffers' as const), who: whoArb, which: fc.constantFrom('A' as const, 'B' as const, 'tampered' as const, 'garbage' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('offers' as const), who: whoArb, k: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setNeighbors' as const), who: whoArb, which: fc.constantFrom('full' as const, 'full' as const, 'foreign' as const, 'garbage' as const), as: fc.constantFrom('view' as const, 'dataview' as const, 'buffer' as const) }) },
  { weight: 3, arbitrary: consentArb(whoArb) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('read' as const), who: whoArb, what: fc.constantFrom('export' as const, 'egress' as const, 'audit' as const) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('bad' as const), who: whoArb, which: fc.constantFrom(...(Object.keys(BAD_CALLS) as BadCall[])) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('erase' as const), who: whoArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('close' as const), who: whoArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('reopen' as const), who: whoArb, consent: hostConsentArb, overlap: fc.boolean(), erase: fc.boolean() }, { requiredKeys: ['op', 'who', 'consent', 'overlap'] }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('openOther' as const), where: fc.constantFrom('page' as const, 'tab' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('reload' as const), dirty: fc.constantFrom(0, 0, 3), consent: hostConsentArb }) },
  { weight: 5, arbitrary: fc.record({ op: fc.constant('par' as const), who: fc.constant('A' as const), calls: fc.array(parMemberArb, { minLength: 2, maxLength: 3 }), gaps: fc.array(fc.constantFrom(0, 0, 1, 5, 30), { minLength: 2, maxLength: 2 }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('par2' as const), a: parMemberArb, b: otherMemberArb, gap: fc.constantFrom(0, 0, 5, 30) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('storm' as const), who: whoArb, n: fc.constantFrom(2, 3) }) },
);

// ---------------------------------------------------------------------------------------------
// The page side: a driver installed in every page (and again after a reload), which runs one
// operation on a named instance and answers with plain data: results summarized, errors as their
// name, message, field, problem, and whether they are instances of the page's classes.

/** Runs in the page (its source is injected with addInitScript): self-contained, no outer names. */
function pageDriver(): void {
  const w = window as any;
  if (w.__st) return;
  const S: any = { recs: {} as Record<string, any>, problems: [] as string[] };
  w.__st = S;
  const describeReason = (r: any) => String(r?.stack ?? r?.message ?? r);
  addEventListener('unhandledrejection', (e: any) => S.problems.push(`unhandled rejection in the page: ${describeReason(e.reason)}`));
  const L = () => w.localrec;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const encErr = (e: any) => {
    const lib = L();
    const name = typeof e?.name === 'string' ? e.name : typeof e;
    const cls = lib && typeof lib[name] === 'function' ? lib[name] : undefined;
    const guard = lib && typeof lib[`is${name}`] === 'function' ? lib[`is${name}`](e) : false;
    return {
      name,
      message: String(e?.message ?? e),
      field: e?.field,
      problem: e?.problem,
      instance: !!cls && e instanceof cls,
      localrec: !!lib?.isLocalrecError?.(e),
      guard,
      stack: String(e?.stack ?? '').split('\n').slice(0, 6).join(' | '),
    };
  };
  const settle = (p: Promise<any>, map: (v: any) => any = (v) => v) =>
    p.then(
      (v) => ({ ok: true, value: map(v) }),
      (e) => ({ ok: false, err: encErr(e) }),
    );
  const now = () => Date.now();
  const mkEvent = (s: any): any => {
    if (s.v) {
      const v = s.v;
      const e: any = { type: v.type };
      if (v.item !== undefined) e.itemId = v.item;
      if (v.query !== undefined) e.query = v.query;
      if (v.quantity !== undefined) e.quantity = v.quantity;
      if (v.price !== undefined) e.price = v.price;
      if (v.value !== undefined) e.value = v.value;
      if (v.offerId !== undefined) e.offerId = v.offerId;
      if (v.ago !== undefined) e.t = now() - v.ago;
      return e;
    }
    if (s.odd === 'proxyView') return new Proxy({ type: 'view', itemId: s.item }, {});
    if (s.odd === 'undefinedKey') return { type: 'view', itemId: s.item, query: undefined, t: undefined };
    switch (s.bad) {
      case 'type': return { type: 'VIEW', itemId: 'p1' };
      case 'noItem': return { type: 'view' };
      case 'longItem': return { type: 'view', itemId: 'x'.repeat(100_000) };
      case 'numItem': return { type: 'view', itemId: 7 };
      case 'symbolItem': return { type: 'view', itemId: Symbol('p1') };
      case 'protoItem': { const e = Object.create({ itemId: 'p1' }); e.type = 'view'; return e; }
      case 'blankQuery': return { type: 'search', query: '   \n ' };
      case 'negQty': return { type: 'purchase', itemId: 'p2', quantity: -2 };
      case 'bigintQty': return { type: 'purchase', itemId: 'p2', quantity: BigInt(2) };
      case 'rating7': return { type: 'rating', itemId: 'p2', value: 7 };
      case 'typoField': return { type: 'view', itemID: 'p1' };
      case 'fnField': return { type: 'view', itemId: 'p1', onClick() {} };
      case 'null': return null;
      case 'array': return ['view', 'p1'];
      case 'future': return { type: 'view', itemId: 'p1', t: now() + 2 * 86_400_000 };
      case 'tooOld': return { type: 'view', itemId: 'p1', t: now() - 400 * 86_400_000 };
      case 'dateT': return { type: 'view', itemId: 'p1', t: new Date() };
      case 'nanPrice': return { type: 'purchase', itemId: 'p1', price: Number.NaN };
      case 'emptyOffer': return { type: 'offer_impression', offerId: '' };
    }
    throw new Error(`unknown spec ${JSON.stringify(s)}`);
  };
  /** Whether `v` comes back the same through JSON (what "JSON-ready" promises). */
  const jsonReady = (v: any): string | null => {
    const walk = (x: any, path: string): string | null => {
      if (x === null || typeof x === 'string' || typeof x === 'boolean') return null;
      if (typeof x === 'number') return Number.isFinite(x) ? null : `${path} is ${x}`;
      if (x === undefined) return null; // dropped by JSON, as an absent key
      if (typeof x !== 'object') return `${path} is a ${typeof x}`;
      if (Array.isArray(x)) {
        for (let i = 0; i < x.length; i++) {
          if (x[i] === undefined) return `${path}[${i}] is undefined`;
          const r = walk(x[i], `${path}[${i}]`);
          if (r) return r;
        }
        return null;
      }
      const proto = Object.getPrototypeOf(x);
      if (proto !== Object.prototype && proto !== null) return `${path} is a ${x.constructor?.name ?? 'non-plain object'}`;
      for (const k of Object.keys(x)) {
        const r = walk(x[k], `${path}.${k}`);
        if (r) return r;
      }
      return null;
    };
    return walk(v, 'export()');
  };
  const neighborBytes = (ctx: any, which: string) => Uint8Array.from(ctx.nb[which]);
  /** Starts one operation on instance `name`; a synchronous throw (track) is part of the outcome. */
  S.start = (name: string, op: any, ctx: any): Promise<any> => {
    const rec = S.recs[name];
    if (!rec) return Promise.resolve({ absent: true });
    try {
      switch (op.op) {
        case 'track': {
          const out = op.events.map((s: any) => {
            try {
              rec.track(mkEvent(s));
              return { ok: true };
            } catch (e) {
              return { ok: false, err: encErr(e) };
            }
          });
          return Promise.resolve({ ok: true, value: out });
        }
        case 'burst': {
          const out: any[] = [];
          for (let i = 0; i < op.n; i++) {
            try {
              rec.track({ type: 'view', itemId: `p${i % 12}` });
              out.push({ ok: true });
            } catch (e) {
              out.push({ ok: false, err: encErr(e) });
            }
          }
          return Promise.resolve({ ok: true, value: out });
        }
        case 'flush': return settle(rec.flush());
        case 'recommend': {
          const { op: _o, who: _w, ...o } = op;
          return settle(rec.recommend(o));
        }
        case 'similar': {
          const o: any = {};
          if (op.k !== undefined) o.k = op.k;
          if (op.exclude !== undefined) o.exclude = op.exclude;
          return settle(rec.similar(op.item, o));
        }
        case 'train': {
          const heard: any[] = [];
          const o: any = { epochs: op.epochs };
          const abort = op.abort ? new AbortController() : undefined;
          if (abort) o.signal = abort.signal;
          if (op.progress !== 'none' || abort) {
            o.onProgress = (p: any) => {
              heard.push({ phase: p.phase, done: p.done, total: p.total });
              if (p.phase === 'training') abort?.abort();
              if (op.progress === 'throw') throw new Error('a page callback that throws');
              if (op.progress === 'hang') return new Promise(() => undefined);
              return undefined;
            };
          }
          return settle(rec.train(o), (r: any) => ({ steps: r.steps, backend: r.backend, heard }));
        }
        case 'setOffers': return settle(rec.setOffers(op.which === 'garbage' ? { hello: 'world' } : ctx.signed[op.which]), (r: any) => ({ offers: r.offers }));
        case 'offers': return settle(rec.offers({ k: op.k, seed: 1 }), (r: any[]) => r.map((x) => x.offerId));
        case 'setNeighbors': {
          const bytes = neighborBytes(ctx, op.which);
          if (op.as === 'view' || op.as === 'dataview') {
            // A view into a larger buffer: only its bytes are the file, and the caller's buffer stays whole.
            const buf = new ArrayBuffer(bytes.length + 16);
            const whole = new Uint8Array(buf);
            whole.fill(0xee);
            whole.set(bytes, 8);
            const view = op.as === 'view' ? new Uint8Array(buf, 8, bytes.length) : new DataView(buf, 8, bytes.length);
            return settle(rec.setNeighbors(view), (r: any) => r).then((o: any) => ({ ...o, kept: buf.byteLength === bytes.length + 16 && view.byteLength === bytes.length && whole[8] === bytes[0] && whole[0] === 0xee }));
          }
          const buf = bytes.buffer.slice(0);
          return settle(rec.setNeighbors(buf), (r: any) => r).then((o: any) => ({ ...o, kept: buf.byteLength === bytes.length }));
        }
        case 'consent': {
          const c: any = {};
          if (op.personalization !== undefined) c.personalization = op.personalization;
          if (op.federated !== undefined) c.federated = op.federated;
          return settle(rec.setConsent(c), () => null);
        }
        case 'read':
          if (op.what === 'export') {
            return settle(rec.export(), (x: any) => ({
              format: x.format,
              schema: x.schema,
              notJson: jsonReady(x),
              events: x.events.map((e: any) => ({ type: e.type, ...(e.itemId !== undefined ? { item: e.itemId } : {}) })),
              ordered: x.events.every((e: any, i: number) => i === 0 || x.events[i - 1].t <= e.t),
              lastConsent: x.consentHistory.length ? { p: x.consentHistory.at(-1).personalization, f: x.consentHistory.at(-1).federated } : null,
              egress: x.egressLog.length,
            }));
          }
          if (op.what === 'egress') return settle(rec.egressLog(), (x: any) => ({ isArray: Array.isArray(x), length: x.length }));
          if (op.what === 'audit') return settle(rec.audit(), (x: any) => ({ schema: x.schema, total: x.events.total }));
          return settle(rec.stats(), (x: any) => ({ total: x.events.total }));
        case 'bad': {
          const calls: Record<string, () => any> = {
            recommendK0: () => rec.recommend({ k: 0 }),
            recommendTypo: () => rec.recommend({ kk: 1 }),
            recommendExclude: () => rec.recommend({ exclude: 'everything' }),
            recommendCandidates: () => rec.recommend({ candidates: 'p1' }),
            recommendDateK: () => rec.recommend({ k: new Date() }),
            recommendSymbol: () => rec.recommend({ exclude: ['p1', Symbol('p2')] }),
            recommendFn: () => rec.recommend({ k: 2, category: () => 'mug' }),
            recommendProxy: () => rec.recommend({ candidates: new Proxy(['p1', 'p2'], {}) }),
            recommendNull: () => rec.recommend(null),
            similarUnknown: () => rec.similar('ghost-1'),
            similarSymbol: () => rec.similar(Symbol('p1')),
            similarNumber: () => rec.similar(3),
            similarK0: () => rec.similar('p1', { k: 0 }),
            trainEpochs0: () => rec.train({ epochs: 0 }),
            trainTypo: () => rec.train({ epoch: 2 }),
            trainProgress: () => rec.train({ onProgress: 'yes' }),
            trainSignal: () => rec.train({ signal: {} }),
            trainAborted: () => rec.train({ epochs: 1, signal: AbortSignal.abort() }),
            consentString: () => rec.setConsent({ personalization: 'yes' }),
            consentTypo: () => rec.setConsent({ perso: true }),
            consentFn: () => rec.setConsent({ personalization: true, federated: () => false }),
            consentNull: () => rec.setConsent(null),
            offersK0: () => rec.offers({ k: 0 }),
            offersContext: () => rec.offers({ context: { pag: 'product' } }),
            setOffersFn: () => rec.setOffers({ catalog: {}, sign() {} }),
            setNeighborsString: () => rec.setNeighbors('LRN1'),
          };
          return settle(Promise.resolve().then(calls[op.which]!));
        }
        case 'erase': return settle(rec.erase(), () => null);
        case 'close': return settle(rec.close(), () => null);
      }
      return Promise.resolve({ ok: false, err: { name: 'DriverError', message: `unknown op ${op.op}` } });
    } catch (e) {
      return Promise.resolve({ ok: false, err: encErr(e), threw: true });
    }
  };
  S.create = (name: string, opts: any) =>
    settle(
      L().createRecommender(opts).then((rec: any) => {
        S.recs[name] = rec;
      }),
      () => null,
    );
  S.run = (name: string, op: any, ctx: any) => S.start(name, op, ctx);
  S.par = async (name: string, calls: any[], gaps: number[], ctx: any) => {
    const started: Promise<any>[] = [];
    for (const [i, c] of calls.entries()) {
      if (i > 0 && gaps[i - 1]! > 0) await sleep(gaps[i - 1]!);
      started.push(S.start(name, c, ctx));
    }
    return Promise.all(started);
  };
  /** close() (awaited or not) then a new instance on the same name. */
  S.reopen = async (name: string, opts: any, overlap: boolean, erase: boolean) => {
    const old = S.recs[name];
    delete S.recs[name];
    const end = () => (old ? settle(erase ? old.erase() : old.close(), () => null) : { ok: true, value: null });
    if (overlap) {
      const [closed, created] = await Promise.all([end(), S.create(name, opts)]);
      return { closed, created };
    }
    const closed = await end();
    return { closed, created: await S.create(name, opts) };
  };
  /** `n` times: close() the instance, and at once (not waiting for the close) create a new one. */
  S.storm = async (name: string, opts: any, n: number) => {
    const closes: Promise<any>[] = [];
    let created: any = { ok: true, value: null };
    for (let i = 0; i < n; i++) {
      const old = S.recs[name];
      delete S.recs[name];
      if (old) closes.push(settle(old.close(), () => null));
      created = await S.create(name, opts);
      if (!created.ok) break;
    }
    const all = await Promise.all(closes);
    return { closed: all.find((c: any) => !c.ok) ?? { ok: true, value: null }, created };
  };
  /** Tracks `n` views on `name` and does not wait for anything (the page is about to go away). */
  S.trackDirty = (name: string, n: number) => {
    const rec = S.recs[name];
    for (let i = 0; i < n; i++) rec?.track({ type: 'view', itemId: `p${(i * 5) % 12}` });
  };
  /** What the public API says of instance `name` now. */
  S.observe = async (name: string) => {
    const rec = S.recs[name];
    if (!rec) return null;
    try {
      const s = await rec.stats();
      const a = await rec.audit();
      const byType: Record<string, number> = {};
      for (const [k, v] of Object.entries(s.events.byType)) if (v) byType[k] = v as number;
      return {
        byType,
        total: s.events.total,
        storage: s.storage,
        backend: s.backend,
        queued: s.queued,
        dropped: s.dropped,
        lastError: s.lastError ?? null,
        neighbors: s.model.neighbors?.hash ?? null,
        consent: { p: a.consent.current.personalization, f: a.consent.current.federated },
        lastRecord: a.consent.history.length ? { p: a.consent.history.at(-1).personalization, f: a.consent.history.at(-1).federated } : null,
        beforeConsent: a.consent.droppedBeforeConsent,
        auditTotal: a.events.total,
        offersStored: a.offers?.version ?? null,
        egress: a.egress.log.length,
      };
    } catch (e) {
      return { err: encErr(e) };
    }
  };
  S.databases = async () => (await indexedDB.databases()).map((d) => d.name);
  S.takeProblems = () => S.problems.splice(0);
}
const DRIVER = `globalThis.__name = (f) => f; (${pageDriver.toString()})();`;

// ---------------------------------------------------------------------------------------------
// The model.

type Life = 'open' | 'closed' | 'erased';
interface StoredEv {
  type: EvType;
  item?: string;
  /** Stamped more than a day ago: retention's count limit removes these first (by time), then the rest in the order stored. */
  old?: boolean;
}
interface Inst {
  life: Life;
  where: 'page' | 'tab';
  p: boolean;
  /** null: either, not known yet (a remembered federated withdrawal the model cannot know was stored). */
  f: boolean | null;
  /** Whether this instance holds a consent decision it passes on to a starting instance (its setConsent's, another tab's). */
  decided: boolean;
  offersMem: OfferWhich | null;
  /** The neighbour table's hash in use; undefined: not known (after a reopen). */
  neighbors: string | null | undefined;
  dropped: number;
  /** Of those, dropped for want of consent (audit().consent.droppedBeforeConsent). */
  noConsent: number;
}
interface Model {
  /** The events the database holds. */
  events: StoredEv[];
  offersStored: OfferWhich | null;
  /** Whether a federated withdrawal is the stored decision (null: not known). */
  fedWithdrawn: boolean | null;
  /** The database was erased (or withdrawn): it must not be listed while no instance with consent is open. */
  dbGone: boolean;
  /** Views tracked just before a reload, never flushed: stored or not (the page flushes on pagehide); the next look tells. */
  maybe: StoredEv[];
  /** How many views were tracked just before that reload, and (once looked at) how many of them were kept. */
  maybeOf?: number;
  resolvedMaybe?: number | undefined;
  inst: Record<Who, Inst | null>;
}
/** The count limit (retention.maxEvents) of this sequence's instances. */
let maxEvents = 5000;
/** Retention's count limit: what is over it goes, oldest first (docs/PRIVACY.md §1). */
function trim(m: Model): void {
  const over = m.events.length - maxEvents;
  if (over <= 0) return;
  const order = m.events.map((e, i) => ({ e, i })).sort((a, b) => Number(!!b.e.old) - Number(!!a.e.old) || a.i - b.i);
  const gone = new Set(order.slice(0, over).map((x) => x.i));
  m.events = m.events.filter((_, i) => !gone.has(i));
}
const fresh = (): Model => ({ events: [], offersStored: null, fedWithdrawn: false, dbGone: false, maybe: [], inst: { A: null, O: null } });
const clone = (m: Model): Model => ({ ...m, events: [...m.events], maybe: [...m.maybe], inst: { A: m.inst.A && { ...m.inst.A }, O: m.inst.O && { ...m.inst.O } } });
const openInsts = (m: Model): Inst[] => (['A', 'O'] as const).map((w) => m.inst[w]).filter((i): i is Inst => !!i && i.life === 'open');
const newer = (a: OfferWhich | null, b: OfferWhich | null): OfferWhich | null => (!a ? b : !b ? a : VERSION[a] >= VERSION[b] ? a : b);

interface ErrInfo {
  name: string;
  message: string;
  field?: string;
  problem?: string;
  instance: boolean;
  localrec: boolean;
  guard: boolean;
  stack: string;
}
type Outcome = { ok: true; value: any } | { ok: false; err: ErrInfo; threw?: boolean } | { absent: true };
type Done = { ok: true; value: any } | { ok: false; err: ErrInfo; threw?: boolean };
type Step = { next: Model } | { problem: string };

const show = (o: Outcome): string => ('absent' in o ? 'absent' : o.ok ? `ok ${JSON.stringify(o.value)?.slice(0, 240)}` : `${o.threw ? 'threw ' : ''}${o.err.name}: ${o.err.message.slice(0, 300)}`);
const isErr = (o: Outcome, name: string, field?: string): boolean =>
  !('absent' in o) && !o.ok && o.err.name === name && (field === undefined || (o.err.field === field && o.err.message.startsWith(`${field}:`)));

const countByType = (events: StoredEv[]): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const e of events) out[e.type] = (out[e.type] ?? 0) + 1;
  return out;
};
const sameCounts = (a: Record<string, number>, b: Record<string, number>) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());

function storedForm(s: Spec): StoredEv | undefined {
  if ('v' in s) return { type: s.v.type, ...(s.v.item !== undefined ? { item: s.v.item } : {}), ...(s.v.ago !== undefined && s.v.ago > DAY ? { old: true } : {}) };
  if ('odd' in s) return { type: 'view', item: s.item };
  return undefined;
}

/** Every open instance follows the consent `next` that `actor` set (the other one once it hears of it). */
function consentEverywhere(m: Model, next: { p: boolean; f: boolean | null }): void {
  for (const y of openInsts(m)) {
    const was = y.p;
    y.p = next.p;
    y.f = next.f;
    y.decided = true;
    // A grant stores the catalog this instance held in memory, unless the database holds a newer one.
    if (next.p && !was) m.offersStored = newer(m.offersStored, y.offersMem);
  }
  if (!next.p) wipe(m);
  else {
    m.fedWithdrawn = next.f === null ? null : !next.f;
    m.dbGone = false;
  }
}

/** The database's contents are gone (erase, withdrawal). */
function wipe(m: Model): void {
  m.events = [];
  m.maybe = [];
  m.offersStored = null;
  // An instance still open writes the consent it follows back (another tab's erase keeps the record in force).
  m.fedWithdrawn = openInsts(m).some((i) => i.p) ? null : false;
  m.dbGone = true;
}

/** The consent a new instance starts with. */
function startingConsent(m: Model, host: HostConsent, other: Inst | null): Pick<Inst, 'p' | 'f' | 'decided'> {
  if (typeof host === 'object') return { p: host.personalization, f: host.federated, decided: false };
  if (host === 'required') return { p: false, f: false, decided: false };
  // No decision from the host: a live instance's decision, else the stored one (a federated withdrawal is kept).
  if (other && other.life === 'open' && other.decided) return { p: other.p, f: other.f, decided: true };
  return { p: true, f: m.fedWithdrawn === null ? null : !m.fedWithdrawn, decided: false };
}

function created(m: Model, who: Who, host: HostConsent, where: 'page' | 'tab', answering?: Inst): Model {
  const other = answering ?? m.inst[who === 'A' ? 'O' : 'A'];
  const c = startingConsent(m, host, other);
  const n = clone(m);
  n.inst[who] = { life: 'open', where, ...c, offersMem: null, neighbors: undefined, dropped: 0, noConsent: 0 };
  if (c.p) {
    n.dbGone = false;
    if (typeof host === 'object' && m.fedWithdrawn !== !host.federated) n.fedWithdrawn = null; // written with the next write
  }
  return n;
}

/** The model's transition for one operation on instance `who`, judged against its outcome. */
function step(m: Model, who: Who, op: Op, o: Outcome): Step {
  const bad = (why: string): Step => ({ problem: `${why}; got ${show(o)}` });
  const me = m.inst[who];
  if ('absent' in o) return me && op.op !== 'reopen' ? bad('the instance is missing from the page') : { next: m };
  if (!me) return bad('an instance the model does not have answered');
  const n = clone(m);
  const I = n.inst[who]!;
  if (op.op === 'close') {
    if (!o.ok) return bad('close() rejected');
    if (I.life === 'open') I.life = 'closed';
    return { next: n };
  }
  if (op.op === 'erase') {
    if (!o.ok) return bad('erase() rejected');
    I.life = 'erased';
    wipe(n);
    return { next: n };
  }
  if (I.life !== 'open') {
    if (op.op === 'track' || op.op === 'burst') {
      const outs = o.ok ? (o.value as Done[]) : [];
      return outs.length && outs.every((x) => isErr(x, 'ClosedError')) ? { next: n } : bad(`track() on a ${I.life} instance must throw a ClosedError`);
    }
    return isErr(o, 'ClosedError') && !(o as { threw?: boolean }).threw ? { next: n } : bad(`a call on a ${I.life} instance must reject with a ClosedError`);
  }
  const history = I.p ? n.events : [];
  switch (op.op) {
    case 'track':
    case 'burst': {
      if (!o.ok) return bad('track() outcomes missing');
      const outs = o.value as Done[];
      const specs: Spec[] = op.op === 'track' ? op.events : Array.from({ length: op.n }, (_, i) => ({ v: { type: 'view' as const, item: IDS[i % 12]! } }));
      for (const [i, s] of specs.entries()) {
        const out = outs[i]!;
        if ('bad' in s) {
          if (!isErr(out, 'ValidationError', BAD[s.bad])) return bad(`event ${i} (${s.bad}) must throw a ValidationError naming ${BAD[s.bad]}, got ${show(out)}`);
          I.dropped++;
          continue;
        }
        if (!out.ok) return bad(`event ${i} (${JSON.stringify(s)}) is valid, and threw ${show(out)}`);
        if (I.p) {
          n.events.push(storedForm(s)!);
          trim(n);
        } else {
          I.dropped++;
          I.noConsent++;
        }
      }
      return { next: n };
    }
    case 'flush':
      return o.ok ? { next: n } : bad('flush() rejected');
    case 'recommend': {
      if (!o.ok) return bad('recommend() rejected');
      const why = checkRecs(history, op, o.value);
      return why ? bad(why) : { next: n };
    }
    case 'similar': {
      if (!o.ok) return bad('similar() rejected');
      const why = checkRecs(history, { k: op.k ?? 10, exclude: op.exclude ?? 'none' }, o.value, op.item);
      return why ? bad(why) : { next: n };
    }
    case 'train': {
      if (!I.p) return isErr(o, 'ConsentError') ? { next: n } : bad('train() without consent must be a ConsentError');
      // Its signal fired at the first step: stopped (AbortError, nothing saved), or the run had ended.
      if (op.abort && isErr(o, 'AbortError')) return { next: n };
      if (!o.ok) return bad('train() rejected');
      const { steps, heard, backend } = o.value as { steps: number; backend: string; heard: { phase: string; done: number; total: number }[] };
      if (backend !== 'cpu') return bad(`trained on ${backend}, not the cpu backend asked for`);
      if (op.progress !== 'none' && !op.abort && heard.length) {
        // Every report reached the page before train() resolved: the last says the weights are
        // saved. (A call that joined a run under way, another call's or an automatic one, hears
        // only the rest of it.)
        const last = heard.at(-1)!;
        const training = heard.filter((h) => h.phase === 'training');
        if (last.phase !== 'saving' || last.done !== last.total) return bad(`train() resolved before the page heard the run end: ${JSON.stringify(heard.slice(-3))}`);
        if (training.length && training.at(-1)!.done !== steps) return bad(`train() resolved with ${steps} steps, the page heard ${JSON.stringify(training.slice(-3))}`);
      }
      return { next: n };
    }
    case 'setOffers': {
      if (op.which === 'tampered') return isErr(o, 'SignatureError') && !o.ok && o.err.problem === 'mismatch' ? { next: n } : bad('a tampered catalog must be a SignatureError, problem "mismatch"');
      if (op.which === 'garbage') return isErr(o, 'SignatureError') || isErr(o, 'ValidationError') ? { next: n } : bad('a garbage catalog must be refused');
      const v = VERSION[op.which];
      const floor = Math.max(I.offersMem ? VERSION[I.offersMem] : -1, I.p && n.offersStored ? VERSION[n.offersStored] : -1);
      if (v < floor) return isErr(o, 'ValidationError', 'catalog.version') ? { next: n } : bad(`catalog v${v} under the installed v${floor} must be refused (catalog.version)`);
      if (!o.ok) return bad(`setOffers(${op.which}) rejected`);
      I.offersMem = op.which;
      if (I.p) {
        n.offersStored = op.which;
        // The other instance reads the stored, newer catalog at its next offers().
        for (const y of openInsts(n)) if (y !== I && y.p) y.offersMem = null;
      }
      return { next: n };
    }
    case 'offers': {
      if (!o.ok) return bad('offers() rejected');
      const shown = o.value as string[];
      const cat = I.offersMem ?? (I.p ? n.offersStored : null);
      if (!cat) return shown.length === 0 ? { next: n } : bad('offers without a catalog');
      if (shown.some((id) => !OFFER_IDS[cat].has(id)) || new Set(shown).size !== shown.length || shown.length > op.k) return bad(`offers outside catalog ${cat}, duplicated or more than k`);
      I.offersMem = cat;
      return { next: n };
    }
    case 'setNeighbors': {
      const r = o as Done & { kept?: boolean };
      if (r.kept !== true) return bad(`setNeighbors() detached or changed the caller's ${op.as === 'view' ? 'view and its buffer' : 'ArrayBuffer'}`);
      if (op.which === 'garbage') return isErr(o, 'ValidationError', 'neighbors') ? { next: n } : bad('a file that is not one must be a ValidationError naming neighbors');
      if (op.which === 'foreign') return isErr(o, 'ModelError') ? { next: n } : bad("a file with none of the catalog's items must be a ModelError");
      if (!o.ok) return bad('setNeighbors() rejected a good file');
      const v = o.value as { items: number; matched: number; width: number; hash: string };
      if (v.items !== 12 || v.matched !== 12 || v.width !== 2 || typeof v.hash !== 'string') return bad('setNeighbors() result');
      I.neighbors = v.hash;
      return { next: n };
    }
    case 'consent': {
      if (!o.ok) return bad('setConsent() rejected');
      // (f null: the model did not know the federated consent in force; the observation tells.)
      consentEverywhere(n, { p: op.personalization ?? I.p, f: op.federated ?? I.f });
      return { next: n };
    }
    case 'read': {
      if (!o.ok) return bad(`${op.what}() rejected`);
      if (op.what === 'egress') return o.value.isArray && o.value.length === 0 ? { next: n } : bad('the egress log must be empty: nothing was sent');
      if ((op.what === 'stats' || op.what === 'audit') && !n.maybe.length && o.value.total !== history.length) return bad(`${op.what}() counts ${o.value.total} events, the model ${history.length}`);
      if (op.what === 'export') {
        const x = o.value as { format: string; schema: number; notJson: string | null; events: StoredEv[]; egress: number; ordered: boolean };
        if (x.format !== 'localrec-export' || x.schema !== 1) return bad('export() format');
        if (x.notJson) return bad(`export() is not JSON-ready: ${x.notJson}`);
        if (x.egress !== 0) return bad('export() lists requests');
        if (!x.ordered) return bad('export() events are not oldest first');
        const got = countByType(x.events);
        const want = countByType(history);
        if (!sameCounts(got, want)) return bad(`export() lists ${JSON.stringify(got)}, the model ${JSON.stringify(want)}`);
        const items = (es: StoredEv[]) => es.map((e) => e.item ?? '').sort().join(',');
        if (items(x.events) !== items(history)) return bad('export() lists other items than were tracked');
      }
      return { next: n };
    }
    case 'bad': {
      const want = BAD_CALLS[op.which];
      return isErr(o, want.kind, 'field' in want ? want.field : undefined) ? { next: n } : bad(`expected ${want.kind}${'field' in want ? ` naming ${want.field}` : ''}`);
    }
    default:
      throw new Error(`step: ${op.op}`);
  }
}

/**
 * Calls started in this order on one instance, without awaiting: the outcomes the page's promises
 * allow. The page keeps the order of its calls (a track, a consent change, a close or an erase
 * affects every call made after it); two calls the worker runs at once may land in either order
 * (two catalogs, two files); a training run is stopped by a close, an erase or a withdrawal made
 * after it (AbortError, nothing saved).
 */
function parCandidates(m: Model, who: Who, calls: Op[], outs: Outcome[]): { cands: { how: string; m: Model }[]; problems: string[]; overtaken?: string } {
  const cands: { how: string; m: Model }[] = [];
  const overtook: { how: string; m: Model }[] = [];
  const problems: string[] = [];
  // A grant of personalization, and what is tracked after it (held on the page until it is applied).
  const grantAt = calls.findIndex((c) => c.op === 'consent' && c.personalization === true);
  const heldOrGrant = (i: number) => grantAt >= 0 && i >= grantAt && (i === grantAt || calls[i]!.op === 'track');
  const free = new Set(['setOffers', 'setNeighbors', 'recommend', 'offers', 'train', 'flush', 'read']);
  const ends = (x: Op) => x.op === 'erase' || x.op === 'close' || (x.op === 'consent' && x.personalization === false);
  const stopped = calls.map((c, i) => c.op === 'train' && calls.slice(i + 1).some(ends) && (isErr(outs[i]!, 'AbortError') || isErr(outs[i]!, 'ClosedError')));
  const perms = (xs: number[]): number[][] => (xs.length <= 1 ? [xs] : xs.flatMap((x, i) => perms([...xs.slice(0, i), ...xs.slice(i + 1)]).map((r) => [x, ...r])));
  for (const order of perms(calls.map((_, i) => i))) {
    // Two calls may swap only when both are ones the worker runs side by side. A call that
    // overtakes a grant made before it (or the events held for that grant) is a finding of its
    // own, [grant-order]: the page promises each call runs after what was tracked before it.
    const swaps = order.flatMap((x, i) => order.slice(i + 1).filter((y) => y < x).map((y) => [y, x] as const));
    const wrong = swaps.filter(([y, x]) => !(free.has(calls[x]!.op) && free.has(calls[y]!.op)));
    if (wrong.some(([y, x]) => !(heldOrGrant(y) && free.has(calls[x]!.op)))) continue;
    const into = wrong.length ? overtook : cands;
    for (const cut of stopped.some(Boolean) ? [false, true] : [false]) {
      let cur = m;
      let ok = true;
      const how = `${order.join(';')}${cut ? ' (train stopped)' : ''}`;
      for (const i of order) {
        if (cut && stopped[i]) continue;
        const r = step(cur, who, calls[i]!, outs[i]!);
        if ('problem' in r) {
          problems.push(`${how}: ${label(calls[i]!)}: ${r.problem}`);
          ok = false;
          break;
        }
        cur = r.next;
      }
      if (ok) into.push({ how, m: cur });
    }
  }
  if (!cands.length && overtook.length) return { cands: overtook, problems, overtaken: overtook[0]!.how };
  return { cands, problems };
}

/**
 * `a` on A and `b` on O, started together: either order, and `b` may be cut short by a wipe in
 * A (the deletion under its call: a StorageError saying so; a training run stopped: AbortError).
 */
function crossCandidates(m: Model, a: Op, oa: Outcome, b: Op, ob: Outcome): { cands: { how: string; m: Model }[]; problems: string[] } {
  const cands: { how: string; m: Model }[] = [];
  const problems: string[] = [];
  const chain = (how: string, steps: [Who, Op, Outcome][]) => {
    let cur = m;
    for (const [who, x, o] of steps) {
      if (x.op === 'openOther') {
        if (!('absent' in o) && o.ok) {
          cur = created(cur, 'O', 'default', x.where);
          continue;
        }
        return void problems.push(`${how}: a second instance failed to start: ${show(o)}`);
      }
      const r = step(cur, who, x, o);
      if ('problem' in r) return void problems.push(`${how}: ${who} ${label(x)}: ${r.problem}`);
      cur = r.next;
    }
    cands.push({ how, m: cur });
  };
  chain('A;O', [['A', a, oa], ['O', b, ob]]);
  chain('O;A', [['O', b, ob], ['A', a, oa]]);
  // A call in flight in one instance when the other deletes the database (erase, withdrawal) may
  // be refused: "was deleted (another tab erased it …)" (docs/PRIVACY.md, "Several tabs"), or, a
  // training run, stopped.
  const wipes = (x: Op) => x.op === 'erase' || (x.op === 'consent' && x.personalization === false);
  const cut = (x: Op, o: Outcome) => (isErr(o, 'StorageError') && /was deleted/.test(!('absent' in o) && !o.ok ? o.err.message : '')) || (x.op === 'train' && (isErr(o, 'AbortError') || isErr(o, 'ConsentError')));
  // A consent change refused so is still in force (the engine applies it whatever became of
  // storing it: a withdrawal must hold): as if it had succeeded, in either order.
  const applied: Outcome = { ok: true, value: null };
  if (wipes(a) && cut(b, ob)) {
    chain('O cut by A', [['A', a, oa]]);
    if (b.op === 'consent') {
      chain('A;O (consent applied, not stored)', [['A', a, oa], ['O', b, applied]]);
      chain('O;A (consent applied, not stored)', [['O', b, applied], ['A', a, oa]]);
    }
  }
  if (wipes(b) && cut(a, oa)) {
    chain('A cut by O', [['O', b, ob]]);
    if (a.op === 'consent') {
      chain('A;O (consent applied, not stored)', [['A', a, applied], ['O', b, ob]]);
      chain('O;A (consent applied, not stored)', [['O', b, ob], ['A', a, applied]]);
    }
  }
  return { cands, problems };
}

/** `op` on A when it names O and the sequence has not opened a second instance (yet). */
function retarget(op: Op, m: Model): Op {
  if (!('who' in op) || op.who !== 'O' || m.inst.O) return op;
  return { ...op, who: 'A' } as Op;
}

const label = (op: Op): string => JSON.stringify(op, (k, v) => (typeof v === 'string' && v.length > 40 ? `${v.slice(0, 10)}…(${v.length})` : v));

// ---------------------------------------------------------------------------------------------
// The system under test: one browser context per sequence (its own IndexedDB), the first page,
// and a second tab when the sequence opens one.

interface Obs {
  byType: Record<string, number>;
  total: number;
  storage: string;
  backend: string;
  queued: number;
  dropped: number;
  lastError: string | null;
  neighbors: string | null;
  consent: { p: boolean; f: boolean };
  lastRecord: { p: boolean; f: boolean } | null;
  beforeConsent: number;
  auditTotal: number;
  offersStored: number | null;
  egress: number;
}

const within = hangGuard(OP_TIMEOUT_MS);

const LOCALREC_ERRORS = new Set(['ValidationError', 'StorageError', 'ModelError', 'ClosedError', 'NetworkError', 'PrivacyBudgetError', 'ConsentError', 'AbortError', 'SignatureError', 'LocalrecError']);

let server: StaticServer;
let browser: Browser;
const lastErrors = new Map<string, number>();
const reloadStats = { dirty: 0, kept: 0, lost: 0, partial: 0 };
/** What the sequences exercised: operation (and instance) → outcome → count (printed with BROWSER_STATEFUL_VERBOSE or on a long run). */
const coverage = new Map<string, number>();
const tally = (op: Op, o: Outcome | string) => {
  const what = typeof o === 'string' ? o : 'absent' in o ? 'absent' : o.ok ? (Array.isArray(o.value) && o.value[0] && typeof o.value[0] === 'object' && 'ok' in o.value[0] ? (o.value as Done[]).map((x) => (x.ok ? 'ok' : x.err.name)).sort().filter((x, i, a) => a.indexOf(x) === i).join('+') : 'ok') : o.err.name;
  const key = `${op.op}${'who' in op && op.who === 'O' ? '(O)' : ''}${op.op === 'bad' ? `.${op.which}` : ''}: ${what}`;
  coverage.set(key, (coverage.get(key) ?? 0) + 1);
};

class Sys {
  context!: BrowserContext;
  pages: { page?: Page; tab?: Page } = {};
  /** Console errors, page errors, worker errors: each a finding. */
  problems: string[] = [];
  auto = 0;

  static async start(auto: number): Promise<Sys> {
    const s = new Sys();
    s.auto = auto;
    s.context = await browser.newContext();
    s.pages.page = await s.openPage();
    return s;
  }

  async openPage(): Promise<Page> {
    const page = await this.context.newPage();
    await page.addInitScript(DRIVER);
    page.on('pageerror', (e) => this.problems.push(`[page error] ${e.message}`));
    const onConsole = (where: string) => (m: { type(): string; text(): string }) => {
      if (m.type() !== 'error') return;
      // The page's favicon: the static server has none.
      if (/^Failed to load resource: .*404/.test(m.text())) return;
      this.problems.push(`[console ${where}] ${m.text()}`);
    };
    page.on('console', onConsole('page'));
    page.on('worker', (wk) => {
      wk.on('console', onConsole('worker'));
      // The worker's unhandled rejections, said on its console (the driver cannot reach its scope).
      void wk
        .evaluate("self.addEventListener('unhandledrejection', (e) => console.error('[unhandled rejection in the worker]', String(e.reason && (e.reason.stack || e.reason.message) || e.reason)))")
        .catch(() => undefined);
    });
    await page.goto(`${server.url}/test/browser/pages/sdk.html`);
    // (Once more after a failed load: another `npm run build` may be rewriting dist/ meanwhile.)
    await page.waitForFunction(() => (window as any).ready === true, null, { timeout: 15_000 }).catch(async () => {
      await page.reload();
      await page.waitForFunction(() => (window as any).ready === true);
    });
    return page;
  }

  pageOf(m: Model, who: Who): Page | undefined {
    const i = m.inst[who];
    if (!i) return undefined;
    return i.where === 'tab' ? this.pages.tab : this.pages.page;
  }

  options(host: HostConsent): Record<string, unknown> {
    return {
      catalog: { items: ITEMS },
      backend: 'cpu',
      dbName: DB,
      autoTrainEvery: this.auto,
      retention: { maxEvents },
      model: { dim: 8, seed: 3 },
      offers: { publicKey: ctx.publicKey },
      ...(host === 'default' ? {} : { consent: host }),
    };
  }

  async observe(m: Model, who: Who): Promise<Obs | { err: ErrInfo } | null> {
    const page = this.pageOf(m, who);
    if (!page) return null;
    return within(page.evaluate((name) => (window as any).__st.observe(name), who), `observe(${who})`);
  }

  async databases(): Promise<string[]> {
    return within(this.pages.page!.evaluate(() => (window as any).__st.databases()), 'indexedDB.databases()');
  }

  async takeProblems(): Promise<string[]> {
    const out = this.problems.splice(0);
    for (const p of [this.pages.page, this.pages.tab]) {
      if (p && !p.isClosed()) out.push(...((await p.evaluate(() => (window as any).__st?.takeProblems() ?? []).catch(() => [])) as string[]));
    }
    return out;
  }

  async close(): Promise<void> {
    await this.context.close().catch(() => undefined);
  }
}

/** Differences between the model and what instance `who` reports (empty when they agree). */
/** `m` with the first `k` of the views from before a reload stored (and retention applied). */
function withMaybe(m: Model, k: number): Model {
  const n = clone(m);
  n.events.push(...n.maybe.slice(0, k));
  n.maybe = [];
  trim(n);
  return n;
}
/** How many of the views from before a reload explain `byType` (-1: none does). */
function keptOfMaybe(m: Model, byType: Record<string, number>): number {
  for (let k = 0; k <= m.maybe.length; k++) if (sameCounts(countByType(withMaybe(m, k).events), byType)) return k;
  return -1;
}

function compare(m: Model, who: Who, obs: Obs | { err: ErrInfo } | null): string[] {
  const I = m.inst[who];
  if (!I || I.life !== 'open') return [];
  if (!obs) return [`[${who}-missing] the model has an open instance ${who} the page does not`];
  if ('err' in obs) return [`[observe] stats()/audit() on open instance ${who} rejected: ${obs.err.name}: ${obs.err.message}`];
  const out: string[] = [];
  // Unflushed views from before a reload: any number of them may be there.
  const k = I.p ? keptOfMaybe(m, obs.byType) : 0;
  const want = I.p ? countByType(withMaybe(m, k < 0 ? 0 : k).events) : {};
  if (!sameCounts(obs.byType, want)) out.push(`[events] ${who} reports ${JSON.stringify(obs.byType)}, expected ${JSON.stringify(want)}`);
  if (obs.auditTotal !== obs.total) out.push(`[audit-vs-stats] ${who}: audit() ${obs.auditTotal} events, stats() ${obs.total}`);
  if (obs.consent.p !== I.p || (I.f !== null && obs.consent.f !== I.f)) out.push(`[consent] ${who} follows ${JSON.stringify(obs.consent)}, expected ${JSON.stringify({ p: I.p, f: I.f })}`);
  if (obs.storage !== (I.p ? 'indexeddb' : 'memory')) out.push(`[storage] ${who} stores in ${obs.storage} with personalization ${I.p}`);
  if (obs.backend !== 'cpu') out.push(`[backend] ${who} runs on ${obs.backend}`);
  if (obs.queued !== 0) out.push(`[queued] ${who}: ${obs.queued} events still queued after stats() wrote the queue (${obs.lastError})`);
  if (obs.dropped !== I.dropped) out.push(`[dropped] ${who}: stats().dropped ${obs.dropped}, expected ${I.dropped}`);
  if (obs.beforeConsent !== I.noConsent) out.push(`[dropped] ${who}: audit().consent.droppedBeforeConsent ${obs.beforeConsent}, expected ${I.noConsent}`);
  // The consent history's last record is the decision in force (docs/PRIVACY.md §1).
  if (!obs.lastRecord || obs.lastRecord.p !== obs.consent.p || obs.lastRecord.f !== obs.consent.f) out.push(`[consent-history] ${who}: the last consent record ${JSON.stringify(obs.lastRecord)} is not the consent in force ${JSON.stringify(obs.consent)}`);
  if (obs.egress !== 0) out.push(`[egress] ${who}: ${obs.egress} requests in the egress log; nothing may leave`);
  if (I.p && obs.offersStored !== (m.offersStored ? VERSION[m.offersStored] : null)) out.push(`[offers-stored] ${who}: stored catalog v${obs.offersStored}, expected ${m.offersStored ? `v${VERSION[m.offersStored]}` : 'none'}`);
  if (I.neighbors !== undefined && obs.neighbors !== I.neighbors) out.push(`[neighbors] ${who}: neighbour table ${obs.neighbors}, expected ${I.neighbors}`);
  return out;
}

/** Outcomes that are not typed, revived localrec errors are findings of their own. */
function untyped(o: Outcome, what: string): string | undefined {
  const check = (x: Outcome, w: string): string | undefined => {
    if ('absent' in x || x.ok) return undefined;
    const e = x.err;
    if (!LOCALREC_ERRORS.has(e.name)) return `[untyped-error] ${w} rejected with ${e.name}: ${e.message} (${e.stack})`;
    if (!e.instance || !e.guard || !e.localrec) return `[error-class] ${w}: a ${e.name} that is not an instance of the page's class (instanceof ${e.instance}, is${e.name} ${e.guard}, isLocalrecError ${e.localrec}): ${e.message}`;
    if (e.name === 'ValidationError' && !(typeof e.field === 'string' && e.message.startsWith(`${e.field}: `))) return `[error-field] ${w}: a ValidationError whose field (${e.field}) does not start its message: ${e.message}`;
    if (/DataCloneError|could not be cloned|#<Object>|\[object Object\]/.test(e.message) && e.name !== 'ValidationError') return `[error-message] ${w}: ${e.name}: ${e.message}`;
    return undefined;
  };
  if (!('absent' in o) && o.ok && Array.isArray(o.value) && o.value.length && typeof o.value[0] === 'object' && o.value[0] && 'ok' in o.value[0]) {
    for (const [i, x] of (o.value as Outcome[]).entries()) {
      const r = check(x, `${what} event ${i}`);
      if (r) return r;
    }
    return undefined;
  }
  return check(o, what);
}

async function runSequence(auto: number, ops: Op[]): Promise<void> {
  const sys = await Sys.start(auto);
  let m = fresh();
  const trace: string[] = [];
  const fail = (code: string, msg: string): false => {
    const text = `${code} ${msg}\n  trace:\n    ${trace.join('\n    ')}`;
    if (IGNORE.has(code)) {
      console.log(`(ignored) ${text.split('\n')[0]}`);
      return false;
    }
    throw new Error(text);
  };
  const codeOf = (s: string) => /^\[[a-zA-Z-]+\]/.exec(s)?.[0] ?? '[state]';
  const ev = <T>(page: Page, f: (arg: any) => Promise<T> | T, arg: any, what: string): Promise<T> => within(page.evaluate(f, arg), what);

  /** Fills in what `m` left open (a federated consent, views from before a reload) from what instance `who` reports. */
  const resolve = (m0: Model, who: Who, obs: Obs): Model => {
    let cur = m0;
    if (cur.maybe.length && cur.inst[who]!.p) {
      const extra = keptOfMaybe(cur, obs.byType);
      cur = withMaybe(cur, extra);
      cur.resolvedMaybe = extra;
    }
    if (cur.inst[who]!.f === null) {
      cur = clone(cur);
      cur.inst[who]!.f = obs.consent.f;
    }
    return cur;
  };

  /**
   * Checks every open instance against one of `cands` (the states the outcomes allow): the
   * instance that acted at once when there is one candidate, the rest until they have heard of
   * the change (SETTLE_MS).
   */
  const check = async (cands: Model[], acted: Who | null, what: string, starting = false): Promise<Model> => {
    const deadline = Date.now() + SETTLE_MS;
    let first = true;
    let strict = true;
    let cur: Model | undefined;
    for (;;) {
      const obs: Record<Who, Awaited<ReturnType<Sys['observe']>>> = { A: null, O: null };
      for (const who of ['A', 'O'] as const) if (cands.some((c) => c.inst[who]?.life === 'open')) obs[who] = await sys.observe(cands[0]!, who);
      for (const who of ['A', 'O'] as const) {
        const o = obs[who];
        if (o && !('err' in o) && o.lastError) lastErrors.set(o.lastError.slice(0, 160), (lastErrors.get(o.lastError.slice(0, 160)) ?? 0) + 1);
      }
      const diffs: string[][] = [];
      for (const c of cands) {
        let r = c;
        const d: string[] = [];
        for (const who of ['A', 'O'] as const) {
          const x = compare(r, who, obs[who]);
          const o = obs[who];
          if (!x.length && o && !('err' in o) && r.inst[who]?.life === 'open') r = resolve(r, who, o);
          d.push(...x.map((t) => `${who === acted ? '' : `(instance ${who}) `}${t}`));
        }
        if (!d.length) {
          cur = r;
          break;
        }
        diffs.push(d);
        // The instance that acted answers for itself at once. (One just created without a host
        // decision follows a live instance's decision from the start: [start-consent] when it
        // does not; ignored, the check waits for it to hear.)
        if (first && strict && cands.length === 1 && acted && compare(c, acted, obs[acted]).length) {
          const x = compare(c, acted, obs[acted]);
          const other = c.inst[acted === 'A' ? 'O' : 'A'];
          if (starting && other?.life === 'open' && other.decided && x.some((t) => t.startsWith('[consent]'))) {
            strict = false;
            fail('[start-consent]', `after ${what}: the new instance ${acted} did not follow the live instance's consent ${JSON.stringify({ p: other.p, f: other.f })} when createRecommender() resolved: ${x.join('; ')}`);
          } else for (const t of x) fail(codeOf(t), `after ${what}: ${t}`);
        }
      }
      first = false;
      if (cur) break;
      if (Date.now() >= deadline) {
        const text = diffs.map((d, i) => `${cands.length > 1 ? `candidate ${i}: ` : ''}${d.join('; ')}`).join(' | ');
        fail(codeOf(/\[[a-zA-Z-]+\]/.exec(diffs[0]![0]!)?.[0] ?? '[state]'), `after ${what} (${SETTLE_MS} ms later): ${text}`);
        cur = cands[0]!;
        break;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    if (cur.resolvedMaybe !== undefined) {
      const extra = cur.resolvedMaybe;
      const of = cur.events.length; // (only for the tally)
      void of;
      reloadStats[extra === 0 ? 'lost' : extra > 0 && cur.maybeOf === extra ? 'kept' : 'partial']++;
      cur = { ...cur, resolvedMaybe: undefined };
    }
    // An instance with consent open may write the database anew (its consent record, its events).
    if (cur.dbGone && openInsts(cur).some((i) => i.p)) cur = { ...cur, dbGone: false };
    // Erased or withdrawn, and no instance with consent open: the database is not listed.
    if (cur.dbGone) {
      const until = Date.now() + SETTLE_MS;
      for (;;) {
        const dbs = await sys.databases();
        if (!dbs.includes(DB)) break;
        if (Date.now() >= until) {
          fail('[erase-db]', `after ${what}: indexedDB.databases() still lists "${DB}" (${dbs.join(', ')})`);
          break;
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    const problems = await sys.takeProblems();
    if (problems.length) fail('[console]', `after ${what}: ${problems.join(' | ')}`);
    return cur;
  };

  try {
    const first = await ev(sys.pages.page!, ({ opts }) => (window as any).__st.create('A', opts), { opts: sys.options('default') }, 'createRecommender(A)');
    trace.push(`create A → ${show(first)}`);
    if (!first.ok) return void fail('[create]', `createRecommender() failed: ${show(first)}`);
    m = created(m, 'A', 'default', 'page');
    m = await check([m], 'A', 'create A');

    for (const op0 of ops) {
      // An operation on the second instance before there is one runs on the first.
      const op = retarget(op0, m);
      let cands: Model[];
      let acted: Who | null = null;
      const what = label(op);
      if (op.op === 'openOther') {
        if (m.inst.O?.life === 'open') {
          trace.push(`${what} → (already open)`);
          continue;
        }
        if (op.where === 'tab' && !sys.pages.tab) sys.pages.tab = await sys.openPage();
        // A closed O in the other place is forgotten (its page keeps the closed handle).
        const page = op.where === 'tab' ? sys.pages.tab! : sys.pages.page!;
        const o = await ev(page, ({ opts }) => (window as any).__st.create('O', opts), { opts: sys.options('default') }, 'createRecommender(O)');
        trace.push(`${what} → ${show(o)}`);
        tally(op, o);
        if (!o.ok) return void fail('[create]', `a second instance failed to start: ${show(o)}`);
        cands = [created(m, 'O', 'default', op.where)];
        acted = 'O';
      } else if (op.op === 'reload') {
        const page = sys.pages.page!;
        if (op.dirty > 0 && m.inst.A?.life === 'open') await ev(page, ({ n }) => (window as any).__st.trackDirty('A', n), { n: op.dirty }, 'track before reload');
        await within(page.reload(), 'reload');
        await within(page.waitForFunction(() => (window as any).ready === true), 'reload ready');
        const o = await ev(page, ({ opts }) => (window as any).__st.create('A', opts), { opts: sys.options(op.consent) }, 'createRecommender(A) after reload');
        trace.push(`${what} → ${show(o)}`);
        tally(op, o);
        if (!o.ok) return void fail('[create]', `createRecommender() after a reload failed: ${show(o)}`);
        const gone = clone(m);
        // The page's instances end without close(): A, and O when it lived in that page.
        const dirtyKept = op.dirty > 0 && m.inst.A?.life === 'open' && m.inst.A.p;
        gone.inst.A = null;
        if (gone.inst.O?.where === 'page') gone.inst.O = null;
        const next = created(gone, 'A', op.consent, 'page');
        acted = 'A';
        if (dirtyKept) {
          // Views tracked just before the reload (never flushed): written if the worker had time
          // (the page flushes on pagehide). The first look by an instance with consent tells.
          reloadStats.dirty++;
          next.maybe = Array.from({ length: op.dirty }, (_, i) => ({ type: 'view' as const, item: `p${(i * 5) % 12}` }));
          next.maybeOf = op.dirty;
        }
        cands = [next];
      } else if (op.op === 'reopen' || op.op === 'storm') {
        const I = m.inst[op.who];
        if (!I) {
          trace.push(`${what} → (no instance)`);
          continue;
        }
        const page = sys.pageOf(m, op.who)!;
        const host: HostConsent = op.op === 'storm' ? 'default' : op.consent;
        const o =
          op.op === 'reopen'
            ? await ev(page, ({ who, opts, overlap, erase }) => (window as any).__st.reopen(who, opts, overlap, erase), { who: op.who, opts: sys.options(host), overlap: op.overlap, erase: !!op.erase }, `reopen ${op.who}`)
            : await ev(page, ({ who, opts, n }) => (window as any).__st.storm(who, opts, n), { who: op.who, opts: sys.options(host), n: op.n }, `storm ${op.who}`);
        trace.push(`${what} → close ${show(o.closed)}, create ${show(o.created)}`);
        tally(op, o.created);
        const erasing = op.op === 'reopen' && !!op.erase;
        if (!o.closed.ok) fail(erasing ? '[erase]' : '[close]', `${erasing ? 'erase()' : 'close()'} before a new instance rejected: ${show(o.closed)}`);
        if (!o.created.ok) return void fail('[create]', `createRecommender() on the same dbName failed: ${show(o.created)}`);
        const closed = clone(m);
        closed.inst[op.who] = { ...I, life: erasing ? 'erased' : I.life === 'open' ? 'closed' : I.life };
        const overlapping = op.op === 'storm' || op.overlap;
        // Started while the old instance still closes: it may answer the new one's hello with its decision.
        const answering = overlapping && I.life === 'open' && I.decided && (host === 'default' || host === 'granted') ? [undefined, I] : [undefined];
        cands = [];
        for (const a of answering) {
          if (!erasing) cands.push(created(closed, op.who, host, I.where, a));
          else {
            // The erase deletes the database before the new instance opens it, or under it.
            const wiped = clone(closed);
            wipe(wiped);
            cands.push(created(wiped, op.who, host, I.where, a));
            if (overlapping) {
              const late = created(closed, op.who, host, I.where, a);
              wipe(late);
              cands.push(late);
            }
          }
        }
        acted = op.who;
      } else if (op.op === 'par') {
        const page = sys.pageOf(m, op.who);
        if (!page) {
          trace.push(`${what} → (no instance)`);
          continue;
        }
        const outs = (await ev(page, ({ who, calls, gaps, c }) => (window as any).__st.par(who, calls, gaps, c), { who: op.who, calls: op.calls, gaps: op.gaps, c: ctx }, `together ${op.calls.map(label).join(', ')}`)) as Outcome[];
        trace.push(`par(${op.calls.map((c, i) => `${label(c)} → ${show(outs[i]!)}`).join(' ‖ ')}, gaps ${op.gaps.slice(0, op.calls.length - 1).join(',')})`);
        for (const [i, c] of op.calls.entries()) {
          const before = op.calls.slice(0, i).find((x) => x.op === 'erase' || x.op === 'close');
          tally({ ...c, op: `par[${i}].${c.op}${before ? `-after-${before.op}` : ''}` } as unknown as Op, outs[i]!);
          const u = untyped(outs[i]!, label(c));
          if (u) fail(codeOf(u), u);
        }
        const r = parCandidates(m, op.who, op.calls, outs);
        if (!r.cands.length) return void fail('[outcome]', `no order explains the outcomes: ${r.problems.join(' | ')}`);
        if (r.overtaken) fail('[grant-order]', `a call made after setConsent({ personalization: true }) ran before the grant was applied (order ${r.overtaken}): ${r.problems.join(' | ')}`);
        cands = r.cands.map((c) => c.m);
        acted = op.who;
      } else if (op.op === 'par2') {
        const opening = op.b.op === 'openOther';
        const pa = sys.pageOf(m, 'A');
        if (opening && op.b.op === 'openOther' && op.b.where === 'tab' && !sys.pages.tab) sys.pages.tab = await sys.openPage();
        const pb = opening && op.b.op === 'openOther' ? (op.b.where === 'tab' ? sys.pages.tab : sys.pages.page) : m.inst.O ? sys.pageOf(m, 'O') : undefined;
        if (!pa || !pb || !m.inst.A || (opening && m.inst.O?.life === 'open')) {
          trace.push(`${what} → (no second instance, or one open already)`);
          continue;
        }
        const a = { ...op.a, who: 'A' } as Op;
        const b = (opening ? op.b : { ...op.b, who: 'O' }) as Op;
        const run = (page: Page, who: Who, x: Op) =>
          (x.op === 'openOther'
            ? ev(page, ({ opts }) => (window as any).__st.create('O', opts), { opts: sys.options('default') }, 'createRecommender(O)')
            : ev(page, ({ who, x, c }) => (window as any).__st.run(who, x, c), { who, x, c: ctx }, `${who}: ${label(x)}`)) as Promise<Outcome>;
        const ra = run(pa, 'A', a);
        if (op.gap > 0) await new Promise((r) => setTimeout(r, op.gap));
        const [oa, ob] = await Promise.all([ra, run(pb, 'O', b)]);
        trace.push(`par2(A ${label(a)} → ${show(oa)} ‖ O ${label(b)} → ${show(ob)}, gap ${op.gap})`);
        tally({ ...a, op: `par2[A].${a.op}` } as unknown as Op, oa);
        tally({ ...b, op: `par2[O].${b.op}${a.op === 'erase' || (a.op === 'consent' && a.personalization === false) ? '-during-wipe' : ''}` } as unknown as Op, ob);
        for (const [x, o] of [[a, oa], [b, ob]] as const) {
          const u = untyped(o, label(x));
          if (u) fail(codeOf(u), u);
        }
        const r = crossCandidates(m, a, oa, b, ob);
        if (!r.cands.length) return void fail('[outcome]', `no order explains the outcomes: ${r.problems.join(' | ')}`);
        cands = r.cands.map((c) => c.m);
        acted = null;
      } else {
        const page = sys.pageOf(m, op.who);
        if (!page) {
          trace.push(`${what} → (no instance)`);
          continue;
        }
        const o = (await ev(page, ({ who, op, c }) => (window as any).__st.run(who, op, c), { who: op.who, op, c: ctx }, what)) as Outcome;
        trace.push(`${what} → ${show(o)}`);
        tally(op, o);
        const u = untyped(o, what);
        if (u) fail(codeOf(u), u);
        const r = step(m, op.who, op, o);
        if ('problem' in r) {
          // Refused as "deleted" right after the other instance erased (or withdrew): a finding of
          // its own ([deleted-window]); ignored, the call counts as not made.
          if (isErr(o, 'StorageError') && /was deleted/.test(show(o)) && m.inst[op.who]?.life === 'open') {
            fail('[deleted-window]', `${what}: refused after another instance deleted the database: ${show(o)}`);
            cands = [m];
            // (A consent change is in force all the same.)
            if (op.op === 'consent') {
              const r2 = step(m, op.who, op, { ok: true, value: null });
              if ('next' in r2) cands.push(r2.next);
            }
          } else {
            const code = op.op === 'bad' || (op.op === 'track' && op.events.some((s) => 'bad' in s)) ? '[invalid-input]' : `[${op.op}]`;
            return void fail(code, `${what}: ${r.problem}`);
          }
        } else cands = [r.next];
        acted = op.who;
      }
      m = await check(cands, acted, what, ['openOther', 'reload', 'reopen', 'storm'].includes(op.op));
    }
  } finally {
    if (VERBOSE) console.log(`--- sequence (autoTrainEvery ${auto})\n    ${trace.join('\n    ')}`);
    await sys.close();
  }
}

describe('createRecommender through the worker: stateful model-based test (random call sequences in Chromium)', () => {
  before(async () => {
    server = await serveRepo();
    browser = await launch();
    const keys = await generateOfferKeys();
    const a = await signOfferCatalog(OFFER_CATALOGS.A, keys.privateJwk);
    const b = await signOfferCatalog(OFFER_CATALOGS.B, keys.privateJwk);
    // Same signature, another discount: the signature must no longer verify.
    const tampered = structuredClone(a);
    tampered.catalog = { ...tampered.catalog, offers: tampered.catalog.offers.map((o, i) => (i === 0 ? { ...o, discount: { kind: 'percent' as const, percent: 90 } } : o)) };
    ctx = {
      items: ITEMS,
      signed: { A: a, B: b, tampered },
      publicKey: keys.publicJwk,
      nb: { full: neighborFile(IDS), foreign: neighborFile(IDS.map((id) => `other-${id}`)), garbage: [...new TextEncoder().encode('not a neighbour file at all')] },
    };
  });
  after(async () => {
    await browser?.close();
    await server?.close();
    if (lastErrors.size) console.log(`stats().lastError seen: ${JSON.stringify([...lastErrors])}`);
    if (VERBOSE || RUNS > 50) console.log(`coverage:\n  ${[...coverage].sort().map(([k, v]) => `${k} ×${v}`).join('\n  ')}`);
    if (reloadStats.dirty) console.log(`views tracked just before a reload: kept ${reloadStats.kept}, lost ${reloadStats.lost}, partly ${reloadStats.partial} of ${reloadStats.dirty} reloads`);
  });

  it(`${RUNS} sequences of up to ${MAX_OPS} calls keep the model's promises`, { timeout: 60 * 60_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(0, 3),
        fc.constantFrom<'none' | 'page' | 'tab'>('none', 'none', 'page', 'tab'),
        fc.constantFrom(5000, 5000, 20),
        fc.array(opArb, { minLength: 1, maxLength: MAX_OPS, size: 'max' }),
        async (auto, second, max, ops) => {
          maxEvents = max;
          return runSequence(auto, second === 'none' ? ops : [{ op: 'openOther', where: second }, ...ops]);
        },
      ),
      { numRuns: RUNS, ...(SEED !== undefined ? { seed: SEED } : {}), ...(PATH !== undefined ? { path: PATH } : {}), includeErrorInReport: true, ...(NO_SHRINK ? { endOnFailure: true } : {}) },
    );
  });

  /** A tab of `context` with the SDK's test page loaded and ready. */
  const sdkTab = async (context: BrowserContext): Promise<Page> => {
    const page = await context.newPage();
    await page.addInitScript(DRIVER);
    await page.goto(`${server.url}/test/browser/pages/sdk.html`);
    await page.waitForFunction(() => (window as any).ready === true);
    return page;
  };
  /** Runs `f` in a fresh browser context (its own IndexedDB), closed after it. */
  const inFreshContext = async <T>(f: (context: BrowserContext) => Promise<T>): Promise<T> => {
    const context = await browser.newContext();
    try {
      return await f(context);
    } finally {
      await context.close();
    }
  };

  // Found by the sequences (seed -1725433275, path 105, two runs sharing the 2 cores): a storm of
  // close()/create on A while O, open in the same page, held the shopper's withdrawal of
  // personalization; the new A reported { personalization: true } when createRecommender()
  // resolved. Made deterministic here by keeping O's worker busy while A starts (as a loaded
  // device, or a tab busy scoring, would): the live instance's answer comes after A is built.
  it("a new instance follows a live instance's withdrawal of personalization from the start: nothing is stored meanwhile", async () => {
    await inFreshContext(async (context) => {
      const page = await sdkTab(context);
      await page.evaluate(async (items) => {
        const w = window as any;
        w.opts = { catalog: { items }, backend: 'cpu', dbName: 'withdrawn-live', autoTrainEvery: 0 };
        w.O = await w.localrec.createRecommender(w.opts);
        w.O.track({ type: 'view', itemId: 'p1' });
        await w.O.flush();
        await w.O.setConsent({ personalization: false }); // erases; remembered in O alone (nothing may be stored)
      }, ITEMS);
      const [busy] = page.workers();
      void busy!.evaluate('(() => { const t = Date.now(); while (Date.now() - t < 1500); })()').catch(() => undefined);
      const r = await page.evaluate(async () => {
        const w = window as any;
        const A = await w.localrec.createRecommender(w.opts); // no decision from the host
        const audit = await A.audit();
        A.track({ type: 'view', itemId: 'p2' });
        A.track({ type: 'view', itemId: 'p3' });
        const stats = await A.stats();
        const listed = (await indexedDB.databases()).some((d) => d.name === 'withdrawn-live');
        await A.close();
        await w.O.close();
        return { consent: audit.consent.current, stored: stats.events.total, storage: stats.storage, listed };
      });
      assert.deepEqual(r, { consent: { personalization: false, federated: true }, stored: 0, storage: 'memory', listed: false });
    });
  });

  // Found by the sequences (seed 1065534008, path 75: a par of setConsent({ personalization: true })
  // and train()). The page holds what is tracked while a grant is applied, but not its other
  // calls: they reach the worker before the grant takes effect, and see the state before it.
  it('calls made right after setConsent({ personalization: true }) run after it, and after what was tracked since', async () => {
    await inFreshContext(async (context) => {
      const page = await sdkTab(context);
      const r = await page.evaluate(async (items) => {
        const rec = await (window as any).localrec.createRecommender({ catalog: { items }, backend: 'cpu', dbName: 'grant-order', consent: 'required', autoTrainEvery: 0 });
        // The shopper accepts the banner; the page goes on without awaiting the grant.
        const granted = rec.setConsent({ personalization: true });
        rec.track({ type: 'view', itemId: 'p0' });
        const recs = rec.recommend({ k: 3, exclude: 'seen' }).then((x: any[]) => x.map((y) => y.itemId), (e: any) => e.name);
        const trained = rec.train({ epochs: 1 }).then(() => 'trained', (e: any) => `${e.name}: ${e.message}`);
        const stats = rec.stats().then((s: any) => ({ total: s.events.total, storage: s.storage }), (e: any) => e.name);
        await granted;
        const out = { recs: await recs, trained: await trained, stats: await stats };
        await rec.erase();
        return out;
      }, ITEMS);
      assert.ok(Array.isArray(r.recs) && !r.recs.includes('p0'), `recommend({ exclude: 'seen' }) right after the grant returned the item just viewed: ${JSON.stringify(r.recs)}`);
      assert.equal(r.trained, 'trained');
      assert.deepEqual(r.stats, { total: 1, storage: 'indexeddb' });
    });
  });

  // Found by the sequences (seed -1572522167, path 108: A erased, then par2 of A.erase() again, which
  // deletes the database from the page, and O.setOffers(); O's stored catalog was gone, then back
  // after O's next write). O's setOffers() creates the database anew after the page deleted it,
  // before the page's "erased" message reaches O; O then takes the database for absent and reads
  // it as empty: audit() says no catalog is stored while one is, until O's next write. Made
  // deterministic here by doing what erase() does from the page (deleteDatabase, then the tab
  // message on `localrec:<dbName>`) in two steps, with O's call in between.
  it("an instance that wrote the database anew after another's erase reports what it holds (audit() matches the database)", async () => {
    await inFreshContext(async (context) => {
      const page = await sdkTab(context);
      const r = await page.evaluate(
        async ({ items, signed, publicKey }) => {
          const L = (window as any).localrec;
          const opts = { catalog: { items }, backend: 'cpu', dbName: 'rewritten', autoTrainEvery: 0, offers: { publicKey } };
          const A = await L.createRecommender(opts);
          const O = await L.createRecommender(opts);
          await A.erase(); // O hears of it and drops what it held; its store is created anew by its next write
          await new Promise((res) => setTimeout(res, 200));
          // A.erase() once more (A is erased: the page deletes the database itself), O's call landing in between.
          await new Promise((res) => {
            const q = indexedDB.deleteDatabase('rewritten');
            q.onsuccess = q.onerror = () => res(null);
          });
          await O.setOffers(signed);
          new BroadcastChannel('localrec:rewritten').postMessage({ type: 'erased' });
          await new Promise((res) => setTimeout(res, 300));
          const listed = (await indexedDB.databases()).some((d) => d.name === 'rewritten');
          const reported = (await O.audit()).offers?.version ?? null;
          await O.train({ epochs: 1 }); // any write
          const afterWrite = (await O.audit()).offers?.version ?? null;
          await O.erase();
          return { listed, reported, afterWrite };
        },
        { items: ITEMS, signed: ctx.signed.A, publicKey: ctx.publicKey },
      );
      // Either the catalog is gone with the erase, or it is stored and reported: never stored and unreported.
      assert.equal(r.reported, r.afterWrite, `audit() said ${r.reported} while the database ${r.listed ? 'was' : 'was not'} listed, and ${r.afterWrite} after O's next write`);
      if (r.listed) assert.equal(r.reported, 1);
    });
  });

  // Found by the sequences (seed 253166451, path 41): one tab's page passes the answer its banner
  // remembered ({ personalization: true, federated: false }), another tab of the shop started
  // without one. The second tab's audit() then says federated learning is on, while its consent
  // history ends with the first tab's record saying it is off — and the next page load without a
  // host decision applies that record (docs/PRIVACY.md §1: "the last record is always the decision
  // in force").
  it("a tab's consent in force is the last record of the consent history it reports, also when another tab's host passed its own answer", async () => {
    await inFreshContext(async (context) => {
      const [first, second] = [await sdkTab(context), await sdkTab(context)];
      const opts = { catalog: { items: ITEMS }, backend: 'cpu', dbName: 'two-answers', autoTrainEvery: 0 };
      await first.evaluate(async (o) => void ((window as any).rec = await (window as any).localrec.createRecommender(o)), opts);
      await second.evaluate(async (o) => {
        const rec = await (window as any).localrec.createRecommender({ ...o, consent: { personalization: true, federated: false } });
        rec.track({ type: 'view', itemId: 'p1' });
        await rec.flush();
        await rec.close();
      }, opts);
      const r = await first.evaluate(async () => {
        const rec = (window as any).rec;
        rec.track({ type: 'view', itemId: 'p2' });
        await rec.flush();
        const a = await rec.audit();
        await rec.erase();
        const last = a.consent.history.at(-1);
        return { current: a.consent.current, last: last && { personalization: last.personalization, federated: last.federated } };
      });
      assert.deepEqual(r.last, r.current, `consent in force ${JSON.stringify(r.current)}, last record ${JSON.stringify(r.last)}`);
    });
  });

  // Found while minimizing the one above: erase() in one instance has resolved, and the other
  // instance on the same dbName (it had its connection open: no reconnect involved) still refuses
  // a call with a StorageError "was deleted (another tab erased it, …)" until it has handled the
  // erase's tab message. About 1 call in 4 here; ATTEMPTS fresh pairs make a miss unlikely.
  it("after one instance's erase() resolved, the other instance's next call is answered, not refused as 'deleted'", async () => {
    const ATTEMPTS = 16;
    await inFreshContext(async (context) => {
      const page = await sdkTab(context);
      const refused = await page.evaluate(
        async ({ items, signed, publicKey, attempts }) => {
          const L = (window as any).localrec;
          const out: string[] = [];
          for (let i = 0; i < attempts; i++) {
            const opts = { catalog: { items }, backend: 'cpu', dbName: `erased-elsewhere-${i}`, autoTrainEvery: 0, offers: { publicKey } };
            const [A, O] = [await L.createRecommender(opts), await L.createRecommender(opts)];
            await A.erase();
            await O.setOffers(signed).catch((e: Error) => out.push(`${e.name}: ${e.message}`));
            await O.erase();
          }
          return out;
        },
        { items: ITEMS, signed: ctx.signed.A, publicKey: ctx.publicKey, attempts: ATTEMPTS },
      );
      assert.deepEqual(refused, [], `${refused.length} of ${ATTEMPTS} setOffers() calls refused: ${refused[0]}`);
    });
  });
});
