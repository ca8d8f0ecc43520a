/**
 * The server's metrics for Prometheus (`localrec serve --metrics`: `GET /metrics`), in the text
 * exposition format (version 0.0.4), written by hand: a few counters, gauges and one histogram need
 * no client library. Only totals: no label ever holds a client address, a nonce, a token, a cohort
 * id or a member index. Every label value comes from a fixed list in this file or from the app's
 * own route patterns (`/v1/secagg/cohorts/:id`, never the path a client sent), so a client cannot
 * add series.
 */
import { REJECT_STATUS } from './validate-update.js';
import type { CohortStatus } from './cohorts.js';

/** What an upload route counts: plain updates, masked uploads, secure-aggregation joins. */
export type UploadKind = 'plain' | 'masked' | 'join';

/** The outcome labels of {@link UploadKind} counts: `accepted`, or the `reason` of the refusal's body. */
export const UPLOAD_RESULTS: readonly string[] = ['accepted', ...Object.keys(REJECT_STATUS), 'storage-unavailable', 'settings-changed', 'internal'];

/** Request duration buckets, in seconds. */
export const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;

const METHODS = new Set(['GET', 'HEAD', 'POST', 'OPTIONS', 'PUT', 'DELETE', 'PATCH']);

/** The method as a label: one of the usual ones, else `other`. */
export function methodLabel(method: string): string {
  return METHODS.has(method) ? method : 'other';
}

/** The state the server's gauges read when `/metrics` is asked for. */
export interface MetricsState {
  version: number;
  /** When the current version was published (ms since the epoch). */
  publishedAt: number;
  pending: number;
  /** Aggregations that failed (not counting a peer publishing first) since the process started. */
  roundFailures: number;
  /** Since when rounds fail (ms since the epoch), or undefined when the last one succeeded. */
  failingSince: number | undefined;
  storageUp: boolean;
  /** Under secure aggregation, cohorts by state (from a cohort store that can count them). */
  cohorts?: Partial<Record<CohortStatus, number>> | undefined;
  /** Under secure aggregation, cohorts that this process saw time out or abort. */
  cohortsAborted?: number;
}

interface Histogram {
  buckets: number[];
  sum: number;
  count: number;
}

/** Escapes a label value for the text format (backslash, double quote, newline). */
export function labelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function labels(l: Record<string, string>): string {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${labelValue(v)}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
}

