/**
 * Row filters for CSV loading, written as short clauses so that presets and the CLI share one
 * mechanism: `quantity>0`, `invoice!^=C` (does not start with C), `customer_id!=` (not empty).
 */
import { ValidationError } from '../errors.js';
import { flagNumber } from '../number-flag.js';

export type FilterOp = '=' | '!=' | '^=' | '!^=' | '>' | '>=' | '<' | '<=';

export interface RowFilter {
  column: string;
  op: FilterOp;
  value: string;
}

/** The operators that compare numbers. */
export const NUMERIC_OPS: ReadonlySet<FilterOp> = new Set<FilterOp>(['>', '>=', '<', '<=']);

// Longest operators first so that `>=` is not read as `>` followed by `=value`.
const OPS: FilterOp[] = ['!^=', '^=', '!=', '>=', '<=', '=', '>', '<'];

/**
 * Parses one clause `column OP value`. OP is one of `= != ^= !^= > >= < <=`; `^=` means
 * "starts with"; comparisons `> >= < <=` are numeric.
 *
 * @example
 * ```ts
 * parseFilter('quantity>0'); // { column: 'quantity', op: '>', value: '0' }
 * ```
 */
export function parseFilter(clause: string, field = 'options.filter'): RowFilter {
  let best: { at: number; op: FilterOp } | undefined;
  for (const op of OPS) {
    const at = clause.indexOf(op);
    if (at > 0 && (best === undefined || at < best.at)) best = { at, op };
  }
  if (!best) {
    throw new ValidationError(field, `'${clause}' is not COLUMN OP VALUE with OP one of ${OPS.join(' ')}`);
  }
  const column = clause.slice(0, best.at).trim();
  const value = clause.slice(best.at + best.op.length).trim();
  // Number('') is 0: `qty>` would have read as `qty>0`; Number('0x10') is 16. Plain decimals only.
  if (NUMERIC_OPS.has(best.op) && !Number.isFinite(flagNumber(value))) {
    throw new ValidationError(field, `'${clause}': ${best.op} needs a number, got '${value}'`);
  }
  return { column, op: best.op, value };
}

/** True when `cell` passes the filter. Numeric comparisons treat a non-number cell as failing. */
export function passes(f: RowFilter, cell: string): boolean {
  switch (f.op) {
    case '=':
      return cell === f.value;
    case '!=':
      return cell !== f.value;
    case '^=':
      return cell.startsWith(f.value);
    case '!^=':
      return !cell.startsWith(f.value);
    default: {
      const x = flagNumber(cell);
      const v = flagNumber(f.value);
      if (!Number.isFinite(x)) return false;
      return f.op === '>' ? x > v : f.op === '>=' ? x >= v : f.op === '<' ? x < v : x <= v;
    }
  }
}
