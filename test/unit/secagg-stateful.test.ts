/**
 * Stateful, model-based property test of SECURE AGGREGATION with dropout recovery, end to end: real
 * devices (the SDK's `syncOnce`, src/federated/sync.ts, as test/unit/secagg.test.ts drives it)
 * against the real in-process server (`createServer`, called through `parts.app.fetch`), on one
 * injected clock (`now: () => t`, the server's and every device's), with random interleavings.
 *
 * fast-check generates, as plain data:
 *  - the server: cohort size K (`minClients`) 3..6, dropout recovery off or on with `minSurvivors`
 *    t in 2..K−1, the mask degree (the default or 2: a ring, which dropouts can cut), σ = 0 (the
 *    published mean is then checkable exactly, up to the fixed-point step), clip 1, fill timeout
 *    4 s and upload timeout 2 s on the injected clock, a memory store (a spy on MemoryStorage that
 *    records every upload it stores and every publish, with the uploads it consumed), no rate limit;
 *  - K..2K devices, each with a fate: `ok` (completes); `nohist` (nothing to learn from: sends
 *    nothing); `cancel` (its signal aborts at its n-th cohort poll, plainly or with DROP_OUT: it
 *    leaves a forming cohort; once the cohort is full it uploads anyway, or drops out); `netUpload`
 *    (its fetch rejects for `/v1/secagg/updates`, attempts 1); `lost` (the server takes its first
 *    join / upload / confirm / ready / recovery request, but the answer never comes back: the SDK
 *    retries); `offline` (its fetch rejects for a window of its requests, then works again);
 *    `leave` (gone after its upload, its confirmation or its ready tag: signal aborted, fetch
 *    rejects); `late` (its upload is held until the clock moved 0.5 or 1.5 upload timeouts);
 *    and when it starts: at once, or at the n-th join / accepted upload / recovery share;
 *  - up to three clock jumps (100 ms, half an upload timeout, past the upload timeout, past the
 *    fill timeout, past the publish grace of 4 upload timeouts), each either once the n-th join /
 *    accepted upload / recovery share was answered, or while the server still handles the n-th such
 *    request (0–12 event-loop turns after it was forwarded), then followed at once by an auditor's
 *    read of that cohort (which sweeps timed-out cohorts); and optionally one server restart on the
 *    same store (the old process drained first, requests meanwhile waiting as at a port that is
 *    opening). Besides, when nothing progresses for IDLE_MS of real time (only identical polls),
 *    a device that waits for its start trigger starts, else the clock moves half an upload timeout
 *    (so every deadline is eventually reached: nothing waits on a clock that never moves).
 *
 * After the devices settle (and the clock is then moved past every deadline) it checks:
 *  - [5xx] no 5xx answer (none is documented for this setup: no cohort cap reached, no storage
 *    fault); [crash] `app.fetch` never throws; [unhandled] no unhandled rejection; [hang] every
 *    sync settles (hang guard);
 *  - [refusal] every 4xx is one the docs allow at that moment: a poll's, leave's or upload's `409
 *    unknown-cohort` only once the cohort is not in the state the request needs (or after a
 *    restart), no `403`, `400`, `413`, `422`, no `409 replayed` / `wrong-mode` from an honest device;
 *  - [outcome] each `syncOnce` resolves or rejects with a typed localrec error; a device that has
 *    nothing to learn from sends nothing; one that resolved with recovery on reports its cohort's
 *    outcome, which agrees with the cohort's end (`published` ⇔ done, `aborted` ⇔ aborted), and
 *    `left` only for a device that left (or whose cohort a restart ended); one that rejected had
 *    no upload taken, except the documented case (a lost answer whose retry is refused);
 *  - [epsilon] a device that sent no upload request spent no ε, one that did spent exactly one
 *    release (its accountant);
 *  - [dropped] a cohort's `dropped` (GET /v1/secagg/cohorts/:id) is exactly the members whose
 *    upload the server did not take; [list] every member view shows one and the same list;
 *  - [published] a cohort that is done was published once, into the version its view names, from
 *    exactly its survivors' uploads (all K without recovery); one that is not done consumed nothing;
 *    an aborted one leaves nothing pending; [pending] nothing is pending at the end; [stuck] every
 *    cohort has ended once the clock passed every deadline; [version] versions are contiguous;
 *  - [mean] each published version = the previous one + the mean of the clipped deltas
 *    (itemDelta, clipL2) of exactly the consumed members, within the fixed-point step;
 *  - [privacy] for no member did the server get both a pair seed (a neighbour's recovery share
 *    for a member its list names as dropped) and a share of its self-mask (one for a member its
 *    list leaves alive); no survivor gives a recovery share while the server holds the upload of a
 *    member it lists as dropped; without recovery no confirm / ready / recovery request is made;
 *  - [clean] a cohort whose members all had the fate `ok`, with no clock move and no restart from
 *    its filling to its end, is published with all K members; [replay] (the test's own footing) a
 *    device's training replayed on the model it downloaded is what its sync trained (the [mean]
 *    check replays it for members whose sync rejected).
 *
 * Found when this file was written (stop 39; each reproducible with SECAGG_STATEFUL_SPEC=<the JSON
 * below>; each run is a different interleaving, so give SECAGG_STATEFUL_RUNS=5 or so), each fixed
 * since: the server no longer aborts a cohort whose publish is under way (`publishingCohorts`, also
 * `test/unit/secagg.test.ts`); a survivor refused `409 unknown-cohort` in recovery reads its view
 * once more and reports how the cohort ended; with recovery a device cancelled once its cohort is
 * full drops out (nothing sent) instead of uploading and leaving.
 *  - [aborted-published] the sweep aborts a complete cohort at its publish deadline (PUBLISH_GRACE
 *    upload timeouts after it filled, or after recovery began) while its aggregation is already past
 *    its last status check (rounds.ts aggregateNow: "still recovering once its uploads are summed",
 *    then publishMean's awaits, then cohorts.finish, a no-op on an aborted cohort): the version is
 *    published from the cohort's uploads, yet its view says `aborted` ("… could not be published
 *    within 8000 ms", no `published`) and every member that waited reports `aborted`.
 *    {"K":3,"t":2,"degree":null,"devices":[{"fate":{"kind":"ok"},"start":null},{"fate":{"kind":"ok"},"start":null},{"fate":{"kind":"ok"},"start":null}],"jumps":[{"at":{"on":"share","n":3},"by":"grace","during":6}],"restart":null}
 *    (without recovery: "t":null and "at":{"on":"upload","n":3}, "during":4).
 *  - [recovery-409] a survivor whose confirm / ready / recovery request is refused 409
 *    unknown-cohort because the cohort just ended stops there and reports `left`, not how it ended:
 *    its recovery share completed the cohort but the answer was lost, and the retry of the same
 *    bytes (documented as idempotent, 202) finds it done — the device reports `left` although its
 *    sum was published; or the recovery deadline passed — `left` although it was aborted.
 *    {"K":3,"t":2,"degree":null,"devices":[{"fate":{"kind":"lost","on":"recovery"},"start":null},{"fate":{"kind":"ok"},"start":null},{"fate":{"kind":"ok"},"start":null}],"jumps":[],"restart":null}
 *    {"K":3,"t":2,"degree":null,"devices":[{"fate":{"kind":"ok"},"start":null},{"fate":{"kind":"ok"},"start":null},{"fate":{"kind":"ok"},"start":null}],"jumps":[{"at":{"on":"share","n":1},"by":"upload","during":null}],"restart":null}
 *  - [cancel-sinks] with recovery on, a plain cancel once the cohort is full makes the device upload
 *    ("the other members' round depends on it", SyncOptions.signal) and then stop waiting, so it
 *    never confirms or gives its share: the cohort is aborted for sure, every member's ε spent,
 *    where staying (or, as DROP_OUT does, not uploading: a dropout the others recover from) would
 *    not sink it.
 *    {"K":3,"t":2,"degree":null,"devices":[{"fate":{"kind":"ok"},"start":null},{"fate":{"kind":"ok"},"start":null},{"fate":{"kind":"cancel","atPoll":1,"dropOut":false},"start":{"on":"join","n":2}}],"jumps":[],"restart":null}
 *
 * Env: SECAGG_STATEFUL_RUNS (default 25; 15 under CI), SECAGG_STATEFUL_SEED (CI: fixed, 4),
 * SECAGG_STATEFUL_SPEC (one run's JSON, as a counterexample prints it, run RUNS times instead of
 * generated ones), SECAGG_STATEFUL_STATS=1 (count the outcomes reached), SECAGG_STATEFUL_VERBOSE=1 (print every run's trace), SECAGG_STATEFUL_NO_SHRINK=1,
 * SECAGG_STATEFUL_IGNORE (comma-separated violation codes logged instead of failing),
 * SECAGG_STATEFUL_IDLE_MS (default 60: real ms without progress before the idle clock step).
 * RUNS / SEED / VERBOSE / NO_SHRINK are read as fallbacks.
 */