/** A number as the text format writes it. */
function num(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/**
 * The counters the app adds to as requests are answered, and the exposition of them with the
 * gauges read from {@link MetricsState}.
 *
 * @example
 * ```ts
 * const m = new ServerMetrics(['plain']);
 * m.countUpload('plain', 'stale');
 * m.observeRequest('POST', '/v1/updates', 409, 0.004);
 * m.render({ version: 3, publishedAt: Date.now(), pending: 1, roundFailures: 0, failingSince: undefined, storageUp: true });
 * ```
 */
export class ServerMetrics {
  private uploads = new Map<string, number>();
  private requests = new Map<string, number>();
  private durations = new Map<string, Histogram>();

  /** `kinds`: the upload routes this server takes, whose outcomes are listed (at 0) from the start. */
  constructor(readonly kinds: readonly UploadKind[]) {
    for (const k of kinds) for (const r of UPLOAD_RESULTS) this.uploads.set(`${k}\u0000${r}`, 0);
  }

  /** One answered upload or join: `result` is `accepted` or the refusal's reason (another value counts as `other`). */
  countUpload(kind: UploadKind, result: string): void {
    const key = `${kind}\u0000${UPLOAD_RESULTS.includes(result) ? result : 'other'}`;
    this.uploads.set(key, (this.uploads.get(key) ?? 0) + 1);
  }

  /** One answered request: `route` is the app's route pattern, never the path sent. */
  observeRequest(method: string, route: string, status: number, seconds: number): void {
    const m = methodLabel(method);
    const key = `${m}\u0000${route}\u0000${status}`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
    const hk = `${m}\u0000${route}`;
    let h = this.durations.get(hk);
    if (!h) this.durations.set(hk, (h = { buckets: DURATION_BUCKETS.map(() => 0), sum: 0, count: 0 }));
    for (let i = 0; i < DURATION_BUCKETS.length; i++) if (seconds <= DURATION_BUCKETS[i]!) h.buckets[i]!++;
    h.sum += seconds;
    h.count++;
  }

  /** The exposition: `text/plain; version=0.0.4`. */
  render(s: MetricsState): string {
    const out: string[] = [];
    const head = (name: string, type: string, help: string) => out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    const line = (name: string, l: Record<string, string>, v: number) => out.push(`${name}${labels(l)} ${num(v)}`);

    head('localrec_updates_total', 'counter', 'Uploads answered, by kind (plain update, masked upload, secure-aggregation join) and result (accepted, or the reason code of the refusal).');
    for (const [key, v] of [...this.uploads].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const [kind, result] = key.split('\u0000') as [string, string];
      line('localrec_updates_total', { kind, result }, v);
    }
    head('localrec_model_version', 'gauge', 'The current published model version.');
    line('localrec_model_version', {}, s.version);
    head('localrec_last_publish_timestamp_seconds', 'gauge', 'When the current version was published (seconds since the epoch).');
    line('localrec_last_publish_timestamp_seconds', {}, s.publishedAt / 1000);
    head('localrec_pending_updates', 'gauge', 'Accepted updates waiting for a round.');
    line('localrec_pending_updates', {}, s.pending);
    head('localrec_round_failures_total', 'counter', 'Aggregations that failed since the process started (retried at most once a second).');
    line('localrec_round_failures_total', {}, s.roundFailures);
    head('localrec_round_failing_since_timestamp_seconds', 'gauge', 'Since when rounds fail (seconds since the epoch); 0 while the last round succeeded.');
    line('localrec_round_failing_since_timestamp_seconds', {}, s.failingSince === undefined ? 0 : s.failingSince / 1000);
    head('localrec_storage_up', 'gauge', '1 while the server can store (what /v1/health answers 200 for), 0 while it cannot.');
    line('localrec_storage_up', {}, s.storageUp ? 1 : 0);
    if (s.cohorts) {
      head('localrec_cohorts', 'gauge', 'Secure-aggregation cohorts by state (ended ones are kept for an hour).');
      for (const state of ['forming', 'ready', 'recovering', 'done', 'aborted'] as const) line('localrec_cohorts', { state }, s.cohorts[state] ?? 0);
    }
    if (s.cohortsAborted !== undefined) {
      head('localrec_cohorts_aborted_total', 'counter', 'Secure-aggregation cohorts this process ended unpublished (timed out, or too few uploads or shares).');
      line('localrec_cohorts_aborted_total', {}, s.cohortsAborted);
    }
    head('localrec_http_requests_total', 'counter', 'HTTP requests answered, by method, route pattern and status.');
    for (const [key, v] of this.requests) {
      const [method, route, status] = key.split('\u0000') as [string, string, string];
      line('localrec_http_requests_total', { method, route, status }, v);
    }
    head('localrec_http_request_duration_seconds', 'histogram', 'Time to answer a request (to the response headers), by method and route pattern.');
    for (const [key, h] of this.durations) {
      const [method, route] = key.split('\u0000') as [string, string];
      DURATION_BUCKETS.forEach((le, i) => line('localrec_http_request_duration_seconds_bucket', { method, route, le: String(le) }, h.buckets[i]!));
      line('localrec_http_request_duration_seconds_bucket', { method, route, le: '+Inf' }, h.count);
      line('localrec_http_request_duration_seconds_sum', { method, route }, h.sum);
      line('localrec_http_request_duration_seconds_count', { method, route }, h.count);
    }
    return `${out.join('\n')}\n`;
  }
}
