import { readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

/**
 * The modules a TypeScript file loads when it runs, followed through the project's own files:
 * static imports and re-exports that carry at least one value (TypeScript and esbuild drop the
 * type-only ones), side-effect imports, and dynamic import() calls when `dynamic` is set.
 * Returns project files (relative to `root`) and bare package names.
 */
export function runtimeImports(root: string, entry: string, dynamic = false): Set<string> {
  const seen = new Set<string>();
  const stack = [resolve(root, entry)];
  while (stack.length) {
    const file = stack.pop() as string;
    const rel = relative(root, file);
    if (seen.has(rel)) continue;
    seen.add(rel);
    for (const spec of specifiers(readFileSync(file, "utf8"), dynamic)) {
      if (spec.startsWith(".")) stack.push(join(dirname(file), spec).replace(/\.js$/, ".ts"));
      else if (!spec.startsWith("node:"))
        seen.add(
          spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : (spec.split("/")[0] as string),
        );
    }
  }
  return seen;
}

function specifiers(source: string, dynamic: boolean): string[] {
  const out: string[] = [];
  // import X from "m"; import { a, type B } from "m"; import * as n from "m"; export { a } from "m"
  const re = /^\s*(import|export)\s+(type\s+)?([\w\s{},*$]*?)\s*from\s*"([^"]+)"/gm;
  for (const m of source.matchAll(re)) {
    if (m[2]) continue; // import type / export type
    const clause = (m[3] as string).trim();
    const braces = /\{([^}]*)\}/s.exec(clause);
    const outside = clause
      .replace(/\{[^}]*\}/s, "")
      .replace(/,/g, "")
      .trim();
    const valueNamed = braces
      ? (braces[1] as string)
          .split(",")
          .map((x) => x.trim())
          .filter(Boolean)
          .some((x) => !x.startsWith("type "))
      : false;
    if (outside.length > 0 || valueNamed || clause === "*" || clause.startsWith("* as"))
      out.push(m[4] as string);
  }
  for (const m of source.matchAll(/^\s*import\s+"([^"]+)"/gm)) out.push(m[1] as string);
  if (dynamic) for (const m of source.matchAll(/import\(\s*"([^"]+)"\s*\)/g)) out.push(m[1] as string);
  return out;
}