import { strict as assert } from 'node:assert';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { itemDelta } from '../../src/federated/client-update.js';
import { clipL2, RdpAccountant } from '../../src/federated/dp.js';
import { DROP_OUT, pullOnce, syncOnce, type FetchLike, type SyncResult } from '../../src/federated/sync.js';
import { maskNeighbours } from '../../src/federated/secagg.js';
import { decodeModel, toHex } from '../../src/federated/wire.js';
import type { ItemTable } from '../../src/model/item-table.js';
import { isLocalrecError } from '../../src/errors.js';
import { createServer, MemoryStorage, type ServerParts } from '../../src/server/index.js';
import { hangGuard } from '../stateful-helpers.js';
import { initialTable, shopperHistory } from './server-helpers.js';

const env = process.env;
const RUNS = Number(env.SECAGG_STATEFUL_RUNS ?? env.RUNS ?? (env.CI ? 15 : 25));
const SEED_ENV = env.SECAGG_STATEFUL_SEED ?? env.SEED;
const SEED = SEED_ENV !== undefined ? Number(SEED_ENV) : env.CI ? 4 : undefined;
const VERBOSE = Boolean(env.SECAGG_STATEFUL_VERBOSE ?? env.VERBOSE);
const NO_SHRINK = (env.SECAGG_STATEFUL_NO_SHRINK ?? env.NO_SHRINK) === '1';
const IDLE_MS = Number(env.SECAGG_STATEFUL_IDLE_MS ?? 60);
/** SECAGG_STATEFUL_STATS=1: how often each outcome was reached over the whole run (printed at the end). */
const STATS = env.SECAGG_STATEFUL_STATS === '1';
const stats = new Map<string, number>();
const count = (what: string) => {
  if (STATS) stats.set(what, (stats.get(what) ?? 0) + 1);
};
/** SECAGG_STATEFUL_SPEC: one run's JSON (a counterexample as fast-check prints it), run RUNS times instead of generated ones. */
const SPEC = env.SECAGG_STATEFUL_SPEC;
/** Violation codes (without brackets) logged instead of failing, to look past a known one. */
const IGNORE = new Set((env.SECAGG_STATEFUL_IGNORE ?? '').split(',').filter(Boolean));
/** A run (all its devices settled) must end within this much real time: a hang guard, not a speed check. */
const RUN_GUARD_MS = Number(env.SECAGG_STATEFUL_RUN_GUARD_MS ?? 45_000);

const FILL_MS = 4_000;
const UPLOAD_MS = 2_000;
/** Clock jumps: past the upload (and recovery) deadline, the fill deadline, the publish grace (PUBLISH_GRACE = 4 upload timeouts). */
const JUMP: Record<JumpBy, number> = { small: 100, half: UPLOAD_MS / 2, upload: UPLOAD_MS + 1, fill: FILL_MS + 1, grace: 5 * UPLOAD_MS + 1 };
const T0 = 1_700_000_000_000;

// ---------------------------------------------------------------------------------------------
// What is generated (plain data: fast-check prints and shrinks it).

type Step = 'join' | 'upload' | 'share';
interface Trigger {
  on: Step;
  n: number;
}
type Fate =
  | { kind: 'ok' }
  | { kind: 'nohist' }
  | { kind: 'cancel'; atPoll: number; dropOut: boolean }
  | { kind: 'netUpload' }
  | { kind: 'lost'; on: 'join' | 'upload' | 'confirm' | 'ready' | 'recovery' }
  | { kind: 'offline'; from: number; count: number }
  | { kind: 'leave'; after: 'upload' | 'confirm' | 'ready' }
  | { kind: 'late'; hold: number };
interface DeviceSpec {
  fate: Fate;
  start: Trigger | null;
}
type JumpBy = 'small' | 'half' | 'upload' | 'fill' | 'grace';
interface Spec {
  K: number;
  t: number | null;
  degree: number | null;
  devices: DeviceSpec[];
  /**
   * `during` null: the jump comes once the triggering request was answered; a number: while the
   * server is still handling it (that many event-loop turns after it was forwarded), followed at once
   * by an auditor's read of the cohort (GET /v1/secagg/cohorts/:id, which sweeps timed-out cohorts).
   */
  jumps: Array<{ at: Trigger; by: JumpBy; during: number | null }>;
  restart: Trigger | null;
}

