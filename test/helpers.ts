import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const FIXTURES = join(ROOT, "test", "fixtures");

export function modelPath(name: string): string {
  return join(FIXTURES, "models", name);
}

// biome-ignore lint/suspicious/noExplicitAny: golden files are free-form JSON written by the Python side
export type Golden = any;

export function loadGolden(name: string): Golden {
  return JSON.parse(readFileSync(join(FIXTURES, "goldens", `${name}.json`), "utf8"));
}

/** A temporary directory removed by the returned cleanup function. */
export async function tempDir(
  prefix = "flagserve-test-",
): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

/** FlagAutoModel maps by directory name: expose a fixture under a mapped name (as the Python side did). */
export async function namedModelDir(
  fixture: string,
  name: string,
): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const dir = await tempDir();
  const path = join(dir.path, name);
  await symlink(modelPath(fixture), path);
  return { path, cleanup: dir.cleanup };
}

/** Largest absolute difference between two equally shaped vectors or matrices. */
export function maxAbsDiff(
  actual: ArrayLike<number>[] | ArrayLike<number>,
  expected: number[][] | number[],
): number {
  if (expected.length === 0) {
    assert.equal(actual.length, 0, "expected nothing");
    return 0;
  }
  const a =
    Array.isArray(actual) && typeof actual[0] !== "number"
      ? (actual as ArrayLike<number>[])
      : [actual as ArrayLike<number>];
  const e = Array.isArray(expected[0]) ? (expected as number[][]) : [expected as number[]];
  assert.equal(a.length, e.length, "row count");
  let worst = 0;
  a.forEach((row, i) => {
    const want = e[i] as number[];
    assert.equal(row.length, want.length, `row ${i} length`);
    for (let j = 0; j < want.length; j++)
      worst = Math.max(worst, Math.abs((row[j] as number) - (want[j] as number)));
  });
  return worst;
}

export function assertClose(
  actual: ArrayLike<number>[] | ArrayLike<number>,
  expected: number[][] | number[],
  tolerance: number,
  what: string,
): void {
  const diff = maxAbsDiff(actual, expected);
  assert.ok(diff <= tolerance, `${what}: max abs difference ${diff} > ${tolerance}`);
}
