/**
 * Product categories for the UCI Online Retail data, derived from the invoice-line description.
 *
 * The data has no category column, but its descriptions name the product type in plain words
 * ("JUMBO BAG RED RETROSPOT", "WHITE HANGING HEART T-LIGHT HOLDER"). An ordered list of keyword
 * rules maps each description to one of a few dozen categories; the first rule that matches wins,
 * so specific product types ("lunch bag", "hot water bottle") come before the general ones
 * ("bag", "decoration") and before themes ("christmas") that cut across product types.
 */

/** One rule: the category and the words (as a regular expression) that put a description in it. */
interface CategoryRule {
  readonly category: string;
  readonly pattern: RegExp;
}

// Order matters: the first match wins. Patterns are tested against the upper-cased description.
const RULES: readonly CategoryRule[] = [
  // Postage, manual adjustments, bank charges: lines on invoices that are not products.
  // (Carriage as a charge, not a FRENCH CARRIAGE LANTERN or a CARRIAGE CLOCK.)
  { category: 'service', pattern: /^(DOTCOM )?POSTAGE$|^MANUAL$|^(NEXT DAY )?CARRIAGE$|BANK CHARGES|AMAZON FEE|^ADJUST|^SAMPLES?$|^CRUK|DISCOUNT$/ },
  // A bag of marbles is a toy, not a bag.
  { category: 'toy', pattern: /MARBLES/ },
  { category: 'hot-water-bottle', pattern: /HOT WATER BOTTLE|HAND WARMER|WARMER/ },
  { category: 'doormat', pattern: /DOOR ?MAT/ },
  { category: 'lunch-bag', pattern: /LUNCH BAG/ },
  { category: 'lunch-box', pattern: /LUNCH ?BOX|SNACK BOX|BREAKFAST|PICNIC/ },
  { category: 'gift-wrap', pattern: /GIFT BAG|\bWRAP\b|WRAPPING|TISSUE PAPER|RIBBON|GIFT TAG|\bTAGS?\b|GIFT BOX/ },
  { category: 'bag', pattern: /\bBAGS?\b|SHOPPER|\bTOTE\b|PURSE|HANDBAG|BACKPACK|RUCKSACK/ },
  { category: 'cake-stand', pattern: /CAKE ?STAND/ },
  { category: 'baking', pattern: /BAKING|CAKE CASES|MINI CASES|ROLLING PIN|CAKE TIN|CUTTERS?\b|MOULD|ICING|CUPCAKE|MUFFIN|PASTRY|CAKE/ },
  { category: 'candle', pattern: /T-?LIGHT|TEA ?LIGHT|CANDLE|INCENSE|OIL BURNER|FRAGRANCE|DIFFUSER/ },
  { category: 'light', pattern: /\bLIGHTS?\b|\bLAMP|LANTERN|\bLED\b|LAMPSHADE/ },
  { category: 'mug', pattern: /\bMUGS?\b/ },
  { category: 'teaware', pattern: /TEACUP|TEA ?CUP|SAUCER|TEAPOT|TEA SET|COFFEE|\bCUPS?\b|BEAKER/ },
  { category: 'tableware', pattern: /PLATE|\bBOWLS?\b|\bJUG\b|CUTLERY|NAPKIN|\bTRAY\b|COASTER|PLACEMAT|GLASS|TUMBLER|SPOON|\bSTRAWS?\b/ },
  { category: 'sign', pattern: /\bSIGN\b|PLAQUE/ },
  { category: 'kitchen-storage', pattern: /\bTINS?\b|\bJARS?\b|CANISTER|CONTAINER|\bBIN\b|STORAGE|BREAD/ },
  { category: 'kitchen', pattern: /JAM MAKING|APRON|TEA TOWEL|OVEN GLOVE|SCALES|KITCHEN|\bEGG +(CUPS?|FRYING|SPOON|COSY|WARMER|HOLDER|TIMER)\b|CHOPPING|RECIPE|TIMER|COOK|COLANDER|BOTTLE OPENER|BUTTER DISH|STRAINER|DISPENSER|SALT AND PEPPER|TABLECLOTH|WASHING UP|SCRUBBING BRUSH/ },
  { category: 'clock', pattern: /CLOCK/ },
  { category: 'frame', pattern: /FRAME|PHOTO|MIRROR|ALBUM/ },
  { category: 'wall-art', pattern: /WALL ART|WALL STICKER|\bPRINT\b|POSTER|CANVAS/ },
  { category: 'toy', pattern: /CARD GAME|PLAYING CARDS|SNAP CARDS|LUDO|SNAKES & LADDERS|NAUGHTS|DOMINO/ },
  { category: 'card', pattern: /\bCARDS?\b(?! HOLDER)|GREETING|POSTCARD|INVITES?/ },
  { category: 'party', pattern: /BUNTING|PARTY|BALLOON|POPCORN|GARLAND|CONFETTI|PINATA|STRAWS|PAPER CHAIN|DOILIES|DOILY|CRACKER/ },
  { category: 'stationery', pattern: /\bPENS?\b|PENCIL|NOTE ?BOOK|ERASER|RUBBER|RULER|STICKER|MEMO|CALENDAR|JOURNAL|CHALKBOARD|BLACK ?BOARD|STAMP|ENVELOPE|\bBOOK\b|NOTEPAD|\bPAD\b|SHARPENER|CRAYON|CHALK|DIARY|ORGANISER|EXERCISE BOOK|STATIONERY|COLOURING/ },
  { category: 'toy', pattern: /HARMONICA|\bTOYS?\b|\bGAME\b|\bDOLL|JIGSAW|PUZZLE|SKIPPING|\bBALL\b|SPINNING|YO-?YO|DOMINO|SOLDIER|MARBLES|BINGO|BLOCK WORD|PLAYHOUSE|CHILDRENS|KIDS|TEDDY|SPACEBOY|\bKIT\b/ },
  { category: 'craft', pattern: /CRAFT|SEWING|\bFELT|KNITTING|BUTTONS?|TAPE|CROCHET|EMBROIDERY|BEAD|SCISSOR|GLITTER|PAINT/ },
  { category: 'garden', pattern: /GARDEN|PLANT|WATERING|\bGROW|BIRD ?FEEDER|BIRD TABLE|BIRDHOUSE|SEED|\bPOTS?\b|FLOWER POT|HERB|TROWEL|FORK/ },
  { category: 'cushion', pattern: /CUSHION|THROW|BLANKET|QUILT|PILLOW/ },
  { category: 'umbrella', pattern: /UMBRELLA|PARASOL/ },
  { category: 'jewellery', pattern: /NECKLACE|BRACELET|EARRING|\bRINGS?\b|BROOCH|JEWEL|DIAMANTE|\bHAIR\b|LIP GLOSS|KEY ?RING|KEYRING|\bCHARMS?\b|BANGLE|SLIDE|\bCLIPS?\b/ },
  { category: 'bath', pattern: /SOAP|\bBATH|PLASTERS|TISSUES|TOWEL|SPONGE|TOILET|WASH|MAKE ?UP|COMPACT/ },
  { category: 'home-storage', pattern: /DRAWER|CABINET|\bCHESTS?\b|SHELF|\bHOOKS?\b|COAT RACK|\bKNOB|HANGER|BASKET|\bRACK\b|LETTER RACK|DOOR STOP|DOORSTOP|HOLDER/ },
  { category: 'box', pattern: /\bBOX(ES)?\b|TRINKET|\bCASE\b/ },
  { category: 'magnet', pattern: /MAGNET/ },
  { category: 'christmas', pattern: /CHRISTMAS|\bXMAS|ADVENT|SANTA|REINDEER|SNOWFLAKE|BAUBLE|NATIVITY|\bTREES?\b/ },
  { category: 'easter', pattern: /EASTER|\bEGGS?\b|\bCHICKS?\b|BUNNY/ },
  { category: 'decoration', pattern: /ORNAMENT|DECORATION|WREATH|WICKER|HANGING|\bBIRDS?\b|\bBELLS?\b|\bSTARS?\b|HEARTS?\b|BUTTERFLY|\bWIND CHIME|MOBILE|FEATHER|FLOWER|ROSE|DOVE|ANGEL/ },
];

/** Category for descriptions no rule matches. */
export const OTHER_CATEGORY = 'other';

/** Every category {@link retailCategory} can return, in rule order, `other` last. */
export const RETAIL_CATEGORIES: readonly string[] = [...new Set(RULES.map((r) => r.category)), OTHER_CATEGORY];

/**
 * The product category of an Online Retail invoice line, from its description.
 *
 * Returns one of {@link RETAIL_CATEGORIES}: a product type such as `mug`, `bag`, `candle`, `card`,
 * `light` or `cushion`; `service` for postage and manual adjustments (not products); `other` when
 * no rule matches.
 *
 * @example
 * ```ts
 * retailCategory('WHITE HANGING HEART T-LIGHT HOLDER'); // 'candle'
 * retailCategory('JUMBO BAG RED RETROSPOT');            // 'bag'
 * retailCategory('POSTAGE');                            // 'service'
 * ```
 */
export function retailCategory(description: string): string {
  const d = description.trim().toUpperCase();
  for (const rule of RULES) if (rule.pattern.test(d)) return rule.category;
  return OTHER_CATEGORY;
}
