import { readFile } from "node:fs/promises";
import { FlagserveError } from "./errors.js";

export type JsonObject = Record<string, unknown>;

/** Read and parse a JSON file; a missing or corrupt file is a model_files error naming the path. */
export async function readJsonFile(path: string): Promise<JsonObject> {
  const parsed = await readJsonIfExists(path);
  if (parsed === undefined) throw new FlagserveError("model_files", `${path} is missing`);
  return parsed;
}

/** Like readJsonFile, but a file that does not exist gives undefined. */
export async function readJsonIfExists(path: string): Promise<JsonObject | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new FlagserveError("model_files", `cannot read ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text) as JsonObject;
  } catch (err) {
    throw new FlagserveError("model_files", `${path} is not valid JSON: ${(err as Error).message}`);
  }
}
