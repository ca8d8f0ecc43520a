/**
 * Per-client token buckets. A client is its remote address: updates carry no client id on purpose
 * (an id would link one shopper's updates across rounds). {@link RateLimiter} keeps the buckets in
 * this process; a store several processes share keeps them there (`Storage.rateLimiter`, the
 * PostgreSQL adapter), so the limit holds across the instances behind a load balancer.
 */

/** Takes a token from a client's bucket: true when the request may go on. */
export interface RateLimit {
  take(key: string): boolean | Promise<boolean>;
}

export interface RateLimitOptions {
  /** Sustained requests per minute per client. */
  perMinute: number;
  /** Requests a client may send at once before the sustained rate applies. */
  burst: number;
}

/**
 * @example
 * ```ts
 * const rl = new RateLimiter({ perMinute: 60, burst: 10 }, () => Date.now());
 * rl.take('127.0.0.1'); // true until the bucket is empty
 * ```
 */
export class RateLimiter implements RateLimit {
  private buckets = new Map<string, { tokens: number; at: number }>();
  private static readonly MAX_CLIENTS = 100_000;

  constructor(
    private readonly opts: RateLimitOptions,
    private readonly now: () => number,
  ) {}

  /** Takes one token for `key`; false when the client must wait. */
  take(key: string): boolean {
    const t = this.now();
    const rate = this.opts.perMinute / 60_000;
    let b = this.buckets.get(key);
    if (!b) {
      // Bound memory under address churn: forget buckets that have refilled (they hold no debt).
      if (this.buckets.size >= RateLimiter.MAX_CLIENTS) {
        for (const [k, v] of this.buckets) if (v.tokens + (t - v.at) * rate >= this.opts.burst) this.buckets.delete(k);
        if (this.buckets.size >= RateLimiter.MAX_CLIENTS) this.buckets.clear();
      }
      b = { tokens: this.opts.burst, at: t };
      this.buckets.set(key, b);
    }
    b.tokens = Math.min(this.opts.burst, b.tokens + Math.max(0, t - b.at) * rate);
    b.at = t;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}
