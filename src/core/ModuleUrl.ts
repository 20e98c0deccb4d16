/**
 * Worker modules are handed to piscina by URL, which the compiler's import rewriting never sees: in the source tree
 * the file is `X.ts` (Node strips its types), in the built package (`dist/`) it is `X.js` (Node refuses to strip
 * types under node_modules). The calling module's own extension tells which tree is running.
 */

/** The URL of `specifier` (written with `.ts`) relative to `base` (`import.meta.url`), in the tree `base` runs from. */
export const moduleUrl = (specifier: string, base: string): URL => {
  const url = new URL(specifier, base)
  if (new URL(base).pathname.endsWith(".js") && url.pathname.endsWith(".ts")) url.pathname = `${url.pathname.slice(0, -3)}.js`
  return url
}
