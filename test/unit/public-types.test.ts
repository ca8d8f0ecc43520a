/**
 * The public type surface of both entry points, checked with the TypeScript compiler on the
 * sources (no build needed): every type a public signature names is exported from the entry that
 * publishes the signature, every export of the browser entry is documented, and a strict consumer
 * (`strict`, `exactOptionalPropertyTypes`, `noUncheckedIndexedAccess`) compiles the README's
 * reason translation and passes `undefined` where the runtime takes it.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
const SRC = join(ROOT, 'src') + '/';
const INDEX = join(ROOT, 'src/index.ts');
const NODE = join(ROOT, 'src/node.ts');
/** The consumer is compiled in memory, next to this file so that its relative imports resolve. */
const CONSUMER = join(ROOT, 'test/unit/__public-types-consumer__.ts');
const SINGLE_PAGE = join(ROOT, 'test/unit/__public-types-single-page__.ts');

/**
 * Types a public signature names that its entry cannot export because the module declaring them
 * does not (a change outside the entry points). Each must still be a leak: once fixed, remove it.
 */
const KNOWN_UNEXPORTED: Record<string, Record<string, string>> = {
  [NODE]: {},
  [INDEX]: {},
};

/**
 * Exports of src/index.ts whose declaration lives in a module outside the entry points and has no
 * doc comment yet. Each must still lack one: once documented, remove it.
 */
const KNOWN_UNDOCUMENTED: Record<string, string> = {};

/** The README's first ```ts block after `marker`, importing from the sources. */
function readmeBlock(marker: string): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const at = readme.indexOf(marker);
  assert.ok(at >= 0, `README.md has no "${marker}"`);
  const block = /```ts\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(block, `README.md has no \`\`\`ts block after "${marker}"`);
  const code = block[1]!;
  assert.match(code, /from 'localrec'/, `the README's block after "${marker}" imports from 'localrec'`);
  return code.replaceAll("from 'localrec'", "from '../../src/index.js'");
}

/** The README's block under "Reasons in the shop's language". */
const readmeReasonBlock = () => readmeBlock("Reasons in the shop's language");

/** The README's lazy, server-safe recommender for single-page apps, as a Vite project compiles it. */
function singlePageSource(): string {
  return `// A page's catalog, and Vite's client types (vite/client) for import.meta.hot.
import type { Catalog } from '../../src/index.js';
declare const catalog: Catalog;
declare global {
  interface ImportMeta {
    readonly hot?: { dispose(cb: () => void): void };
  }
}
${readmeBlock('Create it lazily, in the browser only')}`;
}