const triggerArb = (K: number): fc.Arbitrary<Trigger> => fc.record({ on: fc.constantFrom<Step>('join', 'upload', 'share'), n: fc.integer({ min: 1, max: 2 * K }) });
const fateArb: fc.Arbitrary<Fate> = fc.oneof(
  { weight: 10, arbitrary: fc.constant({ kind: 'ok' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'nohist' as const }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('cancel' as const), atPoll: fc.integer({ min: 1, max: 3 }), dropOut: fc.boolean() }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'netUpload' as const }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('lost' as const), on: fc.constantFrom('join' as const, 'upload' as const, 'confirm' as const, 'ready' as const, 'recovery' as const) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('offline' as const), from: fc.integer({ min: 1, max: 20 }), count: fc.integer({ min: 1, max: 6 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('leave' as const), after: fc.constantFrom('upload' as const, 'confirm' as const, 'ready' as const) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('late' as const), hold: fc.constantFrom(0.5, 1.5) }) },
);
const specArb: fc.Arbitrary<Spec> = fc.integer({ min: 3, max: 6 }).chain((K) =>
  fc.record({
    K: fc.constant(K),
    t: fc.oneof({ weight: 1, arbitrary: fc.constant(null) }, { weight: 3, arbitrary: fc.integer({ min: 2, max: K - 1 }) }),
    degree: fc.constantFrom(null, null, 2),
    devices: fc.array(
      fc.record({ fate: fateArb, start: fc.oneof({ weight: 6, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: triggerArb(K) }) }),
      { minLength: K, maxLength: 2 * K },
    ),
    jumps: fc.array(
      fc.record({
        at: triggerArb(K),
        by: fc.constantFrom<JumpBy>('small', 'half', 'upload', 'fill', 'grace'),
        during: fc.oneof({ weight: 2, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 12 }) }),
      }),
      { maxLength: 3 },
    ),
    restart: fc.oneof({ weight: 6, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: triggerArb(K) }),
  }),
);

// ---------------------------------------------------------------------------------------------
// The store: a MemoryStorage that records every upload it stores and every version it publishes.

class SpyStorage extends MemoryStorage {
  /** Every upload stored (nonce → how often, and when: the run's event sequence number). */
  readonly added: Array<{ nonce: string; seq: number }> = [];
  readonly publishes: Array<{ version: number; model: Uint8Array; consumed: string[]; seq: number }> = [];
  private nonceOf = new Map<number, string>();
  constructor(private readonly seq: () => number) {
    super({ keepModels: 1000 });
  }
  override async addUpdate(u: Parameters<MemoryStorage['addUpdate']>[0]) {
    const r = await super.addUpdate(u);
    if (r !== 'replayed') {
      this.nonceOf.set(r.id, u.nonce);
      this.added.push({ nonce: u.nonce, seq: this.seq() });
    }
    return r;
  }
  override async publish(...a: Parameters<MemoryStorage['publish']>) {
    const consumed = a[1].map((id) => this.nonceOf.get(id) ?? `#${id}`);
    await super.publish(...a);
    this.publishes.push({ version: a[0].version, model: a[0].model.slice(), consumed, seq: this.seq() });
  }
  async pendingNonces(): Promise<Set<string>> {
    return new Set((await this.pendingRefs()).map((u) => u.nonce));
  }
}

// ---------------------------------------------------------------------------------------------
// One run.

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const within = hangGuard(RUN_GUARD_MS);

interface Member {
  device: number;
  index: number;
  token: string;
}
interface CohortRec {
  id: string;
  gen: number;
  members: Map<number, Member>;
  /** Event number of the join that filled it. */
  filledSeq?: number;
  /** Event number at which its end (done / aborted) was first seen. */
  endSeq?: number;
  /** Members whose upload the server took (202). */
  accepted: Set<number>;
  /** Which device's upload was taken for each member index. */
  uploader: Map<number, number>;
  /** The final all-keys view (GET /v1/secagg/cohorts/:id), without keys. */
  view?: { status: string; dropped?: number[]; published?: number; reason?: string; submitted?: number; joined?: number } | 'unknown';
  /** Every `dropped` list a member view showed, by member. */
  lists: Map<number, string[]>;
  /** Recovery shares sent (and taken): sender → the dropped list it had seen. */
  shares: Map<number, number[]>;
  /** A `published` a device was told (upload or recovery reply). */
  told: number[];
}
interface Device {
  n: number;
  spec: DeviceSpec;
  controller: AbortController;
  accountant: RdpAccountant;
  requests: number;
  uploadRequests: number;
  gone: boolean;
  started: boolean;
  settled: boolean;
  result?: SyncResult;
  error?: unknown;
  lostDone: boolean;
  polls: number;
  /** The server took an upload of it (202). */
  taken: boolean;
  config?: Uint8Array;
  model?: Uint8Array;
  /** Its joins as the server answered them (a lost answer's too). */
  joins: Array<{ cohort: string; index: number }>;
  /** Its last view per cohort (member views). */
  lastView: Map<string, { status: string; dropped?: number[] }>;
  /** Last body per GET path (progress detection). */
  lastGet: Map<string, string>;
  /** Which server generation its join went to. */
  joinedGen?: number;
  log: string[];
}

const NULL_BODY = new Set([101, 204, 205, 304]);
const MEMBER_PATH = /^\/v1\/secagg\/cohorts\/([0-9a-f]{32})\/members\/(\d+)(?:\/(leave|confirm|ready|recovery))?$/;

class Run {
  t = T0;
  seq = 0;
  progress = 0;
  readonly trace: string[] = [];
  readonly violations: string[] = [];
  readonly ignored: string[] = [];
  readonly storage = new SpyStorage(() => this.seq);
  gen!: { parts: ServerParts; n: number };
  gate: Promise<void> | null = null;
  restarting: Promise<void> | null = null;
  restartSeq?: number;
  inflight = 0;
  readonly devices: Device[];
  readonly cohorts = new Map<string, CohortRec>();
  readonly counts: Record<Step, number> = { join: 0, upload: 0, share: 0 };
  /** Requests of each step forwarded to the server (attempts included): the triggers of jumps `during` one. */
  readonly sent: Record<Step, number> = { join: 0, upload: 0, share: 0 };
  /** Audits in flight (reads of a cohort's view the test makes while a request is being handled). */
  private audits: Promise<void>[] = [];
  readonly clockMoves: Array<{ seq: number; by: number; why: string }> = [];
  private waiters: Array<{ at: number; resolve: () => void }> = [];
  private promises: Promise<void>[] = [];
  step = 0;

  constructor(readonly spec: Spec) {
    this.devices = spec.devices.map((d, n) => ({
      n,
      spec: d,
      controller: new AbortController(),
      accountant: new RdpAccountant(),
      requests: 0,
      uploadRequests: 0,
      gone: false,
      started: false,
      settled: false,
      lostDone: false,
      polls: 0,
      taken: false,
      joins: [],
      lastView: new Map(),
      lastGet: new Map(),
      log: [],
    }));
  }

  fail(problem: string): void {
    const code = /^\[([a-z0-9-]+)\]/.exec(problem)?.[1];
    if (code !== undefined && IGNORE.has(code)) this.ignored.push(problem);
    else this.violations.push(problem);
    this.note(`VIOLATION ${problem}`);
  }

  note(line: string): void {
    this.trace.push(`${String(this.seq).padStart(4)} t+${this.t - T0} ${line}`);
  }

