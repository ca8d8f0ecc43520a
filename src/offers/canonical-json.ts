/**
 * Canonical JSON: the same value always serializes to the same string, so a signature made on the
 * shop's server verifies on every device whatever order the keys were written in.
 *
 * Object keys are sorted by UTF-16 code units (what `Array.prototype.sort` does), properties whose
 * value is `undefined` are left out (as `JSON.stringify` does), there is no whitespace, and numbers
 * use ECMAScript's shortest round-trip form. For plain JSON data this matches RFC 8785 (JCS).
 */

/**
 * Serialize a JSON value canonically. Throws a `TypeError` on values JSON cannot represent
 * faithfully (NaN, ±Infinity, functions, symbols, bigint), rather than silently changing them.
 *
 * @example
 * ```ts
 * canonicalJson({ b: 1, a: [true, null, 'x'] }); // '{"a":[true,null,"x"],"b":1}'
 * ```
 */
export function canonicalJson(value: unknown): string {
  return write(value, '$');
}

function write(v: unknown, path: string): string {
  if (v === null) return 'null';
  switch (typeof v) {
    case 'boolean':
      return v ? 'true' : 'false';
    case 'string':
      return JSON.stringify(v);
    case 'number':
      if (!Number.isFinite(v)) throw new TypeError(`${path}: ${v} cannot be represented in JSON`);
      return JSON.stringify(v);
    case 'object': {
      // Array.from visits holes too (map skips them, which wrote `[1,,3]`): a hole is null, as in JSON.stringify.
      if (Array.isArray(v)) return `[${Array.from(v, (x, i) => write(x === undefined ? null : x, `${path}[${i}]`)).join(',')}]`;
      const obj = v as Record<string, unknown>;
      const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort();
      return `{${keys.map((k) => `${JSON.stringify(k)}:${write(obj[k], `${path}.${k}`)}`).join(',')}}`;
    }
    default:
      throw new TypeError(`${path}: a ${typeof v} cannot be represented in JSON`);
  }
}
