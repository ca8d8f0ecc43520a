import { realpathSync, statSync, type Stats } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { ValidationError } from './errors.js';

/**
 * The flags a command reads files from, keyed by flag (`{ '--key': 'keys/private.jwk' }`); an
 * absent flag's value is undefined.
 */
export type InputFlags = Readonly<Record<string, string | undefined>>;

/**
 * Checks, before a command does its work, that `path` can be written as a file: its folder exists
 * and `path` is not itself a folder, nor the file of one of the command's `inputs` (see
 * {@link checkNotAnInput}). A wrong `--out` is then reported at once, naming the flag, not as an
 * ENOENT after a minute of computing. Node only (CLI).
 *
 * @example
 * ```ts
 * checkOutputFile('public/neighbors.lrn', '--out'); // throws "--out: folder 'public' does not exist" when it is missing
 * checkOutputFile('keys/private.jwk', '--out', { '--key': 'keys/private.jwk' }); // throws "--out: is the same file as --key …"
 * ```
 */
export function checkOutputFile(path: string, flag: string, inputs: InputFlags = {}): void {
  const folder = dirname(resolve(path));
  const dir = stat(folder);
  if (!dir) {
    const blocked = fileAbove(folder);
    if (blocked !== undefined) throw new ValidationError(flag, `'${blocked}' is a file, not a folder`);
    throw new ValidationError(flag, `folder '${dirname(path)}' does not exist (create it first)`);
  }
  if (!dir.isDirectory()) throw new ValidationError(flag, `'${dirname(path)}' is not a folder`);
  if (stat(path)?.isDirectory()) throw new ValidationError(flag, `'${path}' is a folder; give a file name`);
  checkNotAnInput(path, flag, inputs);
}

/**
 * Like {@link checkOutputFile} for a folder the command creates if needed: `path` must not be a
 * file, nor lie under one (which would fail later as ENOTDIR or EEXIST).
 */
export function checkOutputFolder(path: string, flag: string): void {
  const st = stat(path);
  if (st && !st.isDirectory()) throw new ValidationError(flag, `'${path}' is a file, not a folder`);
  if (!st) {
    const blocked = fileAbove(resolve(path));
    if (blocked !== undefined) throw new ValidationError(flag, `'${path}' is under '${blocked}', which is a file, not a folder`);
  }
}

/**
 * Refuses an output path that names the same file as one of the command's inputs: writing it
 * would replace the input (a private key, an order log) with the output, for good. Paths are
 * compared resolved, through symbolic links (`./a`, `a` and a link to `a` are one file), and by
 * device and inode where both exist (a hard link too).
 *
 * @example
 * ```ts
 * checkNotAnInput('orders.csv', '--out', { '--data': './orders.csv' });
 * // throws "--out: is the same file as --data (./orders.csv); refusing to overwrite an input"
 * ```
 */
export function checkNotAnInput(path: string, flag: string, inputs: InputFlags): void {
  const out = identify(path);
  for (const [inputFlag, input] of Object.entries(inputs)) {
    if (input === undefined) continue;
    const other = identify(input);
    if (out.real === other.real || (out.id !== undefined && out.id === other.id)) {
      throw new ValidationError(flag, `is the same file as ${inputFlag} (${input}); refusing to overwrite an input`);
    }
  }
}

/**
 * `path` resolved through symbolic links, also when it does not exist (yet): the nearest existing
 * folder's real path, then the rest of the names.
 */
export function realPath(path: string): string {
  const abs = resolve(path);
  try {
    return realpathSync(abs);
  } catch {
    const parent = dirname(abs);
    return parent === abs ? abs : join(realPath(parent), basename(abs));
  }
}

/** Where `path` really is: its resolved path through any links, and device:inode when it exists. */
function identify(path: string): { real: string; id?: string } {
  const st = stat(resolve(path));
  const real = realPath(path);
  return st ? { real, id: `${st.dev}:${st.ino}` } : { real };
}

/** `statSync`, or undefined when nothing is there (also when a folder on the way is a file). */
function stat(path: string): Stats | undefined {
  try {
    return statSync(path, { throwIfNoEntry: false });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
    throw e;
  }
}

/** The nearest existing folder on the way up to absolute `path`, when it is a file instead. */
function fileAbove(path: string): string | undefined {
  for (let p = dirname(path); ; p = dirname(p)) {
    const st = stat(p);
    if (st) return st.isDirectory() ? undefined : p;
    if (dirname(p) === p) return undefined;
  }
}