  serverOptions() {
    const { K, t, degree } = this.spec;
    return {
      storage: this.storage,
      initialTable: initialTable(),
      minClients: K,
      clip: 1,
      noiseMultiplier: 0,
      rateLimit: false as const,
      secureAggregation: { timeoutMs: FILL_MS, uploadTimeoutMs: UPLOAD_MS, ...(t !== null ? { minSurvivors: t } : {}), ...(degree !== null ? { degree } : {}) },
      now: () => this.t,
      log: () => {},
    };
  }

  advance(by: number, why: string): void {
    this.seq++;
    this.t += by;
    this.clockMoves.push({ seq: this.seq, by, why });
    this.note(`clock +${by} (${why})`);
    const due = this.waiters.filter((w) => w.at <= this.t);
    this.waiters = this.waiters.filter((w) => w.at > this.t);
    for (const w of due) w.resolve();
  }

  clockAt(at: number): Promise<void> {
    if (this.t >= at) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ at, resolve }));
  }

  /** The n-th join / accepted upload / recovery share happened: jumps, a restart, devices that start then. */
  fire(step: Step): void {
    const n = ++this.counts[step];
    const hit = (tr: Trigger | null) => tr !== null && tr.on === step && tr.n === n;
    for (const j of this.spec.jumps) {
      if (j.during !== null || !hit(j.at)) continue;
      this.advance(JUMP[j.by], `jump at ${step} ${n}`);
    }
    if (hit(this.spec.restart) && !this.restarting) this.restarting = this.restart();
    for (const d of this.devices) if (!d.started && hit(d.spec.start)) this.start(d);
  }

  async restart(): Promise<void> {
    let release!: () => void;
    this.gate = new Promise((r) => (release = r));
    this.note('restart: waiting for requests in flight');
    while (this.inflight > 0) await sleep(1);
    const old = this.gen;
    await old.parts.rounds.drain();
    // What the old process's cohorts looked like at the end (the new one knows none of them).
    for (const c of this.cohorts.values()) if (c.gen === old.n) c.view = await this.allKeysView(old.parts, c.id);
    this.gen = { parts: await createServer(this.serverOptions()), n: old.n + 1 };
    this.restartSeq = ++this.seq;
    const pending = await this.storage.pendingCount();
    this.note(`restarted (generation ${this.gen.n}); pending now ${pending}`);
    // Every cohort lived in the old process's memory: what was still pending can never complete (SERVER.md).
    if (pending > 0) this.fail(`[pending] ${pending} uploads still pending after a restart, whose cohorts it ended`);
    count('restart');
    this.gate = null;
    release();
  }

  async allKeysView(parts: ServerParts, id: string): Promise<CohortRec['view']> {
    const res = await Promise.resolve(parts.app.fetch(new Request(`http://x/v1/secagg/cohorts/${id}`)));
    if (res.status === 409) return 'unknown';
    if (res.status !== 200) {
      this.fail(`[refusal] GET /v1/secagg/cohorts/${id.slice(0, 8)} (the test's own read): ${res.status} ${await res.text()}`);
      return 'unknown';
    }
    const { keys: _k, ...v } = (await res.json()) as NonNullable<Exclude<CohortRec['view'], 'unknown'>> & { keys?: unknown };
    return v;
  }

  cohort(id: string): CohortRec {
    let c = this.cohorts.get(id);
    if (!c) {
      c = { id, gen: this.gen.n, members: new Map(), accepted: new Set(), uploader: new Map(), lists: new Map(), shares: new Map(), told: [] };
      this.cohorts.set(id, c);
    }
    return c;
  }

  fetchFor(d: Device): FetchLike {
    return async (url, init) => {
      const path = new URL(url).pathname;
      const method = init?.method ?? 'GET';
      const n = ++d.requests;
      const fate = d.spec.fate;
      const m = MEMBER_PATH.exec(path);
      const step = path === '/v1/secagg/join' ? 'join' : path === '/v1/secagg/updates' ? 'upload' : (m?.[3] as 'leave' | 'confirm' | 'ready' | 'recovery' | undefined);
      if (step === 'upload') d.uploadRequests++;
      if (d.gone) throw new TypeError('fetch failed (the device went away)');
      if (fate.kind === 'offline' && n >= fate.from && n < fate.from + fate.count) {
        d.log.push(`${method} ${path}: offline`);
        throw new TypeError('fetch failed (offline)');
      }
      if (fate.kind === 'netUpload' && step === 'upload') {
        d.log.push(`${method} ${path}: offline at its upload`);
        throw new TypeError('fetch failed (offline at its upload)');
      }
      if (fate.kind === 'late' && step === 'upload') {
        const at = this.t + fate.hold * UPLOAD_MS;
        this.note(`device ${d.n} holds its upload until t+${at - T0}`);
        await this.clockAt(at);
      }
      while (this.gate) await this.gate;
      const body = init?.body ? init.body.slice() : undefined;
      if (step === 'recovery' && m) await this.beforeShare(d, m[1]!, Number(m[2]));
      const gen = this.gen;
      const sentStep: Step | undefined = step === 'join' || step === 'upload' ? step : step === 'recovery' ? 'share' : undefined;
      if (sentStep) {
        const k = ++this.sent[sentStep];
        for (const j of this.spec.jumps) {
          if (j.during === null || j.at.on !== sentStep || j.at.n !== k) continue;
          const id = sentStep === 'upload' ? toHex(body!.subarray(8, 24)) : (m?.[1] ?? d.joins.at(-1)?.cohort);
          this.audits.push(this.during(j.during, JUMP[j.by], `jump during ${sentStep} ${k}`, gen, id));
        }
      }
      this.inflight++;
      let status: number;
      let bytes: Uint8Array;
      let headers: Headers;
      try {
        let res: Response;
        try {
          res = await Promise.resolve(gen.parts.app.fetch(new Request(url, init as RequestInit)));
        } catch (e) {
          this.fail(`[crash] app.fetch threw on ${method} ${path}: ${(e as Error)?.stack ?? String(e)}`);
          throw e;
        }
        status = res.status;
        headers = res.headers;
        bytes = new Uint8Array(await res.arrayBuffer());
      } finally {
        this.inflight--;
      }
      await this.observe(d, gen, method, path, m, step, body, status, bytes);
      if (fate.kind === 'lost' && !d.lostDone && step === fate.on) {
        d.lostDone = true;
        this.note(`device ${d.n}: the answer (${status}) to its ${method} ${path} is lost`);
        throw new TypeError('fetch failed (connection reset: the answer was lost)');
      }
      if (fate.kind === 'leave' && status < 300 && step === fate.after) {
        // Gone once this answer is back: its next request fails, and its sync stops waiting.
        d.gone = true;
        this.note(`device ${d.n} goes away after its ${step}`);
        queueMicrotask(() => d.controller.abort());
      }
      return new Response(NULL_BODY.has(status) ? null : (bytes as Uint8Array<ArrayBuffer>), { status, headers });
    };
  }

  /** `turns` event-loop turns from now: the clock jumps, and an auditor reads cohort `id`'s view at once (a sweep). */
  async during(turns: number, by: number, why: string, gen: { parts: ServerParts; n: number }, id: string | undefined): Promise<void> {
    for (let i = 0; i < turns; i++) await new Promise<void>((r) => setImmediate(r));
    this.advance(by, why);
    if (!id || gen !== this.gen) return;
    const res = await Promise.resolve(gen.parts.app.fetch(new Request(`http://x/v1/secagg/cohorts/${id}`)));
    const text = await res.text();
    this.note(`auditor: GET /v1/secagg/cohorts/${id.slice(0, 8)} → ${res.status} ${text.replace(/,"keys":\[[^\]]*\]/, '').slice(0, 160)}`);
    const ofOlderServer = this.cohorts.get(id)?.gen !== gen.n;
    if (res.status !== 200 && !(res.status === 409 && (gen !== this.gen || ofOlderServer))) this.fail(`[refusal] the auditor's GET /v1/secagg/cohorts/${id.slice(0, 8)}: ${res.status} ${text.slice(0, 200)}`);
  }

  /** Before a recovery share leaves: the server must not hold the upload of a member the sender's list names as dropped. */
  async beforeShare(d: Device, id: string, index: number): Promise<void> {
    const list = d.lastView.get(id)?.dropped ?? [];
    const held = await this.storage.pendingNonces();
    for (const x of list) {
      if (held.has(`${id}:${x}`)) this.fail(`[privacy] member ${index} (device ${d.n}) of cohort ${id.slice(0, 8)} gives its recovery share (the pair seed with ${x}) while the server holds the upload of member ${x}, listed as dropped`);
    }
  }

  async observe(d: Device, gen: { parts: ServerParts; n: number }, method: string, path: string, m: RegExpExecArray | null, step: string | undefined, body: Uint8Array | undefined, status: number, bytes: Uint8Array): Promise<void> {
    this.seq++;
    const text = new TextDecoder().decode(bytes.length > 2000 ? bytes.subarray(0, 2000) : bytes);
    let json: Record<string, unknown> | undefined;
    if (!path.endsWith('/v1/model')) {
      try {
        json = JSON.parse(text) as Record<string, unknown>;
      } catch {
        json = undefined;
      }
    }
    const reason = typeof json?.reason === 'string' ? json.reason : '';
    const what = `device ${d.n}: ${method} ${path.replace(/[0-9a-f]{32}/, (x) => x.slice(0, 8))} → ${status}${reason ? ` ${reason}` : ''}`;
    d.log.push(what);
    if (method === 'POST' || !path.includes('/members/') || d.lastGet.get(path) !== text) this.progress++;
    if (method === 'GET') d.lastGet.set(path, text);
    if (status >= 500) this.fail(`[5xx] ${what}: ${text.slice(0, 300)}`);
    const refused = (why = '') => this.fail(`[refusal] ${what}${why}: ${text.slice(0, 300)}`);
    const infoOf = async (id: string) => gen.parts.rounds.cohorts?.info(id);
    const restartedSince = (c: CohortRec | undefined) => c !== undefined && c.gen !== this.gen.n;
    /** A `409 unknown-cohort` is right only once cohort `id` left `state` (or the server restarted since it was joined). */
    const endedUnless = async (id: string, c: CohortRec | undefined, state: string) => {
      if ((await infoOf(id))?.status === state && !restartedSince(c)) refused(` (the cohort is still ${state})`);
    };
    /** An answer that says the cohort was published into a version: the version its member was told, and the cohort's end. */
    const noteTold = (c: CohortRec) => {
      const pub = (json as { published?: number } | undefined)?.published;
      if (typeof pub === 'number') {
        c.told.push(pub);
        c.endSeq ??= this.seq;
      }
    };
    if (path === '/v1/config') {
      if (status === 200) d.config = bytes;
      else if (status < 500) refused();
      return;
    }
    if (path === '/v1/model') {
      if (status === 200) d.model = bytes;
      else if (status < 500) refused();
      return;
    }
    if (step === 'join') {
      if (status !== 200) {
        if (status < 500) refused();
        return;
      }
      const j = json as { cohort: string; index: number; token: string; status: string };
      const c = this.cohort(j.cohort);
      c.members.set(j.index, { device: d.n, index: j.index, token: j.token });
      d.joins.push({ cohort: j.cohort, index: j.index });
      d.joinedGen = gen.n;
      this.note(`${what}: cohort ${j.cohort.slice(0, 8)} member ${j.index}${j.status === 'ready' ? ' (full)' : ''}`);
      if (j.status === 'ready' && c.filledSeq === undefined) c.filledSeq = this.seq;
      this.fire('join');
      return;
    }
    if (step === 'upload') {
      const id = toHex(body!.subarray(8, 24));
      const index = new DataView(body!.buffer, body!.byteOffset).getUint32(24, true);
      const c = this.cohorts.get(id);
      this.note(what);
      if (status === 202) {
        if (!c) return this.fail(`[refusal] ${what}: an upload taken for a cohort nobody joined`);
        const first = !c.accepted.has(index);
        c.accepted.add(index);
        c.uploader.set(index, d.n);
        d.taken = true;
        noteTold(c);
        if (first) this.fire('upload');
        return;
      }
      if (status === 409 && reason === 'unknown-cohort') return endedUnless(id, c, 'ready');
      if (status < 500) refused();
      return;
    }
    if (m) {
      const id = m[1]!;
      const index = Number(m[2]);
      const c = this.cohorts.get(id);
      if (!c) return this.fail(`[refusal] ${what}: a request about a cohort nobody joined`);
      if (step === undefined && method === 'GET') {
        if (status === 200) {
          const v = json as { status: string; dropped?: number[] };
          d.lastView.set(id, { status: v.status, ...(v.dropped ? { dropped: v.dropped } : {}) });
          if (v.dropped && v.status === 'recovering') c.lists.set(index, [...(c.lists.get(index) ?? []), JSON.stringify(v.dropped)]);
          if ((v.status === 'done' || v.status === 'aborted') && c.endSeq === undefined) c.endSeq = this.seq;
          if (this.spec.t === null && v.status === 'recovering') this.fail(`[privacy] ${what}: a cohort recovering on a server without recovery`);
          if ((v.status === 'forming' || v.status === 'ready') && d.uploadRequests === 0) {
            d.polls++;
            const fate = d.spec.fate;
            if (fate.kind === 'cancel' && d.polls === fate.atPoll) {
              this.note(`device ${d.n} cancels${fate.dropOut ? ' (drop out)' : ''} (cohort ${v.status})`);
              d.controller.abort(fate.dropOut ? DROP_OUT : undefined);
            }
          }
          return;
        }
        if (status === 409 && reason === 'unknown-cohort' && restartedSince(c)) return;
        if (status < 500) refused();
        return;
      }
      if (step === 'leave') {
        this.note(what);
        if (status === 200) return;
        if (status === 409 && reason === 'unknown-cohort') return endedUnless(id, c, 'forming');
        if (status < 500) refused();
        return;
      }
      // confirm / ready / recovery
      this.note(what);
      if (this.spec.t === null) this.fail(`[privacy] ${what}: a recovery step on a server without recovery`);
      if (status === 202) {
        if (step === 'recovery') {
          const first = !c.shares.has(index);
          c.shares.set(index, d.lastView.get(id)?.dropped ?? []);
          noteTold(c);
          if (first) this.fire('share');
        }
        return;
      }
      if (status === 409 && reason === 'unknown-cohort') return endedUnless(id, c, 'recovering');
      if (status < 500) refused();
      return;
    }
    if (status >= 400 && status < 500) refused();
  }

  start(d: Device): void {
    d.started = true;
    this.note(`device ${d.n} starts (${JSON.stringify(d.spec.fate)})`);
    const seed = d.n + 1;
    const fate = d.spec.fate;
    const p = syncOnce({
      serverUrl: 'http://x',
      fetch: this.fetchFor(d),
      accountant: d.accountant,
      budget: Infinity,
      history: fate.kind === 'nohist' ? [] : shopperHistory(seed, 6),
      train: { seed },
      cohortPollMs: 1,
      backoffMs: 1,
      attempts: fate.kind === 'netUpload' ? 1 : 3,
      now: () => this.t,
      signal: d.controller.signal,
    });
    this.promises.push(
      within(p, `device ${d.n}'s syncOnce (${JSON.stringify(fate)})`).then(
        (r) => {
          d.result = r;
          d.settled = true;
          this.seq++;
          this.note(`device ${d.n} resolved: sent ${r.sent}${r.cohort ? `, cohort ${r.cohort.id.slice(0, 8)} #${r.cohort.index} ${r.cohort.outcome ?? ''}${r.cohort.note ? ` (${r.cohort.note})` : ''}` : ''}`);
        },
        (e: unknown) => {
          d.error = e;
          d.settled = true;
          this.seq++;
          this.note(`device ${d.n} rejected: ${(e as Error)?.name}: ${(e as Error)?.message}`);
        },
      ),
    );
  }

  async go(): Promise<void> {
    this.gen = { parts: await createServer(this.serverOptions()), n: 0 };
    for (const d of this.devices) if (!d.spec.start) this.start(d);
    let seen = this.progress;
    let since = Date.now();
    const began = Date.now();
    while (this.devices.some((d) => !d.settled)) {
      await sleep(5);
      if (Date.now() - began > RUN_GUARD_MS) {
        const open = this.devices.filter((d) => !d.settled);
        this.fail(`[hang] devices ${open.map((d) => d.n).join(', ')} did not settle within ${RUN_GUARD_MS} ms; last requests: ${open.map((d) => `${d.n}: ${d.log.slice(-3).join(' | ')}`).join(' ;; ')}`);
        return;
      }
      if (this.gate || this.progress !== seen) {
        if (this.gate) await this.gate;
        seen = this.progress;
        since = Date.now();
        continue;
      }
      if (Date.now() - since < IDLE_MS) continue;
      const waiting = this.devices.find((d) => !d.started);
      if (waiting) this.start(waiting);
      else this.advance(UPLOAD_MS / 2, 'idle');
      since = Date.now();
    }
    await Promise.all(this.promises);
    if (this.restarting) await this.restarting;
    await Promise.all(this.audits);
    // Past every deadline (fill, upload, recovery, publish grace), not past the hour ended cohorts are kept.
    this.advance(FILL_MS + 8 * UPLOAD_MS, 'final');
    for (const c of this.cohorts.values()) if (c.gen === this.gen.n) c.view = await this.allKeysView(this.gen.parts, c.id);
    await this.gen.parts.rounds.drain();
  }

  dispose(): void {
    for (const d of this.devices) {
      d.gone = true;
      d.controller.abort(DROP_OUT);
    }
    for (const w of this.waiters) w.resolve();
  }

  /** The local model device `d` trained (its sync's result, or the same training replayed on the model it downloaded). */
  async localOf(d: Device, replay = false): Promise<{ global: ItemTable; local: ItemTable } | undefined> {
    if (d.result && !replay) return { global: d.result.global, local: d.result.local };
    if (!d.config || !d.model) return undefined;
    const config = d.config;
    const model = d.model;
    const fetch: FetchLike = async (url) =>
      url.endsWith('/v1/config') ? new Response(config as Uint8Array<ArrayBuffer>, { status: 200, headers: { 'content-type': 'application/json' } }) : new Response(model as Uint8Array<ArrayBuffer>, { status: 200 });
    const r = await pullOnce({ serverUrl: 'http://x', fetch, history: shopperHistory(d.n + 1, 6), train: { seed: d.n + 1 }, attempts: 1 });
    return r.changed ? { global: r.global, local: r.local } : undefined;
  }

  async check(): Promise<void> {
    const { K, t } = this.spec;
    const recovery = t !== null;
    const sa = this.gen.parts.rounds.config.secureAggregation!;
    const short = (id: string) => id.slice(0, 8);
    // --- devices
    for (const d of this.devices) {
      const fate = d.spec.fate;
      const who = `device ${d.n} (${JSON.stringify(fate)})`;
      if (!d.settled) continue; // [hang] already said
      if (d.error !== undefined && !isLocalrecError(d.error)) this.fail(`[outcome] ${who} rejected with an untyped error: ${(d.error as Error)?.stack ?? String(d.error)}`);
      const accepted = d.taken;
      if (fate.kind === 'nohist' && (d.error !== undefined || d.result?.sent !== false || d.joins.length > 0)) this.fail(`[outcome] ${who}: a device with nothing to learn from must resolve having sent nothing`);
      const releases = d.accountant.releases;
      if (releases > 1 || (d.uploadRequests === 0 && releases !== 0) || (d.uploadRequests > 0 && releases !== 1)) {
        this.fail(`[epsilon] ${who}: ${d.uploadRequests} upload requests, ${releases} releases recorded`);
      }
      count(`device ${fate.kind}${recovery ? ' (recovery)' : ''}: ${d.error !== undefined ? `rejected ${(d.error as Error).name}` : `resolved sent ${d.result?.sent} ${d.result?.cohort?.outcome ?? ''}`}`);
      if (d.result?.sent && !accepted) this.fail(`[outcome] ${who} resolved with sent: true, but the server took no upload of it`);
      if (d.error !== undefined && accepted && fate.kind !== 'lost') this.fail(`[outcome] ${who} rejected (${(d.error as Error).message}) although the server took its upload`);
      if (d.result?.sent && recovery) {
        const rc = d.result.cohort;
        if (!rc?.outcome) this.fail(`[outcome] ${who} resolved without its cohort's outcome: ${JSON.stringify(rc)}`);
        else {
          const c = this.cohorts.get(rc.id);
          const v = c?.view;
          const status = v === undefined || v === 'unknown' ? 'unknown' : v.status;
          const restarted = c !== undefined && this.restartSeq !== undefined && c.gen < this.gen.n;
          if (rc.outcome === 'published' && status !== 'done') this.fail(`[outcome] ${who} reports published, the cohort ${short(rc.id)} is ${status}`);
          if (rc.outcome === 'aborted' && status !== 'aborted') this.fail(`[outcome] ${who} reports aborted, the cohort ${short(rc.id)} is ${status}`);
          // A plain cancel once the cohort is full: the device uploads (SyncOptions.signal), then stops waiting ('left').
          const cancelled = fate.kind === 'cancel' && !fate.dropOut && rc.note?.startsWith('cancelled') === true;
          // A recovery step refused 409 because the cohort had just ended (its last share came with a lost
          // answer, so the retry finds it done; or the recovery deadline passed): the device stops at the
          // refusal and reports 'left', not how the cohort ended.
          const refused409 = /\/(confirm|ready|recovery) refused \(409\) unknown-cohort/.test(rc.note ?? '');
          if (rc.outcome === 'left' && refused409 && !restarted && (status === 'done' || status === 'aborted')) {
            this.fail(`[recovery-409] ${who} reports left (${rc.note}), but its cohort ${short(rc.id)} ${status === 'done' ? `was published (version ${v !== undefined && v !== 'unknown' ? v.published : '?'})` : 'was aborted'}: protocol.md says a device stays "until the cohort ends" and reports published or aborted${fate.kind === 'lost' && fate.on === 'recovery' ? ', and that the recovery share is idempotent ("the same bytes again answer 202: a retry after a lost answer")' : ''}`);
          } else if (rc.outcome === 'left' && fate.kind !== 'leave' && !cancelled && !restarted) this.fail(`[outcome] ${who} reports left (${rc.note}); cohort ${short(rc.id)} is ${status}`);
          // ... but with recovery on, uploading and then leaving sinks the cohort for sure (its share is
          // missing), where not uploading (a dropout, as DROP_OUT does) would have let it recover.
          const reason = v !== undefined && v !== 'unknown' ? (v.reason ?? '') : '';
          if (cancelled && status === 'aborted' && /recovery shares came/.test(reason) && c!.accepted.size - 1 >= t!) {
            this.fail(`[cancel-sinks] ${who}: cancelled once its cohort ${short(rc.id)} was full, it uploaded ("the other members' round depends on it", SyncOptions.signal) and then stopped waiting, so its recovery share never came and the cohort was aborted (${reason}); staying to give its share would have let it publish, and as a dropout (no upload) ${c!.accepted.size - 1} ≥ t = ${t} uploads were left to recover from`);
          }
          if (rc.note?.startsWith('refused to help recover')) this.fail(`[outcome] ${who} refused to help an honest server recover: ${rc.note}`);
        }
      }
    }
    // --- cohorts
    const pendingEnd = await this.storage.pendingNonces();
    if (pendingEnd.size > 0) this.fail(`[pending] ${pendingEnd.size} uploads still pending after every deadline: ${[...pendingEnd].map((x) => x.slice(0, 8) + x.slice(32)).join(', ')}`);
    const consumedBy = new Map<string, number>();
    for (const p of this.storage.publishes) for (const nonce of p.consumed) consumedBy.set(nonce, p.version);
    this.storage.publishes.forEach((p, i) => {
      if (p.version !== i) this.fail(`[version] publish #${i} is version ${p.version}`);
    });
    for (const c of this.cohorts.values()) {
      const v = c.view;
      const name = `cohort ${short(c.id)} (gen ${c.gen}, members ${[...c.members.values()].map((x) => `${x.index}:d${x.device}`).join(' ')}, accepted [${[...c.accepted].sort()}])`;
      if (v === undefined || v === 'unknown') {
        if (c.gen === this.gen.n) this.fail(`[stuck] ${name}: no view at the end`);
        // A cohort the restart ended: nothing of it may be published afterwards.
        for (const [nonce, version] of consumedBy) {
          if (nonce.startsWith(`${c.id}:`) && this.storage.publishes[version]!.seq > (this.restartSeq ?? Infinity)) this.fail(`[published] ${name}: ended by the restart, yet its upload ${nonce.slice(33)} went into version ${version}`);
        }
        continue;
      }
      const restartedBefore = c.gen < this.gen.n;
      if (!restartedBefore && v.status !== 'done' && v.status !== 'aborted') this.fail(`[stuck] ${name} is still ${v.status} after every deadline`);
      const mine = [...consumedBy].filter(([nonce]) => nonce.startsWith(`${c.id}:`));
      const versions = new Set(mine.map(([, ver]) => ver));
      if (v.dropped) {
        const expected = Array.from({ length: K }, (_, i) => i).filter((i) => !c.accepted.has(i));
        if (JSON.stringify([...v.dropped].sort((a, b) => a - b)) !== JSON.stringify(expected)) this.fail(`[dropped] ${name}: the view lists dropped [${v.dropped}], the members whose upload was not taken are [${expected}]`);
        for (const [member, lists] of c.lists) if (lists.some((l) => l !== JSON.stringify(v.dropped))) this.fail(`[list] ${name}: member ${member} was shown the dropped lists ${lists.join(' ')}, the cohort's is ${JSON.stringify(v.dropped)}`);
      }
      if (v.status === 'done') {
        const survivors = Array.from({ length: K }, (_, i) => i).filter((i) => !(v.dropped ?? []).includes(i));
        const got = mine.map(([nonce]) => Number(nonce.slice(33))).sort((a, b) => a - b);
        if (versions.size !== 1 || [...versions][0] !== v.published) this.fail(`[published] ${name} is done as version ${v.published}, its uploads went into versions [${[...versions]}]`);
        if (JSON.stringify(got) !== JSON.stringify(survivors)) this.fail(`[published] ${name}: version ${v.published} consumed members [${got}], its survivors are [${survivors}]`);
        for (const told of c.told) if (v.published !== undefined && told < v.published) this.fail(`[published] ${name}: a device was told version ${told} was published, the cohort's is ${v.published}`);
        if (!recovery && v.dropped) this.fail(`[published] ${name}: a dropped list without recovery`);
      } else if (mine.length > 0 && v.status === 'aborted' && /could not be published/.test(v.reason ?? '')) {
        // The sweep aborted it at its publish deadline while its aggregation was already past its last
        // status check: the version went out, the cohort says "could not be published".
        this.fail(`[aborted-published] ${name} is aborted (${v.reason}), yet its uploads of members [${mine.map(([n]) => n.slice(33))}] went into version ${[...versions]}: the version was published and every member that waited reports 'aborted'`);
      } else if (mine.length > 0) this.fail(`[published] ${name} is ${v.status}${v.reason ? ` (${v.reason})` : ''}, yet its uploads of members [${mine.map(([n]) => n.slice(33))}] went into versions [${[...versions]}]`);
      // [privacy]: what the recovery shares gave out, member by member.
      const pair = new Map<number, number[]>();
      const self = new Map<number, number[]>();
      for (const [sender, list] of c.shares) {
        for (const j of maskNeighbours(sender, K, sa.degree)) {
          const into = list.includes(j) ? pair : self;
          into.set(j, [...(into.get(j) ?? []), sender]);
        }
        if ((v.dropped ?? []).includes(sender)) this.fail(`[privacy] ${name}: member ${sender}, listed as dropped, gave a recovery share`);
      }
      if (c.shares.size > 0) count(`cohort whose recovery shares were checked (${pair.size ? 'pair seeds and self-mask shares' : 'self-mask shares only'})`);
      for (const [j, from] of pair) if (self.has(j)) this.fail(`[privacy] ${name}: the server got member ${j}'s pair seeds (from ${from}) and shares of its self-mask (from ${self.get(j)})`);
      // (An upload of a member listed as dropped may be stored for a moment and deleted again, if its cohort
      // moved to recovery while it was being stored: counted, not a violation; the check before each share
      // above is what the docs promise.)
      for (const x of v.dropped ?? []) if (this.storage.added.some((a) => a.nonce === `${c.id}:${x}`)) count('a dropped member\'s upload was stored for a moment');
      count(`cohort ${v.status}${recovery ? ' (recovery)' : ''}${v.dropped?.length ? ` with ${v.dropped.length} dropped` : ''}${v.reason ? `: ${v.reason.replace(/\d+/g, 'N')}` : ''}`);
      // [clean]
      const members = [...c.members.values()];
      const allOk = members.length === K && members.every((x) => this.devices[x.device]!.spec.fate.kind === 'ok') && new Set(members.map((x) => x.device)).size === K;
      const from = c.filledSeq;
      const to = c.endSeq ?? Infinity;
      const moved = from === undefined || this.clockMoves.some((mv) => mv.seq > from && mv.seq < to) || (this.restartSeq !== undefined && this.restartSeq > from && this.restartSeq < to);
      if (allOk && !moved && !restartedBefore) count('clean cohort checked');
      if (allOk && !moved && !restartedBefore && (v.status !== 'done' || (v.dropped ?? []).length > 0)) this.fail(`[clean] ${name}: all members completing, no clock move, yet it is ${v.status}${v.reason ? ` (${v.reason})` : ''} dropped [${v.dropped ?? ''}]`);
      if (v.status === 'aborted' && [...pendingEnd].some((nonce) => nonce.startsWith(`${c.id}:`))) this.fail(`[published] ${name} aborted but left uploads pending`);
    }
    // The replay of a device's training (used for members whose sync rejected) is what the device trained.
    const sample = this.devices.find((d) => d.result?.sent);
    if (sample) {
      const again = await this.localOf(sample, true);
      const same = again !== undefined && again.local.factors.every((x, i) => x === sample.result!.local.factors[i]) && again.local.bias.every((x, i) => x === sample.result!.local.bias[i]);
      if (!same) this.fail(`[replay] device ${sample.n}'s training replayed on the model it downloaded differs from what its sync trained`);
    }
    // --- [mean]: each version = the previous + the mean of its consumed members' clipped deltas.
    for (const p of this.storage.publishes.slice(1)) {
      const prev = this.storage.publishes[p.version - 1];
      if (!prev || prev.model.length === 0) continue;
      const before = decodeModel(prev.model).table;
      const next = decodeModel(p.model).table;
      const deltas: Float64Array[] = [];
      for (const nonce of p.consumed) {
        const [id, idx] = [nonce.slice(0, 32), Number(nonce.slice(33))];
        const uploader = this.cohorts.get(id)?.uploader.get(idx);
        const d = uploader === undefined ? undefined : this.devices[uploader];
        const trained = d && (await this.localOf(d));
        if (!trained) {
          this.fail(`[mean] version ${p.version}: no device known for member ${idx} of cohort ${short(id)}`);
          break;
        }
        const delta = itemDelta(trained.global, trained.local);
        clipL2(delta, 1);
        deltas.push(delta);
      }
      if (deltas.length !== p.consumed.length) continue;
      const nf = before.factors.length;
      let worst = 0;
      let at = -1;
      for (let i = 0; i < deltas[0]!.length; i++) {
        const mean = deltas.reduce((s, x) => s + x[i]!, 0) / deltas.length;
        const got = i < nf ? next.factors[i]! - before.factors[i]! : next.bias[i - nf]! - before.bias[i - nf]!;
        const err = Math.abs(got - mean);
        if (err > worst) [worst, at] = [err, i];
      }
      count(`version checked against the mean of ${deltas.length} members`);
      if (worst > sa.step + 1e-6) this.fail(`[mean] version ${p.version} (members ${p.consumed.map((x) => x.slice(0, 8) + x.slice(32)).join(' ')}): coordinate ${at} is off the mean of the clipped deltas by ${worst} (step ${sa.step})`);
    }
  }
}

