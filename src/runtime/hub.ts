import { mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import {
  downloadFileToCacheDir,
  getHFHubCachePath,
  getRepoFolderName,
  HubApiError,
  type ListFileEntry,
  listFiles,
  modelInfo,
} from "@huggingface/hub";
import { FlagserveError } from "./errors.js";
import { listFilesRecursive } from "./model-dir.js";

/** Where and how to reach the Hugging Face hub; every field defaults from the standard env vars. */
export interface HubOptions {
  /** Git revision: branch, tag or commit sha. Default "main". */
  revision?: string;
  /** Cache root (the `hub` folder). Default HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. */
  cacheDir?: string;
  /** Hub base URL. Default HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Access token. Default HF_TOKEN (or HUGGING_FACE_HUB_TOKEN). */
  token?: string;
  /** Never touch the network. Default HF_HUB_OFFLINE. */
  offline?: boolean;
  /** Told when the hub cannot be reached and the cached snapshot is used instead. Default: stderr. */
  onCacheFallback?: (message: string) => void;
}

const TRUTHY = new Set(["1", "true", "yes", "on"]);

export function hubOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): Required<
  Omit<HubOptions, "token" | "onCacheFallback">
> & {
  token: string | undefined;
} {
  const hfHome = env.HF_HOME;
  const cacheDir =
    env.HF_HUB_CACHE ?? env.HUGGINGFACE_HUB_CACHE ?? (hfHome ? join(hfHome, "hub") : getHFHubCachePath());
  return {
    revision: "main",
    cacheDir,
    endpoint: (env.HF_ENDPOINT ?? "https://huggingface.co").replace(/\/+$/, ""),
    token: env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN ?? undefined,
    offline: TRUTHY.has((env.HF_HUB_OFFLINE ?? env.TRANSFORMERS_OFFLINE ?? "").toLowerCase()),
  };
}

/** "org/name" or "name": what the hub accepts as a model id. */
export function looksLikeRepoId(s: string): boolean {
  return /^[A-Za-z0-9][\w.-]*(\/[\w.-]+)?$/.test(s) && !s.includes("..");
}

/** Chooses, from a repository's file list, the files a model needs (the rest are never fetched). */
export type FileSelector = (files: string[]) => string[];

interface Resolved {
  repo: string;
  commit: string;
  dir: string;
}

function describeHubError(repo: string, revision: string, err: unknown): FlagserveError {
  if (err instanceof FlagserveError) return err;
  if (err instanceof HubApiError) {
    const said = JSON.stringify(err.data ?? "");
    if (/Repository not found/i.test(said)) {
      return new FlagserveError(
        "hub_not_found",
        `${repo} was not found on the hub (HTTP ${err.statusCode}); check the model id, or set HF_TOKEN if it is private`,
        { cause: err },
      );
    }
    if (err.statusCode === 401 || err.statusCode === 403) {
      return new FlagserveError(
        "hub_auth",
        `the hub refused access to ${repo} (HTTP ${err.statusCode}); it may be private or gated: set HF_TOKEN to a token that can read it`,
        { cause: err },
      );
    }
    if (err.statusCode === 404) {
      return new FlagserveError(
        "hub_not_found",
        `${repo} at revision ${revision} was not found on the hub (HTTP 404); check the model id and revision`,
        { cause: err },
      );
    }
    return new FlagserveError(
      "hub_unreachable",
      `the hub answered HTTP ${err.statusCode} for ${repo}: ${err.message}`,
      {
        cause: err,
      },
    );
  }
  if (err instanceof TypeError && /token must start/.test(err.message)) {
    return new FlagserveError("hub_auth", `HF_TOKEN is not a valid hub token: ${err.message}`, {
      cause: err,
    });
  }
  return new FlagserveError(
    "hub_unreachable",
    `cannot reach the hub for ${repo}: ${(err as Error).message}`,
    {
      cause: err,
    },
  );
}

function repoFolder(cacheDir: string, repo: string): string {
  return join(cacheDir, getRepoFolderName({ name: repo, type: "model" }));
}

/** The snapshot a revision points to in the local cache, if any. */
async function cachedSnapshot(cacheDir: string, repo: string, revision: string): Promise<string | undefined> {
  const folder = repoFolder(cacheDir, repo);
  let commit = revision;
  if (!/^[0-9a-f]{40}$/.test(revision)) {
    commit = (await readFile(join(folder, "refs", revision), "utf8").catch(() => "")).trim();
    if (!commit) return undefined;
  }
  const dir = join(folder, "snapshots", commit);
  return (await stat(dir).catch(() => undefined))?.isDirectory() ? dir : undefined;
}

