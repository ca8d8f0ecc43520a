import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RETAIL_CATEGORIES, retailCategory } from '../../src/offers/retail-categories.js';

describe('retailCategory', () => {
  test('names the product type of common Online Retail descriptions', () => {
    const cases: Array<[string, string]> = [
      ['WHITE HANGING HEART T-LIGHT HOLDER', 'candle'],
      ['JUMBO BAG RED RETROSPOT', 'bag'],
      ['LUNCH BAG RED RETROSPOT', 'lunch-bag'],
      ['SPACEBOY LUNCH BOX', 'lunch-box'],
      ['REGENCY CAKESTAND 3 TIER', 'cake-stand'],
      ['HOME SWEET HOME MUG', 'mug'],
      ['RABBIT NIGHT LIGHT', 'light'],
      ['HOME SWEET HOME CUSHION COVER', 'cushion'],
      ['PLEASE ONE PERSON METAL SIGN', 'sign'],
      ['SPACEBOY BIRTHDAY CARD', 'card'],
      ['PLAYING CARDS KEEP CALM & CARRY ON', 'toy'],
      ['CREAM HEART CARD HOLDER', 'home-storage'],
      ['SET 7 BABUSHKA NESTING BOXES', 'box'],
      ['HOT WATER BOTTLE KEEP CALM', 'hot-water-bottle'],
      ['ASSORTED COLOUR BIRD ORNAMENT', 'decoration'],
      ['  doormat union flag ', 'doormat'],
      // Whole words: a strawberry is no straw, a chair no hair, a chicken no chick, an Easter egg no egg cup.
      ['STRAWBERRY CERAMIC TRINKET BOX', 'box'],
      ['PAPER STRAWS', 'tableware'],
      ['PINK HAIRY CHAIR', 'other'],
      ['DAISY HAIR BAND', 'jewellery'],
      ['HANGING METAL CHICKEN DECORATION', 'decoration'],
      ['EASTER DECORATION NATURAL CHICK', 'easter'],
      ['DECORATIVE EASTER EGG', 'easter'],
      ['BLUE KNITTED EGG COSY', 'kitchen'],
      ['EGG FRYING PAN BLUE', 'kitchen'],
      // An eclipse is no clip, a string no ring, charming no charm, a chestnut no chest, a street no tree.
      ['HANGING ECLIPSE MOBILE', 'decoration'],
      ['SET OF 6 STRINGS OF PEARLS', 'other'],
      ['CHARMING PINK DOG', 'other'],
      ['PORCHESTER CHEST', 'home-storage'],
      ['CHESTNUT SQUIRREL DOORSTOP', 'home-storage'],
      ['STREETLAMP ORNAMENT', 'decoration'],
      ['HAIR CLIPS', 'jewellery'],
      ['SILVER CHARMS', 'jewellery'],
      ['CHRISTMAS TREE KNITTED', 'christmas'],
    ];
    for (const [description, category] of cases) assert.equal(retailCategory(description), category, description);
  });

  test('postage and manual lines are service, unknown products are other', () => {
    assert.equal(retailCategory('POSTAGE'), 'service');
    assert.equal(retailCategory('DOTCOM POSTAGE'), 'service');
    assert.equal(retailCategory('Manual'), 'service');
    assert.equal(retailCategory('CARRIAGE'), 'service');
    assert.equal(retailCategory('Next Day Carriage'), 'service');
    // Products whose names hold those words are products (a review of the output, stop 34).
    assert.equal(retailCategory('FRENCH CARRIAGE LANTERN'), 'light');
    assert.notEqual(retailCategory('BLACK BAROQUE CARRIAGE CLOCK'), 'service');
    assert.equal(retailCategory('BAG 250g SWIRLY MARBLES'), 'toy');
    assert.equal(retailCategory('SOMBRERO'), 'other');
    assert.equal(retailCategory(''), 'other');
  });

  test('every result is one of RETAIL_CATEGORIES, a few dozen, other last', () => {
    assert.ok(RETAIL_CATEGORIES.length >= 24 && RETAIL_CATEGORIES.length <= 60, String(RETAIL_CATEGORIES.length));
    assert.equal(RETAIL_CATEGORIES.at(-1), 'other');
    assert.equal(new Set(RETAIL_CATEGORIES).size, RETAIL_CATEGORIES.length);
    for (const d of ['RED RETROSPOT UMBRELLA', 'PACK OF 12 LONDON TISSUES', 'SET OF 5 LUCKY CAT MAGNETS']) assert.ok(RETAIL_CATEGORIES.includes(retailCategory(d)), d);
  });
});