function consumerSource(): string {
  return `// A page's own product titles, as the README's block assumes.
declare const germanTitles: Map<string, string>;
${readmeReasonBlock()}
export { because };

// Explicit undefined where the runtime takes it (exactOptionalPropertyTypes).
import { createRecommender } from '../../src/index.js';
import type {
  CatalogItem, EventBase, Jwk, LedgerOfferStats, OfferLedger, OffersOptions, Offer, RecommendOptions,
  RecommenderOptions, SignedOfferCatalog, SimilarOptions, SyncControl, TrackEvent, TrainOptions,
} from '../../src/index.js';
declare const clicked: { id: string } | undefined;
declare const maybe: string | undefined;
declare const maybeNumber: number | undefined;
declare const signal: AbortSignal | undefined;
declare const key: Jwk;

const item: CatalogItem = { id: 'a', title: maybe, category: maybe, price: maybeNumber, popularity: maybeNumber };
const options: RecommenderOptions = {
  catalog: { items: [item] },
  backend: undefined,
  dbName: maybe,
  retention: { maxEvents: maybeNumber, maxAgeDays: undefined },
  model: { dim: maybeNumber, halfLifeDays: undefined, sessionDecay: undefined, stepDecay: undefined, seed: maybeNumber },
  autoTrainEvery: maybeNumber,
  consent: undefined,
  offers: { publicKey: key },
  federated: { serverUrl: 'https://shop.example/localrec', budget: maybeNumber, delta: undefined, honorGlobalPrivacyControl: undefined, cohortWaitMs: undefined, autoSyncHours: maybeNumber, allowWithoutStorage: undefined },
  neighbors: { url: 'https://shop.example/neighbors.bin', timeoutMs: maybeNumber, downloadTimeoutMs: undefined, refreshHours: maybeNumber },
  workerUrl: undefined,
  wasmPaths: undefined,
  workerTimeoutMs: maybeNumber,
};
export async function page(): Promise<void> {
  const rec = await createRecommender(options);
  rec.track({ type: 'search', query: 'mug', itemId: clicked?.id });
  rec.track({ type: 'view', itemId: 'a', t: maybeNumber });
  rec.track({ type: 'add_to_cart', itemId: 'a', quantity: maybeNumber });
  rec.track({ type: 'purchase', itemId: 'a', quantity: maybeNumber, price: maybeNumber });
  const events: TrackEvent[] = [{ type: 'offer_redeemed', offerId: 'o', t: undefined }];
  const base: EventBase = { t: undefined };
  const recommend: RecommendOptions = { k: 5, category: maybe, exclude: undefined, candidates: undefined };
  const similar: SimilarOptions = { k: maybeNumber, category: maybe, exclude: undefined };
  const train: TrainOptions = { epochs: maybeNumber, onProgress: undefined, signal };
  const sync: SyncControl = { onProgress: undefined, signal, contribute: undefined };
  const offers: OffersOptions = {
    k: maybeNumber, seed: undefined, exploration: undefined, priorStrength: undefined, objective: undefined,
    context: { cart: [{ itemId: 'a', quantity: maybeNumber, price: undefined }], page: undefined, itemId: maybe, now: maybeNumber },
  };
  const offer: Offer = {
    id: 'o', title: '10% off', discount: { kind: 'percent', percent: 10, maxAmount: maybeNumber }, scope: { kind: 'all' },
    minBasket: maybeNumber, validFrom: undefined, validUntil: maybeNumber, audience: undefined,
    limits: { maxRedemptions: maybeNumber, maxImpressions: undefined, coolDownHours: undefined },
    hints: { margin: maybeNumber, typicalSpend: undefined, cost: undefined },
  };
  const signed: SignedOfferCatalog = { catalog: { version: 1, issuedAt: 0, currency: 'GBP', offers: [offer], affinity: undefined }, alg: 'ES256', kid: maybe, signature: '' };
  const top = await rec.recommend(recommend);
  const first = top[0];
  if (first) because(first.reason);
  await rec.similar('a', similar);
  await rec.train(train);
  await rec.sync(sync);
  await rec.setOffers(signed);
  await rec.offers(offers);
  events.length; base.t;
  const file = await rec.export();
  const ledger: OfferLedger | null = file.offerLedger;
  const stats: readonly LedgerOfferStats[] = ledger ? ledger.offers : [];
  stats.length;
}

// The Node entry's options take explicit undefined too (the same validation runs on both).
import { Engine } from '../../src/node.js';
import type { EngineOptions } from '../../src/node.js';
const engineOptions: EngineOptions = {
  catalog: { items: [item] }, backend: undefined, backendCandidates: undefined, dbName: maybe,
  retention: { maxEvents: maybeNumber, maxAgeDays: undefined }, model: { dim: maybeNumber, seed: undefined },
  autoTrainEvery: maybeNumber, training: undefined, offers: { publicKey: key, minVersion: maybeNumber },
  federated: undefined, neighbors: { url: 'https://shop.example/neighbors.bin', timeoutMs: maybeNumber, refreshHours: undefined },
  fetch: undefined, consent: undefined, globalPrivacyControl: undefined, honorGlobalPrivacyControl: undefined,
  now: undefined, store: undefined, onConsent: undefined, consentAsOf: maybeNumber,
};
export const engine = (): Promise<Engine> => Engine.create(engineOptions);
`;
}

