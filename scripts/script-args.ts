/**
 * What the demo's data scripts (make-catalog.ts, make-neighbors.ts) share: the checkout's root, for
 * defaults that are the same from any folder; one-line errors without a stack; their options.
 */
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { oneLine } from '../src/options.js';

/** The checkout: the default paths hang off it, so a script gives the same files from any folder. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** A path as the user would type it from here: relative below the current folder, else absolute. */
export function shown(path: string): string {
  const r = relative(process.cwd(), path);
  return r && !r.startsWith('..') && !isAbsolute(r) ? r : path;
}

/** A script's `die`: a mistake in the command line or a missing file is the user's to fix, so one line, no stack, exit 1. */
export function dieAs(script: string): (message: string) => never {
  return (message) => {
    process.stderr.write(`${script}: ${oneLine(message)}\n`);
    process.exit(1);
  };
}

/** The script's string options (each with its default), or one line naming the option and the usage. */
export function scriptArgs<K extends string>(die: (message: string) => never, usage: string, defaults: Record<K, string>): Record<K, string> {
  try {
    const options = Object.fromEntries(Object.entries<string>(defaults).map(([k, v]) => [k, { type: 'string' as const, default: v }]));
    return parseArgs({ options }).values as Record<K, string>;
  } catch (e) {
    // parseArgs' own message goes on about positional arguments; the option and the usage say more.
    const err = e as { code?: string; message?: string };
    const bad = /'([^']+)'/.exec(err.message ?? '')?.[1];
    return die(err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && bad ? `unknown option ${bad}; ${usage}` : `${err.message ?? String(e)}; ${usage}`);
  }
}
