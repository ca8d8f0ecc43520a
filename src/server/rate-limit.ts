/**
 * Per-client token buckets. A client is its remote address: updates carry no client id on purpose
 * (an id would link one shopper's updates across rounds). {@link RateLimiter} keeps the buckets in
 * this process; a store several processes share keeps them there (`Storage.rateLimiter`, the
 * PostgreSQL adapter), so the limit holds across the instances behind a load balancer.
 */

/**
 * Takes a token from a client's bucket: true when the request may go on. `cost` (default 1) is the
 * part of a token to take: a bucket whose requests each cost 1/m lets m times as many through, at
 * the same burst and rate otherwise, so one set of options (one table, one purge) serves the
 * buckets of single clients and those of the IPv6 networks they share ({@link rateLimitKeys}). A
 * limiter that ignores `cost` takes a whole token: the network's bucket then lets no more through
 * than one client's.
 */
export interface RateLimit {
  take(key: string, cost?: number): boolean | Promise<boolean>;
}

export interface RateLimitOptions {
  /** Sustained requests per minute per client. */
  perMinute: number;
  /** Requests a client may send at once before the sustained rate applies. */
  burst: number;
}

/**
 * Buckets in this process's memory, timed on a monotonic clock (`now`: ms, only differences
 * count): they are this process's alone, and on the wall clock a step back of X stopped the
 * refill and the forgetting of full buckets for X (and once 100,000 addresses were kept, every
 * bucket was cleared at each new one, limits and all).
 *
 * @example
 * ```ts
 * const rl = new RateLimiter({ perMinute: 60, burst: 10 }, () => performance.now());
 * rl.take('127.0.0.1'); // true until the bucket is empty
 * ```
 */
export class RateLimiter implements RateLimit {
  private buckets = new Map<string, { tokens: number; at: number }>();
  private static readonly MAX_CLIENTS = 100_000;
  /** Buckets that have refilled are forgotten at most this often (with the address they are keyed by). */
  private static readonly PURGE_MS = 10_000;
  private lastPurge = -Infinity;

  constructor(
    private readonly opts: RateLimitOptions,
    /** A monotonic clock in ms (`performance.now()`; `localrec serve` passes its own). */
    private readonly now: () => number,
  ) {}

  /** Takes `cost` tokens (default one) for `key`; false when the client must wait. */
  take(key: string, cost = 1): boolean {
    const b = this.bucket(key);
    if (b.tokens < cost) return false;
    b.tokens -= cost;
    return true;
  }

  /** Whether `key`'s bucket holds `cost` tokens now, taking none (and keeping no bucket for a key it has none of). */
  has(key: string, cost = 1): boolean {
    const b = this.bucket(key, false);
    return b === undefined ? cost <= this.opts.burst : b.tokens >= cost;
  }

  /** `key`'s bucket, refilled up to now (a new, full one for a key not seen while it held debt, unless `create` is false). */
  private bucket(key: string): { tokens: number; at: number };
  private bucket(key: string, create: false): { tokens: number; at: number } | undefined;
  private bucket(key: string, create = true): { tokens: number; at: number } | undefined {
    const t = this.now();
    const rate = this.opts.perMinute / 60_000;
    // A client's address is kept only while its bucket holds debt (at most burst / rate, 20 s at
    // the defaults), not for the life of the process.
    if (t - this.lastPurge > RateLimiter.PURGE_MS) this.forgetRefilled(t, rate);
    let b = this.buckets.get(key);
    if (!b) {
      if (!create) return undefined;
      // Bound memory under address churn (many new clients within one purge period).
      if (this.buckets.size >= RateLimiter.MAX_CLIENTS) {
        this.forgetRefilled(t, rate);
        if (this.buckets.size >= RateLimiter.MAX_CLIENTS) this.buckets.clear();
      }
      b = { tokens: this.opts.burst, at: t };
      this.buckets.set(key, b);
    }
    b.tokens = Math.min(this.opts.burst, b.tokens + Math.max(0, t - b.at) * rate);
    b.at = t;
    return b;
  }

  /** Forgets the buckets that have refilled by `t` (they hold no debt), and their addresses. */
  private forgetRefilled(t: number, rate: number): void {
    this.lastPurge = t;
    for (const [k, v] of this.buckets) if (v.tokens + (t - v.at) * rate >= this.opts.burst) this.buckets.delete(k);
  }
}

/**
 * The rate limit's key for a client address: an IPv4 address as it is (an IPv4-mapped IPv6 one,
 * `::ffff:203.0.113.7`, or a NAT64 one, `64:ff9b::203.0.113.7`, as its IPv4 address), an IPv6
 * address by its /64 prefix. One IPv6 host
 * usually holds a whole /64 and can pick a new address in it for every request: keyed on the full
 * address, each would get a fresh burst. Anything else (not an address) is kept as it is.
 *
 * @example
 * ```ts
 * rateLimitKey('2001:db8:1:2::7');          // '2001:db8:1:2::/64'
 * rateLimitKey('2001:0db8:1:2:aa:bb:cc:dd'); // '2001:db8:1:2::/64'
 * rateLimitKey('::ffff:203.0.113.7');        // '203.0.113.7'
 * ```
 */
