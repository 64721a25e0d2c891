import type { M3Raw } from "../models/scoring.js";
import type { ErrorKind } from "../runtime/errors.js";
import { Float32Matrix } from "../runtime/matrix.js";
import type {
  EmbedItem,
  ModelInfo,
  ModelSpec,
  ScoreBatchOptions,
  ScoreItem,
  TokenIds,
  Want,
} from "./executor.js";

/**
 * Messages between the HTTP process and a device worker. The IPC channel uses V8 serialization,
 * so token ids and results travel as typed arrays (bytes), never as JSON numbers.
 */
export interface PackedBatch {
  /** All token ids, concatenated. */
  ids: Int32Array;
  typeIds: Uint8Array;
  /** Length of each item's ids. */
  lengths: Int32Array;
  /** Per item: bit 0 dense, 1 sparse, 2 colbert, 3 tokens. */
  wants: Uint8Array;
  /** LLM reranker rows: query length, prompt length, layer, head; four per item. */
  extras?: Int32Array;
}

/** When a device worker recreates its sessions to give back what their arenas grew to. */
export interface MemoryReturn {
  /** Growth in MiB past the size after loading (0: never). */
  growthMib: number;
  /** Idle time first, so that no batch waits for the new sessions. */
  idleMs: number;
}

export type ToWorker =
  | { type: "load"; specs: ModelSpec[]; memory?: MemoryReturn }
  | { type: "embed"; id: number; model: string; batch: PackedBatch }
  | { type: "score"; id: number; model: string; batch: PackedBatch; options?: ScoreBatchOptions }
  | { type: "cancel"; id: number }
  | { type: "shutdown" };

/** A Float32Matrix as plain data (classes do not survive structured clone). */
export interface PackedMatrix {
  data: Float32Array;
  rows: number;
  dims: number;
}

/** A batch's embedding outputs: dense rows in one buffer, per-item arrays for the M3 extras. */
export interface PackedRaws {
  dense?: PackedMatrix;
  tokenWeights?: Float32Array[];
  colbert?: PackedMatrix[];
}

export type FromWorker =
  | { type: "loaded"; infos: ModelInfo[] }
  | { type: "load_error"; message: string }
  | { type: "embedded"; id: number; raws: PackedRaws }
  | { type: "scored"; id: number; scores: Float32Array }
  | { type: "failed"; id: number; message: string; kind?: ErrorKind }
  | { type: "memory_returned"; beforeMib: number; afterMib: number; ms: number; error?: string };

const WANT_BITS: (keyof Want)[] = ["dense", "sparse", "colbert", "tokens"];

export function packBatch(items: (TokenIds & { want?: Want; llm?: ScoreItem["llm"] })[]): PackedBatch {
  const total = items.reduce((n, e) => n + e.ids.length, 0);
  const ids = new Int32Array(total);
  const typeIds = new Uint8Array(total);
  const lengths = new Int32Array(items.length);
  const wants = new Uint8Array(items.length);
  let o = 0;
  items.forEach((e, i) => {
    ids.set(e.ids, o);
    typeIds.set(e.typeIds, o);
    o += e.ids.length;
    lengths[i] = e.ids.length;
    let bits = 0;
    WANT_BITS.forEach((k, b) => {
      if (e.want?.[k]) bits |= 1 << b;
    });
    wants[i] = bits;
  });
  if (!items.some((e) => e.llm)) return { ids, typeIds, lengths, wants };
  const extras = new Int32Array(items.length * 4);
  items.forEach((e, i) => {
    const x = e.llm;
    if (x) extras.set([x.queryLength, x.promptLength, x.layer, x.head], i * 4);
  });
  return { ids, typeIds, lengths, wants, extras };
}

/** A score batch's rows, with their LLM reranker extras when it has them. */
export function unpackScoreBatch(b: PackedBatch): ScoreItem[] {
  const extras = b.extras;
  return unpackBatch(b).map(({ ids, typeIds }, i) =>
    extras
      ? {
          ids,
          typeIds,
          llm: {
            queryLength: extras[i * 4] as number,
            promptLength: extras[i * 4 + 1] as number,
            layer: extras[i * 4 + 2] as number,
            head: extras[i * 4 + 3] as number,
          },
        }
      : { ids, typeIds },
  );
}

export function unpackBatch(b: PackedBatch): EmbedItem[] {
  const out: EmbedItem[] = [];
  let o = 0;
  for (let i = 0; i < b.lengths.length; i++) {
    const n = b.lengths[i] as number;
    const bits = b.wants[i] as number;
    out.push({
      ids: Array.from(b.ids.subarray(o, o + n)),
      typeIds: Array.from(b.typeIds.subarray(o, o + n)),
      want: {
        dense: (bits & 1) !== 0,
        sparse: (bits & 2) !== 0,
        colbert: (bits & 4) !== 0,
        tokens: (bits & 8) !== 0,
      },
    });
    o += n;
  }
  return out;
}

/** Copy views into compact buffers: a typed-array view would carry its whole backing buffer. */
export function packRaws(raws: M3Raw[]): PackedRaws {
  const out: PackedRaws = {};
  const first = raws[0];
  if (first?.dense) {
    const dims = first.dense.length;
    const data = new Float32Array(raws.length * dims);
    raws.forEach((r, i) => {
      data.set(r.dense as Float32Array, i * dims);
    });
    out.dense = { data, rows: raws.length, dims };
  }
  if (first?.tokenWeights) out.tokenWeights = raws.map((r) => (r.tokenWeights as Float32Array).slice());
  if (first?.colbert) {
    out.colbert = raws.map((r) => {
      const m = r.colbert as Float32Matrix;
      return { data: m.data.slice(), rows: m.rows, dims: m.dims };
    });
  }
  return out;
}

export function unpackRaws(p: PackedRaws, count: number): M3Raw[] {
  const dense = p.dense ? new Float32Matrix(p.dense.data, p.dense.rows, p.dense.dims) : undefined;
  return Array.from({ length: count }, (_, i) => ({
    ...(dense ? { dense: dense.row(i) } : {}),
    ...(p.tokenWeights ? { tokenWeights: p.tokenWeights[i] as Float32Array } : {}),
    ...(p.colbert
      ? {
          colbert: new Float32Matrix(
            (p.colbert[i] as PackedMatrix).data,
            (p.colbert[i] as PackedMatrix).rows,
            (p.colbert[i] as PackedMatrix).dims,
          ),
        }
      : {}),
  }));
}