let program: ts.Program;
let checker: ts.TypeChecker;

before(() => {
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    lib: ['lib.es2022.d.ts', 'lib.dom.d.ts', 'lib.dom.iterable.d.ts'],
    types: ['node'],
    typeRoots: [join(ROOT, 'node_modules/@types')],
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    skipLibCheck: true,
    noEmit: true,
  };
  const host = ts.createCompilerHost(options, true);
  const texts = new Map([
    [CONSUMER, consumerSource()],
    [SINGLE_PAGE, singlePageSource()],
  ]);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, version, ...rest) => {
    const text = texts.get(resolve(name));
    return text !== undefined ? ts.createSourceFile(name, text, version, true) : getSourceFile.call(host, name, version, ...rest);
  };
  host.fileExists = (name) => texts.has(resolve(name)) || fileExists.call(host, name);
  host.readFile = (name) => texts.get(resolve(name)) ?? readFile.call(host, name);
  program = ts.createProgram({ rootNames: [INDEX, NODE, CONSUMER, SINGLE_PAGE], options, host });
  checker = program.getTypeChecker();
});

function isOurs(d: ts.Node): boolean {
  const f = d.getSourceFile().fileName;
  return resolve(f).startsWith(SRC);
}

function resolved(s: ts.Symbol): ts.Symbol {
  return s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s;
}

function exportsOf(entry: string): ts.Symbol[] {
  const sf = program.getSourceFile(entry);
  assert.ok(sf, `${entry} is not in the program`);
  const mod = checker.getSymbolAtLocation(sf);
  assert.ok(mod, `${entry} is not a module`);
  return checker.getExportsOfModule(mod);
}

/** Whether a class member is left out of the published declarations' meaning (private, protected, #). */
function hidden(m: ts.ClassElement): boolean {
  if (m.name && ts.isPrivateIdentifier(m.name)) return true;
  return (ts.getCombinedModifierFlags(m as unknown as ts.Declaration) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) !== 0;
}

/** An overload's implementation (a body next to body-less signatures of the same name) is not published. */
function isOverloadImplementation(d: ts.SignatureDeclaration): boolean {
  if (!('body' in d) || !d.body) return false;
  const s = d.name ? checker.getSymbolAtLocation(d.name) : undefined;
  return (s?.declarations ?? []).some((o) => o !== d && ts.isFunctionLike(o) && !('body' in o && o.body));
}

/**
 * Named types of our sources that an entry's public signatures reference without the entry
 * exporting them, each with where it is referenced: what /tmp-style audits of the built `.d.ts`
 * report, read from the sources (function and method bodies skipped; inferred types walked).
 */