async function runOne(spec: Spec): Promise<void> {
  const run = new Run(spec);
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => void unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  try {
    await within(run.go(), 'the run');
    await run.check();
  } catch (e) {
    run.fail(`[hang] ${(e as Error)?.stack ?? String(e)}`);
  } finally {
    run.dispose();
    await sleep(0);
    process.off('unhandledRejection', onUnhandled);
  }
  for (const u of unhandled) run.fail(`[unhandled] ${(u as Error)?.stack ?? String(u)}`);
  if (VERBOSE || run.violations.length) {
    const body = `--- ${JSON.stringify(spec)}\n    ${run.trace.join('\n    ')}`;
    if (VERBOSE) console.log(body);
    for (const x of run.ignored) console.log(`(ignored) ${x}`);
    if (run.violations.length) assert.fail(`${run.violations.join('\n')}\n${body}`);
  } else for (const x of run.ignored) console.log(`(ignored) ${x}`);
}

describe('secure aggregation with dropout recovery: stateful model-based test (real devices, in-process server, random fates and clock jumps)', () => {
  after(() => {
    if (STATS) console.log([...stats].sort().map(([k, v]) => `${String(v).padStart(6)}  ${k}`).join('\n'));
  });
  it(`${RUNS} runs of K..2K devices keep the cohort protocol's invariants`, { timeout: 30 * 60_000 }, async () => {
    if (SPEC) {
      // One given run (a counterexample, as printed), RUNS times: the interleavings differ from try to try.
      for (let i = 0; i < RUNS; i++) await runOne(JSON.parse(SPEC) as Spec);
      return;
    }
    await fc.assert(
      fc.asyncProperty(specArb, (spec) => runOne(spec)),
      { numRuns: RUNS, ...(SEED !== undefined ? { seed: SEED } : {}), includeErrorInReport: true, ...(NO_SHRINK ? { endOnFailure: true } : {}) },
    );
  });
});
