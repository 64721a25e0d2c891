import { parseArgs } from "node:util";

/** A command-line flag that can also come from the environment as FLAGSERVE_<NAME>. */
export interface FlagSpec {
  type: "string" | "boolean";
  multiple?: boolean;
  short?: string;
  help: string;
  /** Shown in help; the command applies its own defaults. */
  default?: string;
}

export type FlagSpecs = Record<string, FlagSpec>;
export type FlagValues = Record<string, string | boolean | string[] | undefined>;

export class UsageError extends Error {}

export function envName(flag: string): string {
  return `FLAGSERVE_${flag.replaceAll("-", "_").toUpperCase()}`;
}

/** Parse argv against the specs; a flag not given on the command line falls back to its env var. */
export function parseFlags(
  argv: string[],
  specs: FlagSpecs,
  env: NodeJS.ProcessEnv = process.env,
): { values: FlagValues; positionals: string[] } {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: Object.fromEntries(
        Object.entries(specs).map(([name, s]) => [
          name,
          { type: s.type, ...(s.multiple ? { multiple: true } : {}), ...(s.short ? { short: s.short } : {}) },
        ]),
      ),
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const values: FlagValues = { ...(parsed.values as FlagValues) };
  for (const [name, spec] of Object.entries(specs)) {
    if (values[name] !== undefined) continue;
    const raw = env[envName(name)];
    if (raw === undefined || raw === "") continue;
    if (spec.type === "boolean") values[name] = /^(1|true|yes|on)$/i.test(raw);
    else if (spec.multiple) values[name] = raw.split(/[\s,]+/).filter(Boolean);
    else values[name] = raw;
  }
  return { values, positionals: parsed.positionals };
}

export function str(values: FlagValues, name: string): string | undefined {
  const v = values[name];
  return typeof v === "string" ? v : undefined;
}

export function list(values: FlagValues, name: string): string[] {
  const v = values[name];
  return Array.isArray(v) ? v : typeof v === "string" ? [v] : [];
}

export function int(values: FlagValues, name: string, min = 1): number | undefined {
  const v = str(values, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min)
    throw new UsageError(`--${name} must be an integer >= ${min}, got "${v}"`);
  return n;
}

export function bool(values: FlagValues, name: string): boolean {
  return values[name] === true;
}

export function helpText(usage: string, specs: FlagSpecs): string {
  const rows = Object.entries(specs).map(([name, s]) => {
    const flag = `--${name}${s.type === "string" ? " VALUE" : ""}${s.short ? `, -${s.short}` : ""}`;
    const def = s.default !== undefined ? ` (default ${s.default})` : "";
    return `  ${flag.padEnd(30)} ${s.help}${def} [${envName(name)}]`;
  });
  return `${usage}\n\nOptions:\n${rows.join("\n")}\n`;
}
