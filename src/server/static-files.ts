/**
 * Guards for the folder the server publishes (`--static`, `staticDir`): every file under it is
 * readable by anyone, so nothing private may be reachable through it — not the server's own SQLite
 * database, not a dotfile (`.env`, `.git/`), not a file a symbolic link inside it points to outside.
 */
import { realpath, stat } from 'node:fs/promises';
import { isAbsolute, join, relative, sep } from 'node:path';
import { ValidationError } from '../errors.js';
import { realPath } from '../output-file.js';

/** Whether `inner` is `outer` or lies under it (both absolute, resolved). */
export function isWithin(inner: string, outer: string): boolean {
  const rel = relative(outer, inner);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

/**
 * Refuses a SQLite folder inside the published folder: the database of updates and versions would
 * be downloadable. `fields` name the two settings in the error (the CLI's flags by default).
 *
 * @example
 * ```ts
 * checkNotPublished('site/.data', 'site'); // throws "--data-dir: 'site/.data' is inside the --static folder 'site' …"
 * ```
 */
export function checkNotPublished(dataDir: string, staticDir: string, fields = { dataDir: '--data-dir', staticDir: '--static' }): void {
  if (isWithin(realPath(dataDir), realPath(staticDir))) {
    throw new ValidationError(fields.dataDir, `'${dataDir}' is inside the ${fields.staticDir} folder '${staticDir}', which the server publishes: the database would be downloadable; put it outside (e.g. ../localrec-data)`);
  }
}

/**
 * Whether a request path may be served from `root` (a resolved real path): no segment that starts
 * with a dot (dotfiles and dot-folders such as `.env`, `.git/`, `.data/` stay private), none that
 * does not decode, and, when the file exists, its real path inside `root` (a symbolic link that
 * leads out of the folder is not followed), for a folder its `index.html` too. Paths that name nothing are allowed through: the
 * static handler answers them 404.
 */
export async function servable(root: string, urlPath: string): Promise<boolean> {
  const segments: string[] = [];
  for (const raw of urlPath.split('/')) {
    if (raw === '') continue;
    let s: string;
    try {
      s = decodeURIComponent(raw);
    } catch {
      return false;
    }
    if (s.startsWith('.') || s.includes('/') || s.includes('\\') || s.includes('\0')) return false;
    segments.push(s);
  }
  const file = join(root, ...segments);
  if (!isWithin(file, root)) return false;
  // Asked on every static request: the event loop is not held for the file system.
  const real = await realpath(file).catch(() => undefined);
  if (real === undefined) return true;
  if (!isWithin(real, root)) return false;
  // A folder is answered with its index page (serveStatic's `index.html`): that file must stay
  // inside too.
  if ((await stat(real)).isDirectory()) {
    const index = await realpath(join(real, 'index.html')).catch(() => undefined);
    return index === undefined || isWithin(index, root);
  }
  return true;
}
