/**
 * base64url (RFC 4648 §5, no padding) with `btoa`/`atob`, which browsers, workers and Node ≥ 16
 * all have, so the offers modules need no `Buffer`.
 */

/** @example base64urlEncode(new Uint8Array([255, 254])); // '__4' */
export function base64urlEncode(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * Decode base64url; returns `null` for text that is not base64url, so callers can say what was wrong.
 *
 * @example base64urlDecode('__4'); // Uint8Array [255, 254]
 */
export function base64urlDecode(text: string): Uint8Array<ArrayBuffer> | null {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
