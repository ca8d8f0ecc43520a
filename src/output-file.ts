import { randomBytes } from 'node:crypto';
import { closeSync, constants, mkdirSync, openSync, readFileSync, realpathSync, statSync, unlinkSync, type Stats } from 'node:fs';
import { copyFile, link, open, rename, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { ValidationError } from './errors.js';

/**
 * The flags a command reads files from, keyed by flag (`{ '--key': 'keys/private.jwk' }`); an
 * absent flag's value is undefined.
 */
export type InputFlags = Readonly<Record<string, string | undefined>>;

/**
 * Checks, before a command does its work, that `path` can be written as a file: its folder exists
 * and takes a new file (one is created there and removed, as {@link writeOutputFiles} will: a
 * read-only or forbidden folder is told now), and `path` is not itself a folder, nor the file of
 * one of the command's `inputs` (see {@link checkNotAnInput}), nor an existing key file (a JSON
 * Web Key: a private key is never made twice, and every device trusts its public half). A wrong
 * `--out` is then reported at once, naming the flag, not as an ENOENT or EROFS after a minute of
 * computing. Node only (CLI).
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
  const st = stat(path);
  if (st?.isDirectory()) throw new ValidationError(flag, `'${path}' is a folder; give a file name`);
  checkNotAnInput(path, flag, inputs);
  checkNotAKey(path, flag);
  // A device or FIFO (`/dev/stdout`) is written in place, not through a file beside it.
  if (!st || st.isFile()) {
    const target = st ? realpathSync(path) : realPath(path);
    probeFolder(dirname(target), basename(target), flag);
  }
}

/**
 * Creates, then removes, a file named as {@link writeOutputFiles}' temporary files
 * (`.NAME.RANDOM.tmp`) in `folder`: whether a file can be made there is known for sure only by
 * making one (`access(W_OK)` says yes to root on a read-only file system's folders). A
 * ValidationError naming `flag`, the folder and the system's reason otherwise.
 */
function probeFolder(folder: string, name: string, flag: string): void {
  const probe = join(folder, `.${name}.${randomBytes(6).toString('hex')}.tmp`);
  let fd: number;
  try {
    fd = openSync(probe, 'wx', 0o600);
  } catch (e) {
    const err = new ValidationError(flag, `cannot write in folder '${folder}' (${reason(e)})`);
    err.cause = e;
    throw err;
  }
  closeSync(fd);
  try {
    unlinkSync(probe);
  } catch {
    // Made but not removable (a sticky folder of another owner cannot do this to its maker): left.
  }
}

/** A system error as `CODE: what it means` (`EROFS: read-only file system`), else its message. */
function reason(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  // Node's message is `CODE: description, syscall 'path'`: the path is said by the caller.
  const m = /^([A-Z0-9_]+): ([^,]+)/.exec(String(err.message));
  return m ? `${m[1]}: ${m[2]}` : (err.code ?? String(err.message));
}

/**
 * `JSON.parse` of a file's text, without the byte-order mark Notepad and PowerShell's
 * `Out-File -Encoding utf8` write before it (JSON.parse refuses it, naming an invisible character).
 * A text that is not JSON throws a SyntaxError a person can act on: where it fails as line and
 * column (JSON.parse gives a character offset), a gzip or binary file said to be one, and no raw
 * control characters in the message.
 *
 * @example
 * ```ts
 * parseJsonText('{\n  "a": 1,\n}'); // throws "Expected double-quoted property name in JSON at line 3, column 1"
 * ```
 */
export function parseJsonText(text: string): unknown {
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  try {
    return JSON.parse(body);
  } catch (e) {
    throw new SyntaxError(jsonError(body, (e as Error).message), { cause: e });
  }
}

/** {@link parseJsonText}'s message for `text` that JSON.parse refused with `message`. */
function jsonError(text: string, message: string): string {
  // Read as UTF-8, gzip's magic 1f 8b is U+001F then a replacement character.
  if (text.charCodeAt(0) === 0x1f && (text.charCodeAt(1) === 0xfffd || text.charCodeAt(1) === 0x8b)) return 'the file is gzip-compressed, not JSON text: decompress it first (gunzip)';
  if (text.slice(0, 1024).includes('\u0000')) return 'the file is binary, not JSON text';
  const at = /\bat position (\d+)/.exec(message);
  let out = message;
  if (at) {
    const before = text.slice(0, Number(at[1]));
    const line = before.split('\n').length;
    const column = before.length - before.lastIndexOf('\n');
    out = message.replace(/at position \d+.*$/s, `at line ${line}, column ${column}`);
  }
  // Line breaks and tabs are left to the caller's one-line form; other control characters escaped.
  return out.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * Refuses an output path that is an existing file holding a JSON Web Key (an object with a `kty`
 * member): writing over it would lose the key for good.
 */
function checkNotAKey(path: string, flag: string): void {
  const st = stat(path);
  // A JWK is small; a large file is not one (and is not read whole).
  if (!st?.isFile() || st.size > 65_536) return;
  let value: unknown;
  try {
    value = parseJsonText(readFileSync(path, 'utf8'));
  } catch {
    return;
  }
  if (typeof value === 'object' && value !== null && !Array.isArray(value) && typeof (value as { kty?: unknown }).kty === 'string') {
    throw new ValidationError(flag, `'${path}' holds a key (JWK); refusing to overwrite it (choose another file)`);
  }
}

/** One file for {@link writeOutputFiles}: where, what, and the flag that named it (for errors). */
export interface OutputFile {
  path: string;
  data: string | Uint8Array;
  flag: string;
  /** Permissions of a new file (default 0o666; the umask applies); a replaced file keeps its own. */
  mode?: number;
}

/**
 * Writes each file in one step: its bytes go to a temporary file in the same folder
 * (`.NAME.RANDOM.tmp`), flushed to disk, which is then renamed over `path`; an interrupted or failed
 * write (a full disk, a killed process) leaves the old file, or none, never part of one, and the
 * temporary file is removed on failure. Every file is written before the first is moved into place.
 * With `exclusive`, no existing file is replaced (each is linked into place, which fails when the
 * name exists) and a failure removes those already placed: all of them or none (`offers keygen`'s
 * key pair). A replaced file keeps its permissions. A symbolic link is followed (its target is
 * replaced, the link stays); an existing path that is not a regular file (`/dev/null`,
 * `/dev/stdout`, a FIFO) is written in place, as renaming over it would replace the device. A
 * failure is a ValidationError naming the flag and the path, with the system's error as its cause.
 * Node only (CLI).
 *
 * @example
 * ```ts
 * await writeOutputFiles([{ path: 'keys/private.jwk', data: priv, flag: '--out', mode: 0o600 }, { path: 'keys/public.jwk', data: pub, flag: '--out' }], { exclusive: true });
 * ```
 */
export async function writeOutputFiles(files: readonly OutputFile[], options: { exclusive?: boolean } = {}): Promise<void> {
  const staged: Array<{ file: OutputFile; target: string; temp?: string }> = [];
  const placed: string[] = [];
  let at: OutputFile | undefined;
  try {
    for (const file of files) {
      at = file;
      const st = stat(file.path);
      if (st && !st.isFile()) {
        if (options.exclusive) throw Object.assign(new Error(`EEXIST: file already exists, '${file.path}'`), { code: 'EEXIST' });
        staged.push({ file, target: file.path });
        continue;
      }
      const target = st ? realpathSync(file.path) : realPath(file.path);
      const temp = join(dirname(target), `.${basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
      const entry: { file: OutputFile; target: string; temp?: string } = { file, target, temp };
      staged.push(entry);
      const fh = await open(temp, 'wx', file.mode ?? 0o666);
      try {
        if (st) {
          // The file it replaces keeps its permissions and, where allowed, its owner.
          await fh.chmod(st.mode & 0o7777);
          await fh.chown(st.uid, st.gid).catch(() => {});
        }
        await fh.writeFile(file.data);
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
    for (const entry of staged) {
      at = entry.file;
      if (entry.temp === undefined) {
        await writeFile(entry.target, entry.file.data);
      } else if (options.exclusive) {
        await placeNew(entry.temp, entry.target);
        placed.push(entry.target);
        await unlink(entry.temp);
      } else {
        await rename(entry.temp, entry.target);
      }
      entry.temp = undefined;
    }
  } catch (e) {
    for (const entry of staged) if (entry.temp !== undefined) await unlink(entry.temp).catch(() => {});
    for (const p of placed) await unlink(p).catch(() => {});
    if (at === undefined) throw e;
    const err = new ValidationError(at.flag, `cannot write '${at.path}': ${(e as Error).message}`);
    err.cause = e;
    throw err;
  }
}

/**
 * {@link writeOutputFiles} for one file.
 *
 * @example
 * ```ts
 * await writeOutputFile('public/neighbors.lrn', bytes, '--out'); // "--out: cannot write 'public/neighbors.lrn': ENOSPC: …" on a full disk
 * ```
 */
export async function writeOutputFile(path: string, data: string | Uint8Array, flag: string, options: { mode?: number; exclusive?: boolean } = {}): Promise<void> {
  await writeOutputFiles([{ path, data, flag, ...(options.mode !== undefined ? { mode: options.mode } : {}) }], options.exclusive ? { exclusive: true } : {});
}

/** Gives `temp`'s file the new name `target` too, failing (EEXIST) rather than replacing a file there. */
async function placeNew(temp: string, target: string): Promise<void> {
  try {
    await link(temp, target);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw e;
    // A file system without hard links: a copy that refuses an existing name (the file is small).
    await copyFile(temp, target, constants.COPYFILE_EXCL);
  }
}

/**
 * Like {@link checkOutputFile} for a folder the command creates if needed: `path` must not be a
 * file, nor lie under one (which would fail later as ENOTDIR or EEXIST), and a file must be
 * possible to create in it, or, when it does not exist yet, in the nearest folder above it that
 * does (where it will be made).
 */
export function checkOutputFolder(path: string, flag: string): void {
  const st = stat(path);
  if (st && !st.isDirectory()) throw new ValidationError(flag, `'${path}' is a file, not a folder`);
  if (st) return probeFolder(realPath(path), 'localrec', flag);
  const blocked = fileAbove(resolve(path));
  if (blocked !== undefined) throw new ValidationError(flag, `'${path}' is under '${blocked}', which is a file, not a folder`);
  const above = existingAbove(resolve(path));
  if (above !== undefined) probeFolder(realPath(above), basename(resolve(path)), flag);
}

/**
 * `mkdir -p path` for the folder a flag names, failing as a ValidationError that names `flag`,
 * `path` and the system's reason. Each missing folder is made in turn, so that the reason is the
 * one that stopped it (a recursive mkdir reports ENOENT for a read-only file system on Node 20).
 *
 * @example
 * ```ts
 * makeOutputFolder('keys', '--out'); // throws "--out: cannot create folder 'keys' (EACCES: permission denied)"
 * ```
 */
export function makeOutputFolder(path: string, flag: string): void {
  const target = resolve(path);
  let at = target;
  try {
    const missing: string[] = [];
    for (let p = target; ; p = dirname(p)) {
      const st = stat(p);
      if (st?.isDirectory()) break;
      if (st) throw new ValidationError(flag, `cannot create folder '${path}': '${p}' is a file, not a folder`);
      missing.unshift(p);
      if (dirname(p) === p) break;
    }
    for (const p of missing) {
      at = p;
      try {
        mkdirSync(p);
      } catch (e) {
        // Made meanwhile (another process): as good.
        if (!((e as NodeJS.ErrnoException).code === 'EEXIST' && stat(p)?.isDirectory())) throw e;
      }
    }
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    const err = new ValidationError(flag, `cannot create folder '${path}'${at === target ? '' : ` (making '${at}')`} (${reason(e)})`);
    err.cause = e;
    throw err;
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

/** The nearest existing folder above absolute `path` (undefined when none is, or one is a file). */
function existingAbove(path: string): string | undefined {
  for (let p = dirname(path); ; p = dirname(p)) {
    const st = stat(p);
    if (st) return st.isDirectory() ? p : undefined;
    if (dirname(p) === p) return undefined;
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