function leaksOf(entry: string): Map<string, Set<string>> {
  const exported = new Set(exportsOf(entry).map(resolved));
  const leaks = new Map<string, Set<string>>();
  const seen = new Set<ts.Symbol>();

  const reference = (sym: ts.Symbol | undefined, where: string): void => {
    if (!sym) return;
    const s = resolved(sym);
    if (s.flags & ts.SymbolFlags.TypeParameter) return;
    if (!(s.declarations ?? []).some(isOurs)) return;
    if (!exported.has(s)) {
      if (!leaks.has(s.name)) leaks.set(s.name, new Set());
      leaks.get(s.name)!.add(where);
    }
    walkSymbol(s, s.name);
  };

  /** A type written out: every named type in it. */
  const visitType = (n: ts.Node, where: string): void => {
    if (ts.isTypeReferenceNode(n)) reference(checker.getSymbolAtLocation(n.typeName), where);
    else if (ts.isExpressionWithTypeArguments(n)) reference(checker.getSymbolAtLocation(n.expression), where);
    else if (ts.isImportTypeNode(n)) {
      const t = checker.getTypeAtLocation(n);
      reference(t.aliasSymbol ?? t.getSymbol(), `${where} (import())`);
    }
    ts.forEachChild(n, (c) => visitType(c, where));
  };

  /** A type the declaration leaves to inference: the named types the declaration file would write. */
  const visitInferred = (t: ts.Type, where: string, depth = 0): void => {
    if (depth > 4) return;
    if (t.aliasSymbol) {
      reference(t.aliasSymbol, where);
      for (const a of t.aliasTypeArguments ?? []) visitInferred(a, where, depth + 1);
      return;
    }
    if (t.isUnionOrIntersection()) {
      for (const u of t.types) visitInferred(u, where, depth + 1);
      return;
    }
    if (!(t.flags & ts.TypeFlags.Object)) return;
    const o = t as ts.ObjectType;
    if (o.objectFlags & ts.ObjectFlags.Reference) {
      const r = o as ts.TypeReference;
      if (r.target !== r) visitInferred(r.target, where, depth + 1);
      for (const a of checker.getTypeArguments(r)) visitInferred(a, where, depth + 1);
      return;
    }
    const s = t.getSymbol();
    if (s && s.flags & (ts.SymbolFlags.Class | ts.SymbolFlags.Interface | ts.SymbolFlags.Enum)) {
      reference(s, where);
      return;
    }
    for (const p of checker.getPropertiesOfType(t)) {
      const d = p.valueDeclaration;
      if (d && (ts.isPropertySignature(d) || ts.isPropertyDeclaration(d)) && d.type) visitType(d.type, `${where}.${p.name}`);
      else if (d) visitInferred(checker.getTypeOfSymbolAtLocation(p, d), `${where}.${p.name}`, depth + 1);
    }
    for (const sig of [...t.getCallSignatures(), ...t.getConstructSignatures()]) visitSignatureType(sig, where, depth + 1);
  };

  const visitSignatureType = (sig: ts.Signature, where: string, depth: number): void => {
    const d = sig.getDeclaration() as ts.SignatureDeclaration | undefined;
    if (d && isOurs(d)) {
      visitSignature(d, where);
      return;
    }
    for (const p of sig.getParameters()) visitInferred(checker.getTypeOfSymbol(p), where, depth);
    visitInferred(sig.getReturnType(), where, depth);
  };

  /** Type parameters, parameters and return type of a function-like declaration; never its body. */
  const visitSignature = (d: ts.SignatureDeclaration, where: string): void => {
    for (const tp of d.typeParameters ?? []) visitType(tp, where);
    for (const p of d.parameters) {
      if (p.type) visitType(p.type, where);
      else visitInferred(checker.getTypeAtLocation(p), where);
    }
    if (d.type) visitType(d.type, where);
    else if (!ts.isConstructorDeclaration(d) && !ts.isSetAccessorDeclaration(d)) {
      const sig = checker.getSignatureFromDeclaration(d);
      if (sig) visitInferred(checker.getReturnTypeOfSignature(sig), where);
    }
  };

  const walkDeclaration = (d: ts.Declaration, where: string): void => {
    if (ts.isClassDeclaration(d) || ts.isClassExpression(d)) {
      for (const tp of d.typeParameters ?? []) visitType(tp, where);
      for (const h of d.heritageClauses ?? []) visitType(h, where);
      for (const m of d.members) {
        if (hidden(m)) continue;
        const at = `${where}.${m.name ? m.name.getText() : 'ctor'}`;
        if (ts.isPropertyDeclaration(m)) {
          if (m.type) visitType(m.type, at);
          else visitInferred(checker.getTypeAtLocation(m), at);
        } else if (ts.isIndexSignatureDeclaration(m)) visitType(m, at);
        else if (ts.isFunctionLike(m) && !isOverloadImplementation(m)) visitSignature(m, at);
      }
    } else if (ts.isFunctionDeclaration(d)) {
      if (!isOverloadImplementation(d)) visitSignature(d, where);
    } else if (ts.isVariableDeclaration(d)) {
      if (d.type) visitType(d.type, where);
      else if (d.initializer && (ts.isArrowFunction(d.initializer) || ts.isFunctionExpression(d.initializer))) visitSignature(d.initializer, where);
      else visitInferred(checker.getTypeAtLocation(d), where);
    } else if (ts.isInterfaceDeclaration(d) || ts.isTypeAliasDeclaration(d) || ts.isEnumDeclaration(d)) {
      visitType(d, where);
    }
  };

  const walkSymbol = (s: ts.Symbol, where: string): void => {
    if (seen.has(s)) return;
    seen.add(s);
    for (const d of s.declarations ?? []) if (isOurs(d)) walkDeclaration(d, where);
  };

  for (const e of exportsOf(entry)) walkSymbol(resolved(e), e.name);
  return leaks;
}

