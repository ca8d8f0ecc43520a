/**
 * Reading a numeric command-line flag. `Number('')` and `Number(' ')` are 0, so a value left empty
 * (`--noise ''`, an unset shell variable) would run as 0: σ = 0 is no differential privacy at all;
 * and `Number('0x10')` is 16, `Number('0b11')` 3, `Number('Infinity')` Infinity. Every numeric
 * flag goes through {@link flagNumber}, which reads only a plain decimal number and anything else
 * as NaN; so does every numeric cell the CLI reads from a data file (weights, times, quantities,
 * prices, numeric filters).
 */
import { ValidationError } from './errors.js';

/**
 * A plain decimal number: an optional sign, digits with an optional fraction (`5`, `5.`, `.5`,
 * `2.5`), and an optional exponent (`1e-5`, `2E3`); spaces around it are allowed.
 */
const DECIMAL = /^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$/;

/**
 * `Number(value)` for a plain decimal number ({@link DECIMAL}), NaN for anything else: an empty or
 * blank value (`Number(' ')` is 0), hexadecimal, binary or octal (`0x10` would be 16), `Infinity`.
 *
 * @example
 * ```ts
 * flagNumber('1e-5'); // 0.00001
 * flagNumber(' ');    // NaN (Number(' ') is 0)
 * flagNumber('0x10'); // NaN (Number('0x10') is 16)
 * ```
 */
export function flagNumber(value: string): number {
  return DECIMAL.test(value) ? Number(value) : NaN;
}

/**
 * The number a flag gives, checked: a ValidationError naming `flag` unless the value is a plain
 * decimal number (see {@link flagNumber}) that passes `ok`; `what` says what it must be.
 *
 * @example
 * ```ts
 * numberFlag('--noise', '', (x) => x >= 0, 'a number ≥ 0'); // throws "--noise: must be a number ≥ 0, got ''"
 * ```
 */
export function numberFlag(flag: string, value: string, ok: (x: number) => boolean, what: string): number {
  const x = flagNumber(value);
  if (Number.isNaN(x) || !ok(x)) {
    // `0x10`, `0b11`, `Infinity`: a number to JavaScript, said to be refused for its form.
    const form = Number.isNaN(x) && value.trim() !== '' && !Number.isNaN(Number(value)) ? ' (plain decimal digits only)' : '';
    throw new ValidationError(flag, `must be ${what}${form}, got '${value}'`);
  }
  return x;
}

/** The largest `--seed`: seeds are read as 32-bit integers (`src/model/random.ts`), so a larger one would quietly be another seed. */
export const MAX_SEED = 2 ** 31 - 1;

/**
 * A `--seed`: a whole number from 0 to {@link MAX_SEED}, the same rule in every command. The
 * generator floors a seed and keeps its low 32 bits, so `1e30` ran as seed 0 and `1.5` as seed 1.
 *
 * @example
 * ```ts
 * seedFlag('--seed', '7');    // 7
 * seedFlag('--seed', '1e30'); // throws "--seed: must be an integer from 0 to 2147483647 (2^31 − 1), got '1e30'"
 * ```
 */
export function seedFlag(flag: string, value: string): number {
  return numberFlag(flag, value, (x) => Number.isInteger(x) && x >= 0 && x <= MAX_SEED, `an integer from 0 to ${MAX_SEED} (2^31 − 1)`);
}
