import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { listFilesRecursive } from "../../src/runtime/model-dir.js";

/**
 * A loopback HTTP server that answers the Hugging Face hub endpoints @huggingface/hub calls
 * (model info by revision, tree listing, paths-info, resolve with Range), so the model store is
 * tested against real HTTP: revisions, 404s, private repos and LFS-style large files.
 */
export interface FakeRepo {
  /** Bearer token required to read the repo (private / gated). */
  token?: string;
  /** Branch or tag -> commit sha. */
  refs: Record<string, string>;
  /** Commit sha -> files. */
  commits: Record<string, Record<string, Buffer>>;
}

export interface RequestLog {
  method: string;
  path: string;
}

const LFS_PATTERN = /\.(onnx|onnx_data|bin|safetensors)$/;

function gitOid(content: Buffer): string {
  return createHash("sha1").update(`blob ${content.length}\0`).update(content).digest("hex");
}

function sha256(content: Buffer): string {
  return createHash("sha256").update(content).digest("hex");
}

export function commitSha(seed: string): string {
  return createHash("sha1").update(seed).digest("hex");
}

/** Read every file of a local model directory into a commit's file map. */
export async function filesOf(
  dir: string,
  extra: Record<string, string | Buffer> = {},
): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {};
  for (const f of await listFilesRecursive(dir)) out[f] = await readFile(join(dir, f));
  for (const [k, v] of Object.entries(extra)) out[k] = Buffer.isBuffer(v) ? v : Buffer.from(v);
  return out;
}

export class FakeHub {
  readonly repos = new Map<string, FakeRepo>();
  readonly log: RequestLog[] = [];
  private server: Server | undefined;
  url = "";
  /** Milliseconds every answer is held back (to observe a server while it loads). */
  delayMs = 0;

  addRepo(name: string, repo: FakeRepo): void {
    this.repos.set(name, repo);
  }

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        res.statusCode = 500;
        res.end(String(err));
      });
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    this.server = undefined;
  }

  /** Requests that fetched file bytes (resolve GETs without a 0-0 probe range). */
  downloads(): string[] {
    return this.log.filter((r) => r.method === "GET" && r.path.includes("/resolve/")).map((r) => r.path);
  }

  private error(res: ServerResponse, status: number, code: string, message: string): void {
    res.writeHead(status, { "Content-Type": "application/json", "X-Error-Code": code });
    res.end(JSON.stringify({ error: message }));
  }

  /** Locate the repo and commit a request names, answering 401/404 like the hub does. */
  private lookup(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    revision: string,
  ): { repo: FakeRepo; sha: string; files: Record<string, Buffer> } | undefined {
    const repo = this.repos.get(name);
    if (!repo) {
      // The real hub answers 401 to anonymous requests for missing repos, 404 to authenticated ones.
      this.error(res, req.headers.authorization ? 404 : 401, "RepoNotFound", "Repository not found");
      return undefined;
    }
    if (repo.token && req.headers.authorization !== `Bearer ${repo.token}`) {
      this.error(res, 401, "GatedRepo", "Invalid credentials in Authorization header");
      return undefined;
    }
    const sha = repo.refs[revision] ?? (repo.commits[revision] ? revision : undefined);
    const files = sha ? repo.commits[sha] : undefined;
    if (!sha || !files) {
      this.error(res, 404, "RevisionNotFound", `Invalid rev id: ${revision}`);
      return undefined;
    }
    return { repo, sha, files };
  }

  private entry(path: string, content: Buffer, sha: string) {
    return {
      type: "file",
      path,
      oid: gitOid(content),
      size: content.length,
      ...(LFS_PATTERN.test(path)
        ? { lfs: { oid: sha256(content), size: content.length, pointerSize: 134 } }
        : {}),
      lastCommit: { id: sha, title: "fixture", date: "2026-01-01T00:00:00.000Z" },
    };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    const url = new URL(req.url ?? "/", "http://x");
    const path = decodeURIComponent(url.pathname);
    this.log.push({
      method: req.method ?? "GET",
      path: `${path}${req.headers.range === "bytes=0-0" ? " (probe)" : ""}`,
    });
    let m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/(.+)$/.exec(path);
    if (m && req.method === "GET") {
      const found = this.lookup(req, res, m[1] as string, m[2] as string);
      if (!found) return;
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(
        JSON.stringify({
          _id: found.sha.slice(0, 24),
          id: m[1],
          sha: found.sha,
          private: Boolean(found.repo.token),
          siblings: Object.keys(found.files).map((rfilename) => ({ rfilename })),
        }),
      );
      return;
    }
    m = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(path);
    if (m && req.method === "GET") {
      const found = this.lookup(req, res, m[1] as string, m[2] as string);
      if (!found) return;
      const entries = Object.entries(found.files).map(([p, c]) => this.entry(p, c, found.sha));
      const dirs = new Set(
        Object.keys(found.files).flatMap((p) =>
          p
            .split("/")
            .slice(0, -1)
            .map((_, i, a) => a.slice(0, i + 1).join("/")),
        ),
      );
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(
        JSON.stringify([
          ...[...dirs].map((d) => ({ type: "directory", path: d, oid: gitOid(Buffer.from(d)), size: 0 })),
          ...entries,
        ]),
      );
      return;
    }
    m = /^\/api\/models\/([^/]+\/[^/]+)\/paths-info\/(.+)$/.exec(path);
    if (m && req.method === "POST") {
      const found = this.lookup(req, res, m[1] as string, m[2] as string);
      if (!found) return;
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const { paths } = JSON.parse(Buffer.concat(chunks).toString("utf8")) as { paths: string[] };
      const out = paths
        .filter((p) => found.files[p])
        .map((p) => this.entry(p, found.files[p] as Buffer, found.sha));
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify(out));
      return;
    }
    m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (m && (req.method === "GET" || req.method === "HEAD")) {
      const found = this.lookup(req, res, m[1] as string, m[2] as string);
      if (!found) return;
      const content = found.files[m[3] as string];
      if (!content) {
        this.error(res, 404, "EntryNotFound", `${m[3]} does not exist on "${m[2]}"`);
        return;
      }
      const etag = LFS_PATTERN.test(m[3] as string) ? sha256(content) : gitOid(content);
      const headers: Record<string, string | number> = {
        "Content-Type": "application/octet-stream",
        ETag: `"${etag}"`,
        "X-Repo-Commit": found.sha,
        "Accept-Ranges": "bytes",
      };
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
      if (range) {
        const start = Number(range[1]);
        const end = range[2] ? Math.min(Number(range[2]), content.length - 1) : content.length - 1;
        res.writeHead(206, {
          ...headers,
          "Content-Range": `bytes ${start}-${end}/${content.length}`,
          "Content-Length": end - start + 1,
        });
        res.end(req.method === "HEAD" ? undefined : content.subarray(start, end + 1));
        return;
      }
      res.writeHead(200, { ...headers, "Content-Length": content.length });
      res.end(req.method === "HEAD" ? undefined : content);
      return;
    }
    this.error(res, 404, "NotFound", `no route for ${req.method} ${path}`);
  }
}