function assertNoLeaks(entry: string): void {
  const leaks = leaksOf(entry);
  const known = KNOWN_UNEXPORTED[entry] ?? {};
  for (const name of Object.keys(known)) {
    assert.ok(leaks.has(name), `${name} is no longer an unexported type of ${entry}'s signatures: remove it from KNOWN_UNEXPORTED`);
    leaks.delete(name);
  }
  const lines = [...leaks].map(([name, where]) => `${name} <- ${[...where].slice(0, 4).join('; ')}`);
  assert.deepEqual(lines, [], `types named by ${entry}'s public signatures that it does not export:\n${lines.join('\n')}`);
}

describe('public types', () => {
  it("localrec/node exports every type its public signatures name", () => {
    assertNoLeaks(NODE);
  });

  it('localrec exports every type its public signatures name', () => {
    assertNoLeaks(INDEX);
  });

  it('every export of localrec has a doc comment', () => {
    const undocumented: string[] = [];
    for (const e of exportsOf(INDEX)) {
      const d = resolved(e).declarations?.[0];
      if (!d || !isOurs(d)) continue;
      const at = ts.isVariableDeclaration(d) ? d.parent.parent : d;
      if (ts.getJSDocCommentsAndTags(at).length === 0) undocumented.push(e.name);
    }
    for (const name of Object.keys(KNOWN_UNDOCUMENTED)) {
      assert.ok(undocumented.includes(name), `${name} has a doc comment now: remove it from KNOWN_UNDOCUMENTED`);
    }
    const missing = undocumented.filter((name) => !(name in KNOWN_UNDOCUMENTED));
    assert.deepEqual(missing, [], `exports of src/index.ts without a doc comment: ${missing.join(', ')}`);
  });

  it('localrec/node publishes the errors and their guards, not the internal helpers', () => {
    const names = new Set(exportsOf(NODE).map((e) => e.name));
    for (const e of exportsOf(join(ROOT, 'src/errors.ts'))) {
      const internal = ['reviveError', 'errorDetails', 'syncCancelled'].includes(e.name);
      assert.equal(names.has(e.name), !internal, `${e.name} ${internal ? 'is internal but' : 'is not'} exported by src/node.ts`);
    }
  });

  const diagnosticsOf = (file: string): string[] => {
    const sf = program.getSourceFile(file);
    assert.ok(sf);
    const diagnostics = [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)];
    return diagnostics.map((d) => {
      const where = d.file && d.start !== undefined ? `line ${d.file.getLineAndCharacterOfPosition(d.start).line + 1}: ` : '';
      return where + ts.flattenDiagnosticMessageText(d.messageText, '\n');
    });
  };

  it('a strict consumer compiles the README reason translation and explicit undefined options', () => {
    assert.deepEqual(diagnosticsOf(CONSUMER), []);
  });

  it('a strict consumer compiles the README single-page-app recommender (lazy, server-safe, tracking while it starts)', () => {
    assert.deepEqual(diagnosticsOf(SINGLE_PAGE), []);
  });
});