/**
 * Make the files a model needs available in the standard Hugging Face cache and return the
 * snapshot directory. Online: the revision is resolved to a commit, its ref recorded, and only
 * the selected files are fetched (a cached file is never fetched twice). Offline, or when the hub
 * cannot be reached, an existing snapshot is used if it has every selected file.
 */
export async function snapshotModel(
  repo: string,
  select: FileSelector,
  options: HubOptions = {},
): Promise<string> {
  const env = hubOptionsFromEnv();
  const revision = options.revision ?? env.revision;
  const cacheDir = options.cacheDir ?? env.cacheDir;
  const endpoint = (options.endpoint ?? env.endpoint).replace(/\/+$/, "");
  const token = options.token ?? env.token;
  const offline = options.offline ?? env.offline;

  const fromCache = async (why: string, cause?: unknown): Promise<string> => {
    const dir = await cachedSnapshot(cacheDir, repo, revision);
    if (!dir) {
      throw new FlagserveError(
        "hub_offline",
        `${repo} (revision ${revision}) is not in the cache at ${cacheDir} and ${why}. ` +
          `Serve a local model directory instead (--model ./dir), point HF_ENDPOINT at a reachable hub or mirror, ` +
          `or run "flagserve download ${repo}" where the hub is reachable (HF_HUB_OFFLINE=1 then uses only the cache)`,
        { cause },
      );
    }
    const present = await listFilesRecursive(dir);
    const missing = select(present).filter((f) => !present.includes(f));
    if (missing.length > 0 || select(present).length === 0) {
      throw new FlagserveError(
        "hub_offline",
        `the cached snapshot ${dir} lacks ${missing.join(", ") || "the model files"} and ${why}`,
        { cause },
      );
    }
    return dir;
  };

  if (offline) return fromCache("HF_HUB_OFFLINE is set");

  let resolved: Resolved;
  try {
    resolved = await resolveRevision(repo, revision, cacheDir, endpoint, token);
  } catch (err) {
    const e = describeHubError(repo, revision, err);
    // Like huggingface_hub: an unreachable hub falls back to what the cache already has.
    if (e.kind === "hub_unreachable") {
      const dir = await fromCache(`the hub cannot be reached at ${endpoint} (${e.message})`, e);
      const warn =
        options.onCacheFallback ?? ((m: string) => process.stderr.write(`flagserve: warning: ${m}\n`));
      warn(
        `the hub cannot be reached at ${endpoint} (${e.message}); using the cached snapshot ${dir} of ${repo}`,
      );
      return dir;
    }
    throw e;
  }

  let entries: ListFileEntry[];
  try {
    entries = [];
    for await (const entry of listFiles({
      repo: { type: "model", name: repo },
      revision: resolved.commit,
      recursive: true,
      hubUrl: endpoint,
      ...(token ? { accessToken: token } : {}),
    })) {
      if (entry.type === "file") entries.push(entry);
    }
  } catch (err) {
    throw describeHubError(repo, revision, err);
  }
  const sizes = new Map(entries.map((e) => [e.path, e.size]));
  const wanted = select(entries.map((e) => e.path));
  for (const path of wanted) {
    let local: string;
    try {
      local = await downloadFileToCacheDir({
        repo: { type: "model", name: repo },
        path,
        revision: resolved.commit,
        cacheDir,
        hubUrl: endpoint,
        ...(token ? { accessToken: token } : {}),
      });
    } catch (err) {
      throw describeHubError(repo, revision, err);
    }
    const expected = sizes.get(path);
    const actual = (await stat(local).catch(() => undefined))?.size;
    if (expected !== undefined && actual !== expected) {
      // A truncated transfer must not stay in the cache looking complete.
      await rm(local, { force: true });
      throw new FlagserveError(
        "hub_unreachable",
        `download of ${repo}/${path} is incomplete (${actual ?? 0} of ${expected} bytes); try again`,
      );
    }
  }
  return resolved.dir;
}

async function resolveRevision(
  repo: string,
  revision: string,
  cacheDir: string,
  endpoint: string,
  token: string | undefined,
): Promise<Resolved> {
  const info = await modelInfo({
    name: repo,
    revision,
    hubUrl: endpoint,
    additionalFields: ["sha"],
    ...(token ? { accessToken: token } : {}),
  });
  const commit = (info as { sha?: string }).sha;
  if (!commit)
    throw new FlagserveError("hub_unreachable", `the hub did not return a commit for ${repo}@${revision}`);
  const folder = repoFolder(cacheDir, repo);
  if (revision !== commit) {
    const ref = join(folder, "refs", revision);
    await mkdir(dirname(ref), { recursive: true });
    await writeFile(ref, commit);
  }
  const dir = join(folder, "snapshots", commit);
  await mkdir(dir, { recursive: true });
  return { repo, commit, dir };
}