export function rateLimitKey(address: string): string {
  // A proxy may append the port it saw (`203.0.113.7:51234`, `[2001:db8::1]:443`): a port is no
  // part of the client, and each connection would otherwise get a fresh bucket.
  const trimmed = address.trim();
  const v4port = /^(\d{1,3}(?:\.\d{1,3}){3}):\d+$/.exec(trimmed);
  if (v4port) return v4port[1]!;
  const a = trimmed.replace(/^\[([^\]]*)\](?::\d+)?$/, '$1').replace(/%.*$/, '');
  if (!a.includes(':')) return a === trimmed ? address : a;
  // An embedded IPv4 tail (::1.2.3.4) counts as two groups.
  const v4 = /(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(a);
  const text = v4 ? a.slice(0, v4.index) + (((+v4[1]! << 8) | +v4[2]!) >>> 0).toString(16) + ':' + (((+v4[3]! << 8) | +v4[4]!) >>> 0).toString(16) : a;
  const halves = text.split('::');
  if (halves.length > 2) return address;
  const head = halves[0] ? halves[0].split(':') : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  const fill = halves.length === 2 ? 8 - head.length - tail.length : 0;
  if (fill < 0) return address;
  const groups = [...head, ...Array<string>(fill).fill('0'), ...tail];
  if (groups.length !== 8 || !groups.every((g) => /^[0-9a-f]{1,4}$/i.test(g))) return address;
  const n = groups.map((g) => parseInt(g, 16));
  // IPv4-mapped (::ffff:0:0/96) and NAT64's well-known prefix (64:ff9b::/96) carry one IPv4 host
  // each, written dotted or in hex (`64:ff9b::cb00:7107`, as Node prints it).
  const prefix = n.slice(0, 6).join(':');
  if (prefix === '0:0:0:0:0:65535' || prefix === '100:65435:0:0:0:0') return `${n[6]! >> 8}.${n[6]! & 255}.${n[7]! >> 8}.${n[7]! & 255}`;
  return `${n.slice(0, 4).map((g) => g.toString(16)).join(':')}::/64`;
}

/**
 * How many clients' worth of requests one IPv6 network of {@link IPV6_NETWORK_PREFIX} bits may send
 * (its bucket's requests each cost 1/this of a token: the same burst and rate, this many times over).
 */
export const IPV6_NETWORK_SHARE = 16;
/**
 * The IPv6 network a /64 is counted in as well: a /48, what a site, a business line or a free tunnel
 * broker hands out (65,536 /64s, each its own client otherwise). A /56, the usual home delegation,
 * would leave such a holder 256 networks, each with the network's allowance.
 */
export const IPV6_NETWORK_PREFIX = 48;

/** A bucket a request takes from, and the part of a token it takes ({@link RateLimit.take}). */
export interface RateLimitBucket {
  key: string;
  cost: number;
}

/**
 * The buckets a request from `address` takes from, all of which must have a token: its client's
 * ({@link rateLimitKey}); for an IPv6 client also its /48's, whose allowance is
 * {@link IPV6_NETWORK_SHARE} clients' (each request costs 1/16 of a token there). Without it one
 * /48 held 65,536 separate limits. The network's limit is still 16 times one IPv4 address's, which
 * behind a carrier's NAT is shared by far more devices than a /48 usually holds.
 *
 * @example
 * ```ts
 * rateLimitKeys('2001:db8:1:2::7'); // [{ key: '2001:db8:1:2::/64', cost: 1 }, { key: '2001:db8:1::/48', cost: 0.0625 }]
 * rateLimitKeys('203.0.113.7');     // [{ key: '203.0.113.7', cost: 1 }]
 * ```
 */
export function rateLimitKeys(address: string): RateLimitBucket[] {
  const key = rateLimitKey(address);
  const m = /^([0-9a-f]{1,4}):([0-9a-f]{1,4}):([0-9a-f]{1,4}):[0-9a-f]{1,4}::\/64$/.exec(key);
  if (!m) return [{ key, cost: 1 }];
  return [
    { key, cost: 1 },
    { key: `${m[1]}:${m[2]}:${m[3]}::/${IPV6_NETWORK_PREFIX}`, cost: 1 / IPV6_NETWORK_SHARE },
  ];
}

/**
 * Takes a token from each of `buckets` in turn, stopping at the first that has none: true when the
 * request may go on. (A network's bucket is not charged for a client its own bucket refused.)
 */
export async function takeAll(limit: RateLimit, buckets: readonly RateLimitBucket[]): Promise<boolean> {
  for (const b of buckets) if (!(await limit.take(b.key, b.cost))) return false;
  return true;
}
