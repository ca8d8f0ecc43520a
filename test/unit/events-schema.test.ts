import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isValidationError, ValidationError } from '../../src/errors.js';
import { validateEvent } from '../../src/events/schema.js';

const NOW = Date.UTC(2026, 10, 1);

function fieldOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(isValidationError(e), `expected a ValidationError, got ${String(e)}`);
    return (e as ValidationError).field;
  }
  assert.fail('expected a ValidationError');
}

describe('validateEvent', () => {
  it('fills in the time and keeps the fields of each kind', () => {
    assert.deepEqual(validateEvent({ type: 'view', itemId: 'a' }, NOW), { t: NOW, type: 'view', itemId: 'a' });
    assert.deepEqual(validateEvent({ type: 'purchase', itemId: 'a', quantity: 3, price: 2.5, t: NOW - 5 }, NOW), {
      t: NOW - 5,
      type: 'purchase',
      itemId: 'a',
      quantity: 3,
      price: 2.5,
    });
    assert.deepEqual(validateEvent({ type: 'search', query: '  red mug ', itemId: 'a' }, NOW), { t: NOW, type: 'search', query: 'red mug', itemId: 'a' });
    assert.deepEqual(validateEvent({ type: 'search', query: 'mug' }, NOW), { t: NOW, type: 'search', query: 'mug' });
    assert.deepEqual(validateEvent({ type: 'rating', itemId: 'm', value: 4.5 }, NOW), { t: NOW, type: 'rating', itemId: 'm', value: 4.5 });
    assert.deepEqual(validateEvent({ type: 'offer_redeemed', offerId: 'o1' }, NOW), { t: NOW, type: 'offer_redeemed', offerId: 'o1' });
    assert.deepEqual(validateEvent({ type: 'remove_from_cart', itemId: 'a', quantity: 1 }, NOW), { t: NOW, type: 'remove_from_cart', itemId: 'a', quantity: 1 });
  });

  it('refuses to fill in the time from a device clock before 2000 (it would be stored, then read back as malformed): stop 32', () => {
    const early = Date.UTC(1980, 0, 1);
    assert.throws(() => validateEvent({ type: 'view', itemId: 'a' }, early), (e: unknown) => isValidationError(e) && e.field === 'event.t' && /the device clock reads 1980-01-01T00:00:00\.000Z, before 2000-01-01: the event cannot be timed/.test(e.message));
    // A time the page gives (its server's) is taken on such a clock, from 2000 to 2100.
    assert.equal(validateEvent({ type: 'view', itemId: 'a', t: NOW }, early).t, NOW);
    assert.throws(() => validateEvent({ type: 'view', itemId: 'a', t: Date.UTC(2101, 0, 1) }, early), (e: unknown) => isValidationError(e) && e.field === 'event.t');
    assert.throws(() => validateEvent({ type: 'view', itemId: 'a', t: 1_700_000_000 }, early), (e: unknown) => isValidationError(e) && e.field === 'event.t', 'seconds, not ms');
  });

  it('names the offending field', () => {
    const cases: Array<[unknown, string]> = [
      [null, 'event'],
      [[], 'event'],
      ['view', 'event'],
      [{}, 'event.type'],
      [{ type: 'click', itemId: 'a' }, 'event.type'],
      [{ type: 'view' }, 'event.itemId'],
      [{ type: 'view', itemId: '' }, 'event.itemId'],
      [{ type: 'view', itemId: 'x'.repeat(257) }, 'event.itemId'],
      [{ type: 'view', itemId: 42 }, 'event.itemId'],
      [{ type: 'view', itemID: 'a' }, 'event.itemID'],
      [{ type: 'view', itemId: 'a', t: 'yesterday' }, 'event.t'],
      [{ type: 'view', itemId: 'a', t: 1_700_000_000 }, 'event.t'], // seconds, not milliseconds
      [{ type: 'view', itemId: 'a', t: NOW + 7 * 86_400_000 }, 'event.t'],
      [{ type: 'purchase', itemId: 'a', quantity: 0 }, 'event.quantity'],
      [{ type: 'purchase', itemId: 'a', quantity: 1.5 }, 'event.quantity'],
      [{ type: 'purchase', itemId: 'a', price: -1 }, 'event.price'],
      [{ type: 'purchase', itemId: 'a', price: Number.NaN }, 'event.price'],
      [{ type: 'rating', itemId: 'a' }, 'event.value'],
      [{ type: 'rating', itemId: 'a', value: 6 }, 'event.value'],
      [{ type: 'search', query: '   ' }, 'event.query'],
      [{ type: 'search' }, 'event.query'],
      [{ type: 'offer_impression' }, 'event.offerId'],
      [{ type: 'view', itemId: 'a', quantity: 2 }, 'event.quantity'],
    ];
    for (const [input, field] of cases) assert.equal(fieldOf(() => validateEvent(input, NOW)), field, JSON.stringify(input));
  });

  it('says what was wrong in the message', () => {
    assert.throws(() => validateEvent({ type: 'purchase', itemId: 'a', quantity: -2 }, NOW), /event\.quantity: must be from 1 to 1000000, got -2/);
    assert.throws(() => validateEvent({ type: 'view', itemID: 'a' }, NOW), /event\.itemID: is not a field of 'view' events/);
  });
});

describe('validateEvent reads each field once', () => {
  it('a getter that answers a string to the check and an object later is stored as the string it answered', () => {
    let reads = 0;
    const tricky = {
      type: 'search',
      get query(): unknown {
        return ++reads <= 1 ? ' shoes ' : { trim: () => ({ length: 3 }) };
      },
    };
    assert.deepEqual(validateEvent(tricky, NOW), { t: NOW, type: 'search', query: 'shoes' });
    assert.equal(reads, 1);
  });

  it('a field inherited from a polluted prototype is not read', () => {
    const proto = { price: 5 };
    const e = Object.assign(Object.create(proto) as Record<string, unknown>, { type: 'purchase', itemId: 'a' });
    assert.deepEqual(validateEvent(e, NOW), { t: NOW, type: 'purchase', itemId: 'a' });
  });
});
