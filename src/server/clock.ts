/**
 * The server's two clocks. The wall clock (`now`, ms since the epoch) stamps what is written to the
 * store and what several processes sharing it compare: versions' and updates' times, PostgreSQL's
 * cohort deadlines and rate-limit buckets. Intervals one process measures for itself (how long ago
 * it last looked at a shared store, probed a failed store, swept cohorts or retried a round; its
 * own cohorts' deadlines in memory; its in-memory rate-limit buckets) use a monotonic clock
 * instead: on the wall clock, a clock stepped back by X (an NTP correction, a VM resumed) stopped
 * each of them for X (a read-only process stopped catching up, `/v1/health` kept reporting a storage
 * fault, the rate limiter stopped forgetting addresses).
 */

/** Milliseconds on a monotonic clock (only differences mean anything): `performance.now()`. */
export function monotonicNow(): number {
  return performance.now();
}

/**
 * A clock that moves forward as `wall` does and stands still when `wall` goes back: the monotonic
 * clock derived from an injected wall clock (tests that drive `now` alone drive the intervals
 * with it, and a step back of it stops none of them). Starts at 0.
 *
 * @example
 * ```ts
 * let t = 1_000; const c = steadyClock(() => t);
 * t += 500; c(); // 500
 * t -= 10_000; c(); // 500
 * t += 200; c(); // 700
 * ```
 */
export function steadyClock(wall: () => number): () => number {
  let last = wall();
  let elapsed = 0;
  return () => {
    const w = wall();
    if (w > last) elapsed += w - last;
    last = w;
    return elapsed;
  };
}
