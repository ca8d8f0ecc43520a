/**
 * Secure aggregation's sums taken one upload at a time: {@link MaskedSum} is `unmaskSum`, and
 * {@link RecoveredSum} `unmaskRecovered` (src/federated/secagg.ts), with the cohort's uploads added
 * as the round coordinator reads them from the store, so that a round holds one decoded upload
 * (4 bytes per coordinate) and the sum, not all K of them. Sums modulo 2^b are exact, so the
 * result is the same whatever the order; they add in the cohort's order all the same.
 * server-aggregate-stream.test.ts checks that both agree with the functions they mirror.
 */
import {
  addMod,
  combineShares,
  decodeFixedPoint,
  maskFromSeed,
  maskNeighbours,
  PAIR_SEED_BYTES,
  recoveryShareBytes,
  selfMaskThreshold,
  sharePosition,
  sortedNeighbours,
  type MaskedUpdate,
  type SecAggParams,
} from '../federated/secagg.js';

/** `unmaskSum`, one upload at a time: the K uploads of a cohort summed modulo 2^b (their masks cancel). */
export class MaskedSum {
  protected acc: Uint32Array | null = null;
  protected bits = 0;

  /** Adds the next upload. */
  add(u: MaskedUpdate): void {
    this.start(u);
    addMod(this.acc!, u.values, this.bits);
  }

  protected start(u: MaskedUpdate): void {
    if (this.acc) return;
    this.acc = new Uint32Array(u.values.length);
    this.bits = u.bits;
  }

  /** The sum as real numbers (each coordinate a signed b-bit integer times `step`). */
  result(step: number): Float64Array {
    if (!this.acc) throw new RangeError('no updates to sum');
    return decodeFixedPoint(this.acc, step, this.bits);
  }
}

/**
 * `unmaskRecovered`, one upload at a time: each surviving member's upload, minus the masks it
 * shared with dropped members (seeds from its recovery share) and minus its self-mask (its seed put
 * together from the shares its surviving neighbours gave back).
 */
export class RecoveredSum extends MaskedSum {
  private readonly gone: Set<number>;

  constructor(
    private readonly shares: ReadonlyMap<number, Uint8Array>,
    private readonly dropped: readonly number[],
    private readonly params: SecAggParams,
  ) {
    super();
    this.gone = new Set(dropped);
  }

  private part(holder: number, of: number): Uint8Array {
    const K = this.params.cohortSize;
    const share = this.shares.get(holder);
    const p = sharePosition(holder, of, K, this.params.degree);
    if (!share || p < 0 || share.length !== recoveryShareBytes(holder, K, this.params.degree, this.dropped)) {
      throw new RangeError(`member ${holder} has no recovery share for its ${maskNeighbours(holder, K, this.params.degree).length} mask neighbours`);
    }
    return share.subarray(p * PAIR_SEED_BYTES, (p + 1) * PAIR_SEED_BYTES);
  }

  /** Adds the next survivor's upload, its masks taken off. */
  async addRecovered(u: MaskedUpdate): Promise<void> {
    this.start(u);
    const acc = this.acc!;
    const bits = this.bits;
    const gone = this.gone;
    addMod(acc, u.values, bits);
    const neighbours = sortedNeighbours(u.index, this.params.cohortSize, this.params.degree);
    for (const i of neighbours.filter((j) => gone.has(j))) {
      // Member u added the mask when u < i and subtracted it when u > i: undo that.
      addMod(acc, await maskFromSeed(this.part(u.index, i), acc.length, bits), bits, u.index < i ? -1 : 1);
    }
    // Its self-mask: the seed from the shares its surviving neighbours opened (share x = their place + 1).
    const points = neighbours.flatMap((i, p) => (gone.has(i) ? [] : [{ x: p + 1, y: this.part(i, u.index) }]));
    const h = selfMaskThreshold(neighbours.length);
    if (points.length < h) throw new RangeError(`member ${u.index}'s self-mask needs ${h} shares, ${points.length} came`);
    const seed = combineShares(points.slice(0, h));
    addMod(acc, await maskFromSeed(seed, acc.length, bits), bits, -1);
  }
}
