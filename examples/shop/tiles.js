// Product pictures without pictures: the data set has none, so each product gets a tile drawn from
// its title (colour and pattern words) and its category (a small line icon).

const COLOURS = [
  [/\bRED\b|RETROSPOT|STRAWBERRY|CHERRY/, '#d9534f'],
  [/\bPINK\b|ROSE|SWEETHEART/, '#e58fb0'],
  [/\bBLUE\b|SKY|SCANDINAVIAN/, '#5b8fd9'],
  [/\bGREEN\b|MINT|LEAF|APPLE|WOODLAND|GARDEN/, '#6aa56b'],
  [/\bYELLOW\b|LEMON|SUNFLOWER|GOLD/, '#e5b84a'],
  [/\bORANGE\b/, '#e58a4a'],
  [/\bPURPLE\b|LILAC|LAVENDER/, '#9b7bc4'],
  [/\bBLACK\b|SKULL|BAROQUE/, '#3b3b45'],
  [/\bSILVER\b|ZINC|METAL|GREY|GRAY/, '#9aa3ad'],
  [/\bWHITE\b|IVORY|CREAM/, '#e9e2d3'],
  [/\bBROWN\b|CHOCOLATE|WOOD|WICKER|NATURAL/, '#a67c52'],
  [/CHRISTMAS|XMAS/, '#b23a48'],
];
const FALLBACK = ['#7fb3a6', '#c9a27e', '#8fa7c9', '#c98f8f', '#a4b97f', '#b79ac9', '#d2b36b'];

function hash(s) {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

export function colourOf(item) {
  const t = item.title.toUpperCase();
  for (const [re, c] of COLOURS) if (re.test(t)) return c;
  return FALLBACK[hash(item.category + item.id) % FALLBACK.length];
}

function patternOf(item) {
  const t = item.title.toUpperCase();
  if (/RETROSPOT|POLKA ?DOT|SPOT/.test(t)) return 'dots';
  if (/STRIPE|STRIPY/.test(t)) return 'stripes';
  if (/PAISLEY|DOILY|LACE|FLORAL|VINTAGE/.test(t)) return 'lace';
  return 'plain';
}

// 24×24 line icons, stroke only.
const ICONS = {
  bag: '<path d="M5 8h14l-1 12H6z"/><path d="M9 8V6a3 3 0 0 1 6 0v2"/>',
  box: '<path d="M4 8l8-4 8 4v9l-8 4-8-4z"/><path d="M4 8l8 4 8-4M12 12v9"/>',
  cup: '<path d="M5 8h11v6a5 5 0 0 1-5 5h-1a5 5 0 0 1-5-5z"/><path d="M16 10h2a2 2 0 0 1 0 4h-2"/>',
  cake: '<path d="M4 20h16M5 20v-7h14v7"/><path d="M5 15c2 1.5 4 1.5 7 0s5-1.5 7 0"/><path d="M12 13V9M12 7v-1"/>',
  flame: '<path d="M12 3c3 4 5 6 5 10a5 5 0 0 1-10 0c0-2 1-3.5 2-5 .5 2 1.5 3 3 3-1.5-3-1-5 0-8z"/>',
  heart: '<path d="M12 20s-7-4.5-7-10a4 4 0 0 1 7-2.5A4 4 0 0 1 19 10c0 5.5-7 10-7 10z"/>',
  star: '<path d="M12 3l2.7 5.6 6.1.9-4.4 4.3 1 6.1L12 17l-5.4 2.9 1-6.1-4.4-4.3 6.1-.9z"/>',
  tag: '<path d="M3 12V4h8l10 10-8 8z"/><circle cx="7.5" cy="7.5" r="1.5"/>',
  clock: '<circle cx="12" cy="12" r="8"/><path d="M12 7v5l3 2"/>',
  frame: '<rect x="4" y="4" width="16" height="16" rx="1"/><path d="M7 16l4-5 3 3 2-2 2 4"/>',
  pen: '<path d="M4 20l1-5L16 4l4 4L9 19z"/><path d="M14 6l4 4"/>',
  bulb: '<path d="M9 18h6M10 21h4"/><path d="M12 3a6 6 0 0 0-4 10.5c.8.8 1 1.5 1 2.5h6c0-1 .2-1.7 1-2.5A6 6 0 0 0 12 3z"/>',
  home: '<path d="M4 11l8-7 8 7v9H4z"/><path d="M10 20v-5h4v5"/>',
  gift: '<rect x="4" y="9" width="16" height="11"/><path d="M3 9h18M12 9v11"/><path d="M12 9c-2-4-6-4-6-1s6 1 6 1 6 2 6-1-4-3-6 1"/>',
  leaf: '<path d="M5 19C5 10 10 5 20 4c0 10-5 15-14 15z"/><path d="M5 19l8-8"/>',
  drop: '<path d="M12 3s6 7 6 11a6 6 0 0 1-12 0c0-4 6-11 6-11z"/>',
  plate: '<circle cx="12" cy="12" r="8"/><circle cx="12" cy="12" r="4.5"/>',
  tree: '<path d="M12 3l6 8h-3l4 6H5l4-6H6z"/><path d="M12 17v4"/>',
  sign: '<rect x="3" y="6" width="18" height="10" rx="1"/><path d="M8 16v5M16 16v5M12 3v3"/>',
};

const CATEGORY_ICON = {
  bag: 'bag', 'lunch-bag': 'bag', 'lunch-box': 'box', box: 'box', 'gift-wrap': 'gift', party: 'star', card: 'heart',
  baking: 'cake', 'cake-stand': 'cake', candle: 'flame', light: 'bulb', 'hot-water-bottle': 'drop', mug: 'cup', teaware: 'cup',
  tableware: 'plate', kitchen: 'plate', 'kitchen-storage': 'box', 'home-storage': 'home', doormat: 'home', cushion: 'home',
  clock: 'clock', frame: 'frame', 'wall-art': 'frame', sign: 'sign', stationery: 'pen', craft: 'pen', toy: 'star',
  decoration: 'heart', christmas: 'tree', easter: 'leaf', garden: 'leaf', bath: 'drop', umbrella: 'drop', jewellery: 'star',
  magnet: 'tag',
};

/** Fills `el` with the product's tile. */
export function paintTile(el, item) {
  const c = colourOf(item);
  el.classList.add('tile', `pattern-${patternOf(item)}`);
  el.style.setProperty('--tile', c);
  const icon = ICONS[CATEGORY_ICON[item.category] ?? 'tag'];
  el.innerHTML = `<svg viewBox="0 0 24 24" aria-hidden="true">${icon}</svg>`;
}

/** "hot-water-bottle" → "Hot water bottle". */
export function categoryLabel(c) {
  const s = c.replace(/-/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
}
