import { ValidationError } from '../errors.js';
import type { Catalog, CatalogItem } from '../types.js';

/** Most items a catalog (and so a server's model) may hold. */
export const MAX_ITEMS = 1_000_000;
const ITEM_FIELDS: readonly string[] = ['id', 'title', 'category', 'price', 'popularity'];

/**
 * Checks the shop's catalog where it enters the public API. Throws a {@link ValidationError}
 * naming the offending field, e.g. `options.catalog.items[3].price`.
 *
 * @example
 * ```ts
 * validateCatalog({ items: [{ id: 'a' }, { id: 'a' }] });
 * // ValidationError "options.catalog.items[1].id: duplicate id "a" (first at items[0])"
 * ```
 */
export function validateCatalog(catalog: unknown, field = 'options.catalog'): Catalog {
  if (typeof catalog !== 'object' || catalog === null) throw new ValidationError(field, 'must be an object with an `items` array');
  const items = (catalog as { items?: unknown }).items;
  if (!Array.isArray(items)) throw new ValidationError(`${field}.items`, 'must be an array of { id, title?, category?, price?, popularity? }');
  if (items.length === 0) throw new ValidationError(`${field}.items`, 'must hold at least one item');
  if (items.length > MAX_ITEMS) throw new ValidationError(`${field}.items`, `must hold at most ${MAX_ITEMS} items, got ${items.length}`);
  const seen = new Map<string, number>();
  const out: CatalogItem[] = new Array(items.length);
  for (let i = 0; i < items.length; i++) {
    const it = items[i] as Record<string, unknown> | null;
    const f = `${field}.items[${i}]`;
    if (typeof it !== 'object' || it === null) throw new ValidationError(f, 'must be an object');
    if (typeof it.id !== 'string' || it.id.length === 0 || it.id.length > 256) throw new ValidationError(`${f}.id`, 'must be a string of 1 to 256 characters');
    const first = seen.get(it.id);
    if (first !== undefined) throw new ValidationError(`${f}.id`, `duplicate id "${it.id}" (first at items[${first}])`);
    seen.set(it.id, i);
    // A misspelt field (`name` for `title`) would silently leave reasons showing the raw id.
    for (const k of Object.keys(it)) {
      if (!ITEM_FIELDS.includes(k)) throw new ValidationError(`${f}.${k}`, `is not a catalog item field (known: ${ITEM_FIELDS.join(', ')})`);
    }
    const item: CatalogItem = { id: it.id };
    if (it.title !== undefined) {
      if (typeof it.title !== 'string') throw new ValidationError(`${f}.title`, 'must be a string');
      item.title = it.title;
    }
    if (it.category !== undefined) {
      if (typeof it.category !== 'string') throw new ValidationError(`${f}.category`, 'must be a string');
      item.category = it.category;
    }
    for (const k of ['price', 'popularity'] as const) {
      const v = it[k];
      if (v === undefined) continue;
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ValidationError(`${f}.${k}`, `must be a finite number ≥ 0, got ${String(v)}`);
      item[k] = v;
    }
    out[i] = item;
  }
  return { items: out };
}
