import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import fc from 'fast-check';
import { buildClientUpdate } from '../../src/federated/client-update.js';
import {
  chooseBits,
  decodeModel,
  decodeUpdate,
  dequantizeUpdate,
  encodeModel,
  encodeUpdate,
  levelsFor,
  scaleCount,
  sha256,
  toHex,
  fromHex,
  updateByteLength,
  UPDATE_BUDGET_BYTES,
  WireFormatError,
  type QuantizedUpdate,
} from '../../src/federated/wire.js';
import { createItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';

function sampleUpdate(n: number, dim: number, bits: number, blockSize: number, seed = 1): QuantizedUpdate {
  const rng = new Random(seed);
  const L = levelsFor(bits);
  const codes = new Uint8Array(n * (dim + 1));
  for (let i = 0; i < codes.length; i++) codes[i] = rng.int(2 * L + 1);
  const scales = new Float32Array(scaleCount(n, dim, blockSize));
  for (let i = 0; i < scales.length; i++) scales[i] = rng.next() * 3;
  const baseHash = new Uint8Array(32).map((_, i) => i);
  const nonce = new Uint8Array(16).map((_, i) => 200 + i);
  return { header: { bits, dim, itemCount: n, baseVersion: 7, blockSize, clip: 1.5, noiseMultiplier: 0.75, baseHash, nonce }, scales, codes };
}

test('update round-trips through encode/decode for every bit width', () => {
  for (let bits = 2; bits <= 8; bits++) {
    const u = sampleUpdate(37, 5, bits, 16, bits);
    const bytes = encodeUpdate(u);
    assert.equal(bytes.length, updateByteLength(37, 5, bits, 16));
    const back = decodeUpdate(bytes);
    assert.deepEqual(back.header, u.header);
    assert.deepEqual(back.scales, u.scales);
    assert.deepEqual(back.codes, u.codes);
  }
});

test('dequantize maps code L to 0 and the extremes to ±scale', () => {
  const u = sampleUpdate(2, 3, 3, 4);
  u.codes.set([0, 3, 6, 3, 6, 3, 6, 0]); // L = 3; blocks: factors 0..3, factors 4..5, biases
  u.scales.set([2, 1, 0.5]);
  const v = dequantizeUpdate(u);
  assert.deepEqual([...v], [-2, 0, 2, 0, 1, 0, 0.5, -0.5]);
});

test('measured: a 4,000-item update fits the 64 KiB budget (dim 32 → 3 bits, 51,644 bytes; dim 16 → 7 bits, 60,644 bytes)', () => {
  assert.equal(chooseBits(4000, 32), 3);
  assert.equal(updateByteLength(4000, 32, 3), 51_644);
  assert.equal(updateByteLength(4000, 32, 4), 68_144); // 4 bits would not fit
  assert.equal(chooseBits(4000, 16), 7);
  assert.equal(updateByteLength(4000, 16, 4), 35_144);
  const ids = Array.from({ length: 4000 }, (_, i) => `sku-${i}`);
  const base = createItemTable(ids, 32, { seed: 3 });
  const local = createItemTable(ids, 32, { seed: 4 });
  const { bytes, bits } = buildClientUpdate(base, local, { baseHash: new Uint8Array(32), clip: 1, noiseMultiplier: 1 });
  assert.equal(bits, 3);
  assert.equal(bytes.length, 51_644);
  assert.ok(bytes.length <= UPDATE_BUDGET_BYTES);
  assert.equal(updateByteLength(4000, 16, 7), 60_644);
  const base16 = createItemTable(ids, 16, { seed: 3 });
  const local16 = createItemTable(ids, 16, { seed: 4 });
  const dim16 = buildClientUpdate(base16, local16, { baseHash: new Uint8Array(32), clip: 1, noiseMultiplier: 1 });
  assert.equal(dim16.bits, 7);
  assert.equal(dim16.bytes.length, 60_644);
  assert.ok(dim16.bytes.length <= UPDATE_BUDGET_BYTES);
});

test('model round-trips exactly as float32 and within half a step as int8', async () => {
  // '\uFEFFa': an id that begins with a byte-order mark keeps it (stop 32), and stays apart from 'a'.
  const ids = ['a', 'b', 'ü-😀', 'x'.repeat(300), '\uFEFFa', '\uFEFF'];
  const t = createItemTable(ids, 6, { seed: 2, popularity: [5, 1, 0, 9, 2, 3] });
  t.version = 12;
  const bytes = encodeModel(t);
  const { table, encoding } = decodeModel(bytes);
  assert.equal(encoding, 'float32');
  assert.deepEqual(table, t);
  assert.deepEqual(encodeModel(table), bytes, 're-encoded, the same bytes (the device caches them under the server hash)');
  const hash = await sha256(bytes);
  const small = encodeModel(t, 'int8', hash);
  assert.ok(small.length < bytes.length);
  const q = decodeModel(small);
  assert.equal(q.encoding, 'int8');
  assert.equal(toHex(q.canonicalHash!), toHex(hash));
  assert.deepEqual(q.table.itemIds, ids);
  assert.deepEqual(q.table.bias, t.bias);
  for (let r = 0; r < ids.length; r++) {
    const row = t.factors.subarray(r * 6, r * 6 + 6);
    const step = Math.max(...row.map(Math.abs)) / 127;
    for (let k = 0; k < 6; k++) assert.ok(Math.abs(q.table.factors[r * 6 + k]! - row[k]!) <= step / 2 + 1e-7);
  }
});

test('a model that repeats an item id is refused (devices map rows by id): stop 32', () => {
  const t = createItemTable(['a', 'b', 'c'], 2, { seed: 1 });
  const bytes = encodeModel(t);
  // 'c' → 'a' in the id section: same length, so the rest of the body still fits.
  const at = bytes.lastIndexOf(0x63, 40);
  bytes[at] = 0x61;
  assert.throws(() => decodeModel(bytes), (e: unknown) => e instanceof WireFormatError && e.reason === 'bad-id' && /item id 2 \("a"\) repeats an earlier one/.test(e.message));
});

test('sha256 and hex helpers', async () => {
  assert.equal(toHex(await sha256(new Uint8Array())), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.deepEqual(fromHex('01ff'), new Uint8Array([1, 255]));
});

test('every truncation of a valid update and model is refused with WireFormatError', () => {
  const bytes = encodeUpdate(sampleUpdate(5, 3, 4, 8));
  for (let len = 0; len < bytes.length; len++) {
    assert.throws(() => decodeUpdate(bytes.subarray(0, len)), (e: unknown) => e instanceof WireFormatError && e.name === 'ValidationError');
  }
  const extra = new Uint8Array(bytes.length + 1);
  extra.set(bytes);
  assert.throws(() => decodeUpdate(extra), (e: unknown) => e instanceof WireFormatError && e.reason === 'length-mismatch');
  const model = encodeModel(createItemTable(['a', 'bb', 'ccc'], 4));
  for (let len = 0; len < model.length; len++) {
    assert.throws(() => decodeModel(model.subarray(0, len)), (e: unknown) => e instanceof WireFormatError);
  }
});

test('specific corruptions name their reason', () => {
  const good = encodeUpdate(sampleUpdate(5, 3, 3, 8));
  const reason = (b: Uint8Array): string => {
    try {
      decodeUpdate(b);
      return 'ok';
    } catch (e) {
      assert.ok(e instanceof WireFormatError, String(e));
      return e.reason;
    }
  };
  const mut = (f: (b: Uint8Array, dv: DataView) => void): Uint8Array => {
    const b = good.slice();
    f(b, new DataView(b.buffer));
    return b;
  };
  assert.equal(reason(good), 'ok');
  assert.equal(reason(mut((b) => (b[0] = 0))), 'bad-magic');
  assert.equal(reason(mut((b) => (b[4] = 2))), 'unsupported-version');
  assert.equal(reason(mut((b) => (b[5] = 9))), 'bad-header');
  assert.equal(reason(mut((_, dv) => dv.setFloat32(80, NaN, true))), 'non-finite');
  assert.equal(reason(mut((_, dv) => dv.setFloat32(80, Infinity, true))), 'non-finite');
  assert.equal(reason(mut((_, dv) => dv.setUint32(8, 0xffffffff, true))), 'truncated'); // declares a huge table: no allocation
  const lastScale = 80 + 4 * scaleCount(5, 3, 8);
  assert.equal(reason(mut((b) => (b[lastScale] = 0b111))), 'bad-code'); // code 7 > 2L = 6
  // Malformed wins over non-finite (docs/protocol.md's order), whichever comes first in the body.
  assert.equal(reason(mut((b, dv) => (dv.setFloat32(80, NaN, true), (b[b.length - 1] = 0xff)))), 'bad-code'); // padding
  assert.equal(reason(mut((b, dv) => (dv.setFloat32(80, Infinity, true), (b[lastScale] = 0b111)))), 'bad-code'); // code
  assert.equal(reason(mut((_, dv) => (dv.setFloat32(80, NaN, true), dv.setFloat32(84, -1, true)))), 'bad-code'); // negative scale
  assert.equal(reason(mut((_, dv) => dv.setFloat32(84, -Infinity, true))), 'non-finite');
});

test('property: arbitrary bytes never make the decoders throw anything but WireFormatError', () => {
  const valid = encodeUpdate(sampleUpdate(4, 2, 5, 4));
  const model = encodeModel(createItemTable(['p', 'q'], 3));
  const onlyWireErrors = (f: () => unknown): boolean => {
    try {
      f();
      return true;
    } catch (e) {
      return e instanceof WireFormatError;
    }
  };
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (b) => onlyWireErrors(() => decodeUpdate(b)) && onlyWireErrors(() => decodeModel(b))),
    { numRuns: 2000 },
  );
  // Mutations of valid messages reach deeper code paths than random bytes do.
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), fc.nat(8), (edits, cut) => {
      const u = valid.slice(0, Math.max(0, valid.length - cut));
      const m = model.slice(0, Math.max(0, model.length - cut));
      for (const [at, v] of edits) {
        if (u.length) u[at % u.length] = v;
        if (m.length) m[at % m.length] = v;
      }
      return onlyWireErrors(() => dequantizeUpdate(decodeUpdate(u))) && onlyWireErrors(() => decodeModel(m));
    }),
    { numRuns: 2000 },
  );
});
