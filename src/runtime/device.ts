import { FlagserveError } from "./errors.js";

export type Device = { kind: "cpu" } | { kind: "cuda"; id: number };

/** "cpu", "cuda" (= cuda:0) or "cuda:N". */
export function parseDevice(spec: string): Device {
  const s = spec.trim().toLowerCase();
  if (s === "cpu") return { kind: "cpu" };
  const m = /^cuda(?::(\d+))?$/.exec(s);
  if (m) return { kind: "cuda", id: m[1] === undefined ? 0 : Number(m[1]) };
  throw new FlagserveError("device", `unknown device "${spec}"; expected cpu, cuda or cuda:N`);
}

export function deviceName(d: Device): string {
  return d.kind === "cpu" ? "cpu" : `cuda:${d.id}`;
}
