#!/usr/bin/env python3
"""Quantize a flagserve model directory's fp32 ONNX graph for CPUs and measure what it costs in quality.

    python scripts/export/quantize.py MODEL_DIR [--int8 | --int4] [--out DIR] [--calibration FILE] ...

--int8 (default) writes onnx/model_int8.onnx (`--dtype int8`): per-token dynamic int8 activations
(each row of a MatMul input scaled by its own max |x|, then ONNX Runtime's DynamicQuantizeLinear +
MatMulInteger, which its CPU provider fuses), per-output-channel int8 weights rounded with GPTQ, and
SmoothQuant scaling on the inputs that are not GELU outputs. Calibration statistics come from
--calibration (default: quant_data/calibration.json).
--int4 writes onnx/model_q4.onnx (`--dtype q4`): ONNX Runtime's block-wise MatMulNBits (4 bits, blocks of
32, accuracy level 4 = int8 compute). Smaller, not faster, and much less accurate: see README.md.

Only the MatMuls inside the encoder layers are quantized (names matching --include, default
`layers?[._]\\d+/`): embeddings, poolers, classifier heads and the M3 sparse / ColBERT heads keep fp32.

Afterwards both graphs run on fixed texts (quant_data/) and onnx/model_<variant>.quality.json records how
far the variant is from fp32, per kind of graph (the outputs say which):
  embedder (last_hidden_state / sentence_embedding): worst and mean cosine of the pooled, normalised
      vectors over quant_data/corpus.json, and the top-10 overlap of query -> passage rankings on
      quant_data/retrieval.json;
  BGE-M3 (last_hidden_state, sparse_weights, colbert_vecs): the same for dense (CLS), sparse (lexical
      matching scores: correlation, top-10 overlap, weight error) and ColBERT (token-vector cosine, late
      interaction score correlation);
  reranker (logits): Pearson / Spearman correlation of the scores of query-passage pairs, top-1 / top-3
      agreement per query, largest logit difference.
The pass/fail bounds (--min-cosine, --min-top10, --min-correlation) are reported; --strict turns a miss into exit code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
DATA = HERE / "quant_data"
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
VARIANT_FILE = {"int8": "model_int8.onnx", "int4": "model_q4.onnx"}
DEFAULT_INCLUDE = r"layers?[._]\d+/"
# flagserve's default query / passage instructions (src/models/mapping.ts, defaultInstructions).
INSTRUCTIONS = [
    (r"^bge-(small|base|large)-en(-v1\.5)?$", "Represent this sentence for searching relevant passages: ", ""),
    (r"^bge-(small|base|large)-zh(-v1\.5)?$", "为这个句子生成表示以用于检索相关文章：", ""),
    (r"^(multilingual-)?e5-(small|base|large)(-v2)?$", "query: ", "passage: "),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# Model directory, tokenizer, inputs


class ModelDir:
    def __init__(self, path: Path):
        self.path = path
        self.graph = next((path / f for f in ("onnx/model.onnx", "model.onnx") if (path / f).exists()), None)
        if self.graph is None:
            raise SystemExit(f"error: {path} has no fp32 graph (onnx/model.onnx or model.onnx)")
        self.config = self._json("config.json") or {}
        self.tok_config = self._json("tokenizer_config.json") or {}
        self.special = self._json("special_tokens_map.json") or {}
        if not (path / "tokenizer.json").exists():
            raise SystemExit(f"error: {path / 'tokenizer.json'} is missing")
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.max_length = self._max_length()
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()

    def _json(self, name: str):
        f = self.path / name
        return json.loads(f.read_text(encoding="utf-8")) if f.exists() else None

    def _max_length(self) -> int:
        # What flagserve / FlagEmbedding feed: at most 512 tokens, fewer if the position table is smaller.
        n = 512
        pos = self.config.get("max_position_embeddings")
        if isinstance(pos, int):
            if self.config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
                pos -= int(self.config.get("pad_token_id", 1)) + 1
            n = min(n, pos)
        mml = self.tok_config.get("model_max_length")
        if isinstance(mml, (int, float)) and mml < 1e6:
            n = min(n, int(mml))
        return n

    def special_ids(self, keys: list[str]) -> set[int]:
        out = set()
        for k in keys:
            tok = self.special.get(k) or self.tok_config.get(k)
            if isinstance(tok, dict):
                tok = tok.get("content")
            if isinstance(tok, str):
                i = self.tokenizer.token_to_id(tok)
                if i is not None:
                    out.add(i)
        return out

    def pooling(self, override: str | None) -> str:
        if override:
            return override
        modules = self._json("modules.json") or []
        pdir = next((m.get("path") for m in modules if str(m.get("type", "")).endswith("Pooling")), "1_Pooling")
        cfg = self._json(f"{pdir}/config.json")
        if cfg:
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
        # FlagEmbedding's mapping: e5 / gte families mean-pool, BGE and the rest use CLS.
        return "mean" if re.search(r"(^|[-_/])(multilingual-)?(e5|gte)-", self.path.name.lower()) else "cls"

    def instructions(self, query: str | None, passage: str | None) -> tuple[str, str]:
        name = self.path.name.lower()
        auto = next(((q, p) for rx, q, p in INSTRUCTIONS if re.search(rx, name)), ("", ""))
        return (auto[0] if query is None else query, auto[1] if passage is None else passage)


def encode(md: ModelDir, texts: list[str], pairs: list[str] | None = None) -> list[tuple[list[int], list[int]]]:
    encs = md.tokenizer.encode_batch(list(zip(texts, pairs)) if pairs is not None else texts)
    return [(e.ids, e.type_ids) for e in encs]


def batches(encs, pad_id: int, token_budget: int = 8192, max_rows: int = 32):
    """Length-sorted padded batches (right padding, as flagserve pads): yields (indices, feeds-as-arrays)."""
    order = sorted(range(len(encs)), key=lambda i: len(encs[i][0]))
    i = 0
    while i < len(order):
        end = i + 1
        while end < len(order) and end - i < max_rows and len(encs[order[end]][0]) * (end - i + 1) <= token_budget:
            end += 1
        idx = order[i:end]
        i = end
        length = max(1, max(len(encs[j][0]) for j in idx))
        ids = np.full((len(idx), length), pad_id, np.int64)
        mask = np.zeros((len(idx), length), np.int64)
        types = np.zeros((len(idx), length), np.int64)
        for r, j in enumerate(idx):
            a, t = encs[j]
            ids[r, : len(a)] = a
            mask[r, : len(a)] = 1
            types[r, : len(a)] = t
        yield idx, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def session(model: str | bytes, threads: int = 2) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as flagserve creates sessions
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def run_all(sess: ort.InferenceSession, encs, pad_id: int, outputs: list[str] | None = None):
    """Runs every sequence; returns, per output, a list with one [len, ...] array per input (padding cut)."""
    names = {i.name for i in sess.get_inputs()}
    outputs = outputs or [o.name for o in sess.get_outputs()]
    res = {o: [None] * len(encs) for o in outputs}
    for idx, feeds in batches(encs, pad_id):
        got = sess.run(outputs, {k: v for k, v in feeds.items() if k in names})
        for o, arr in zip(outputs, got):
            for r, j in enumerate(idx):
                n = len(encs[j][0])
                res[o][j] = arr[r, :n] if arr.ndim >= 3 else arr[r]
    return res


# ----------------------------------------------------------------------------------------------------------
# Graph: which MatMuls, calibration statistics


def load_model(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path), load_external_data=True)
    for i, n in enumerate(model.graph.node):
        if not n.name:  # nodes are addressed by name below
            n.name = f"{n.op_type}_{i}"
    return model


def weight_matmuls(model: onnx.ModelProto, include: str, exclude: str | None) -> list[tuple[str, str, str]]:
    """(node name, input tensor, weight initializer) of the MatMuls with a constant 2-D float weight."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in inits:
            continue
        w = inits[n.input[1]]
        if len(w.dims) != 2 or w.data_type != TensorProto.FLOAT or min(w.dims) < 8:
            continue
        if not re.search(include, n.name) or (exclude and re.search(exclude, n.name)):
            continue
        out.append((n.name, n.input[0], n.input[1]))
    return out


def save_model(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Saves; weights go to PATH_data when the graph would pass protobuf's 2 GB limit. Returns written files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + "_data")
    for f in (path, data):
        if f.exists():
            f.unlink()
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def session_for(model: onnx.ModelProto, tmp: Path, name: str) -> ort.InferenceSession:
    if model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        return session(model.SerializeToString())
    p = tmp / name
    save_model(model, p)
    return session(str(p))


def calibrate(model: onnx.ModelProto, mms, md: ModelDir, texts, pairs, pad_id: int, tmp: Path):
    """Per MatMul input: per-channel max |x|, overall min, and X^T X (float64) over the real tokens."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    xs = sorted({x for _, x, _ in mms})
    have = {o.name for o in aug.graph.output}
    for x in xs:
        if x not in have:
            aug.graph.output.append(oh.make_tensor_value_info(x, TensorProto.FLOAT, None))
    sess = session_for(aug, tmp, "calibration.onnx")
    del aug
    names = {i.name for i in sess.get_inputs()}
    encs = encode(md, texts, pairs)
    amax: dict[str, np.ndarray] = {}
    amin: dict[str, float] = {}
    gram: dict[str, np.ndarray] = {}
    tokens = 0
    for _, feeds in batches(encs, pad_id, token_budget=4096, max_rows=16):
        got = sess.run(xs, {k: v for k, v in feeds.items() if k in names})
        real = feeds["attention_mask"].reshape(-1).astype(bool)
        tokens += int(real.sum())
        for x, v in zip(xs, got):
            v = v.reshape(-1, v.shape[-1])[real].astype(np.float64)
            amax[x] = np.maximum(amax.get(x, 0.0), np.abs(v).max(0))
            amin[x] = min(amin.get(x, np.inf), float(v.min()))
            gram[x] = gram.get(x, 0.0) + v.T @ v
    return {"amax": amax, "amin": amin, "gram": gram, "tokens": tokens, "texts": len(encs)}


# ----------------------------------------------------------------------------------------------------------
# int8: SmoothQuant factors, GPTQ, per-token dynamic quantization


def smoothing(mms, weights, stats, alpha: float) -> dict[str, np.ndarray]:
    """SmoothQuant (Xiao et al. 2022): s_j = max|x_j|^a / max|W_j,:|^(1-a), shared by the MatMuls reading the
    same tensor. GELU outputs (min >= -0.2 on the calibration texts) are left alone: smoothing them measured
    worse (their outliers are per token, not per channel)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, x, w in mms:
        if stats["amin"][x] < -0.2:
            groups.setdefault(x, []).append((name, w))
    out = {}
    for x, members in groups.items():
        wmax = np.max([np.abs(weights[w]).max(1) for _, w in members], axis=0)
        s = stats["amax"][x] ** alpha / np.maximum(wmax, 1e-8) ** (1 - alpha)
        s = np.clip(s, 1e-5, None)
        s = s / np.exp(np.mean(np.log(s)))  # geometric mean 1, so magnitudes stay where they were
        for name, _ in members:
            out[name] = s.astype(np.float32)
    return out


def gptq(w: np.ndarray, gram: np.ndarray, qmax: int, damp: float = 0.01, block: int = 128):
    """GPTQ (Frantar et al. 2022) for W[K, N] with one symmetric scale per output column: quantizes the input
    rows one at a time (largest Hessian diagonal first) and spreads each rounding error over the rows not yet
    quantized, weighted by the inverse Hessian of the calibration inputs. Returns int8 [K, N], scale [N]."""
    W = w.T.astype(np.float64).copy()  # [N, K]
    K = W.shape[1]
    H = gram.astype(np.float64).copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    scale = np.abs(W).max(1) / qmax
    scale[scale == 0] = 1
    perm = np.argsort(-np.diag(H), kind="stable")
    W = W[:, perm]
    H = H[perm][:, perm]
    H[np.diag_indices(K)] += damp * np.mean(np.diag(H))
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.zeros_like(W)
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        W1 = W[:, b0:b1].copy()
        E1 = np.zeros_like(W1)
        Hi = Hinv[b0:b1, b0:b1]
        for j in range(b1 - b0):
            q = np.clip(np.round(W1[:, j] / scale), -qmax, qmax)
            Q[:, b0 + j] = q
            e = (W1[:, j] - q * scale) / Hi[j, j]
            W1[:, j:] -= np.outer(e, Hi[j, j:])
            E1[:, j] = e
        W[:, b1:] -= E1 @ Hinv[b0:b1, b1:]
    Q = Q[:, np.argsort(perm)]
    return Q.T.astype(np.int8), scale.astype(np.float32)


def rtn(w: np.ndarray, qmax: int):
    scale = np.abs(w).max(0) / qmax
    scale = np.where(scale == 0, 1.0, scale)
    return np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8), scale.astype(np.float32)


def rewrite_int8(model: onnx.ModelProto, mms, quantized: dict, smooth: dict[str, np.ndarray]) -> None:
    """Replaces each selected MatMul(X, W) by

        Xs = X * (1/s)                                  (SmoothQuant, when s exists for this input)
        r  = max(ReduceMax(Xs), -ReduceMin(Xs), 1e-8)   per row (token), over the last axis
        Xq, a, z = DynamicQuantizeLinear(Xs * (1/r))    every row now spans [-1, 1]: per-token precision
        Y  = Cast(MatMulInteger(Xq, Wq, z, 0)) * (a * w_scale) * r

    ONNX Runtime's CPU graph optimizer fuses the middle into MatMulIntegerToFloat; rows that share an input
    (Q, K, V) share one quantization. Opset 11 operators only."""
    g = model.graph
    sel = {name: (x, w) for name, x, w in mms}
    new_nodes, new_inits, shared = [], [], {}
    new_inits.append(nh.from_array(np.array(1e-8, np.float32), "q8_eps"))
    replaced = set()
    for n in g.node:
        if n.name not in sel:
            new_nodes.append(n)
            continue
        x, wname = sel[n.name]
        replaced.add(wname)
        p = re.sub(r"[^A-Za-z0-9_.]", "_", n.name).strip("_")
        wq, ws = quantized[n.name]
        s = smooth.get(n.name)
        key = (x, None if s is None else s.tobytes())
        if key not in shared:
            q, xin = p + "_xq", x
            if s is not None:
                new_inits.append(nh.from_array((1.0 / s).astype(np.float32), q + "_inv_s"))
                new_nodes.append(oh.make_node("Mul", [x, q + "_inv_s"], [q + "_smooth"]))
                xin = q + "_smooth"
            new_nodes += [
                oh.make_node("ReduceMax", [xin], [q + "_hi"], axes=[-1], keepdims=1),
                oh.make_node("ReduceMin", [xin], [q + "_lo"], axes=[-1], keepdims=1),
                oh.make_node("Neg", [q + "_lo"], [q + "_nlo"]),
                oh.make_node("Max", [q + "_hi", q + "_nlo", "q8_eps"], [q + "_rowmax"]),
                oh.make_node("Reciprocal", [q + "_rowmax"], [q + "_inv"]),
                oh.make_node("Mul", [xin, q + "_inv"], [q + "_norm"]),
                oh.make_node("DynamicQuantizeLinear", [q + "_norm"], [q, q + "_scale", q + "_zp"]),
            ]
            shared[key] = q
        q = shared[key]
        new_inits += [
            nh.from_array(wq, p + "_wq"),
            nh.from_array(ws, p + "_ws"),
            nh.from_array(np.zeros(wq.shape[1], np.int8), p + "_wzp"),
        ]
        new_nodes += [
            oh.make_node("Mul", [q + "_scale", p + "_ws"], [p + "_ab_scale"]),
            oh.make_node("MatMulInteger", [q, p + "_wq", q + "_zp", p + "_wzp"], [p + "_i32"]),
            oh.make_node("Cast", [p + "_i32"], [p + "_f"], to=TensorProto.FLOAT),
            oh.make_node("Mul", [p + "_f", p + "_ab_scale"], [p + "_y"]),
            oh.make_node("Mul", [p + "_y", q + "_rowmax"], [n.output[0]], name=n.name + "_int8"),
        ]
    used = {name for nn in new_nodes for name in nn.input}
    keep = [i for i in g.initializer if i.name not in replaced or i.name in used]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    if not any(o.domain in ("", "ai.onnx") and o.version >= 11 for o in model.opset_import):
        raise SystemExit("error: the graph's opset is below 11 (DynamicQuantizeLinear needs 11)")


def quantize_int8(model, mms, stats, args) -> dict:
    weights = {i.name: nh.to_array(i) for i in model.graph.initializer if i.name in {w for _, _, w in mms}}
    smooth = smoothing(mms, weights, stats, args.alpha) if args.alpha > 0 else {}
    qmax = 63 if args.reduce_range else 127
    quantized = {}
    t = time.time()
    for name, x, w in mms:
        s = smooth.get(name)
        ww = weights[w].astype(np.float64) * (s[:, None] if s is not None else 1.0)
        if args.no_gptq:
            quantized[name] = rtn(ww, qmax)
        else:
            gram = stats["gram"][x] / (np.outer(s, s) if s is not None else 1.0)
            quantized[name] = gptq(ww, gram, qmax)
    log(f"  weights: {'round-to-nearest' if args.no_gptq else 'GPTQ'} in {time.time() - t:.0f} s, "
        f"{len(smooth)} of {len(mms)} MatMuls smoothed")
    rewrite_int8(model, mms, quantized, smooth)
    return {
        "name": "per-token dynamic int8 + SmoothQuant + GPTQ" if not args.no_gptq else "per-token dynamic int8",
        "activations": "uint8, per token (row max |x|) then DynamicQuantizeLinear",
        "weights": f"int8 symmetric per output channel, |q| <= {qmax}" + ("" if args.no_gptq else ", GPTQ rounding"),
        "smoothquant_alpha": args.alpha if smooth else None,
        "smoothed_matmuls": len(smooth),
    }


def quantize_int4(model, mms, args) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    chosen = {name for name, _, _ in mms}
    exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in chosen]
    q = MatMulNBitsQuantizer(model, bits=4, block_size=args.block_size, is_symmetric=True,
                             accuracy_level=args.accuracy_level, nodes_to_exclude=exclude)
    q.process()
    return q.model.model


# ----------------------------------------------------------------------------------------------------------
# Quality


def normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def top_k(q: np.ndarray, p: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(q @ p.T), axis=1, kind="stable")[:, :k]


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)])


def rank(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    # ties share their mean rank
    vals, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return (sums / counts)[inv]


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def cosine_stats(ref: np.ndarray, var: np.ndarray, texts: list[str]) -> dict:
    cos = np.sum(normalize(ref) * normalize(var), axis=-1)
    i = int(np.argmin(cos))
    return {"worst_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6),
            "worst_text": texts[i][:80]}


def retrieval_overlap(qr, pr, qv, pv, positives: np.ndarray) -> dict:
    tr, tv = top_k(normalize(qr), normalize(pr)), top_k(normalize(qv), normalize(pv))
    ov = overlap(tr, tv)

    # Agreement alone cannot tell a harmless swap of near-tied distractors from a lost answer: the
    # share of queries whose known positive passage ranks first / in the top 10, fp32 vs variant.
    def hits(top: np.ndarray, k: int) -> float:
        return round(float(np.mean([pos in row[:k] for pos, row in zip(positives, top)])), 4)

    return {"top10_overlap": round(float(ov.mean()), 4), "top10_overlap_min": round(float(ov.min()), 2),
            "positive_at_1": {"reference": hits(tr, 1), "variant": hits(tv, 1)},
            "positive_at_10": {"reference": hits(tr, 10), "variant": hits(tv, 10)}}


class Evaluator:
    def __init__(self, md: ModelDir, kind: str, args):
        self.md, self.kind, self.args = md, kind, args
        self.pad_id = int(md.config.get("pad_token_id", 0) or 0)
        corpus = json.loads((DATA / "corpus.json").read_text(encoding="utf-8"))
        retrieval = json.loads((DATA / "retrieval.json").read_text(encoding="utf-8"))
        nq, npass = args.eval_queries, args.eval_passages
        self.corpus = corpus
        self.queries = [q["text"] for q in retrieval["queries"]][: nq or None]
        self.positives = np.array([q["positive"] for q in retrieval["queries"]][: nq or None])
        self.passages = retrieval["passages"][: npass or None]
        qi, pi = md.instructions(args.query_instruction, args.passage_instruction)
        self.qi, self.pi = qi, pi
        self.pooling = md.pooling(args.pooling) if kind == "embedder" else "cls"
        self.skip_ids = md.special_ids(["cls_token", "eos_token", "pad_token", "unk_token"])
        if kind == "reranker":
            self.pairs = self._rerank_pairs()
        else:
            self.enc_c = encode(md, corpus)
            self.enc_q = encode(md, [qi + q for q in self.queries])
            self.enc_p = encode(md, [pi + p for p in self.passages])

    def _rerank_pairs(self):
        # Per query the passages sharing the most token ids with it (hard candidates, deterministic).
        n = self.args.rerank_queries
        qs, ps = self.queries[:n], self.passages
        qids = [set(e[0]) for e in encode(self.md, qs)]
        pids = [set(e[0]) for e in encode(self.md, ps)]
        common = self.md.special_ids(["cls_token", "sep_token", "bos_token", "eos_token", "pad_token"])
        pairs = []
        for qi, q in enumerate(qs):
            a = qids[qi] - common
            scores = np.array([len(a & b) for b in pids])
            for j in np.argsort(-scores, kind="stable")[:10]:
                pairs.append((qi, int(j)))
        enc = encode(self.md, [qs[i] for i, _ in pairs], [ps[j] for _, j in pairs])
        return {"pairs": pairs, "enc": enc, "queries": len(qs)}

    def outputs(self, sess: ort.InferenceSession) -> dict:
        if self.kind == "reranker":
            r = run_all(sess, self.pairs["enc"], self.pad_id, ["logits"])
            return {"scores": np.array([float(np.ravel(v)[0]) for v in r["logits"]])}
        out = {}
        for part, enc in (("c", self.enc_c), ("q", self.enc_q), ("p", self.enc_p)):
            names = [o.name for o in sess.get_outputs()]
            if self.kind == "embedder":
                want = ["sentence_embedding"] if "sentence_embedding" in names else [names[0]]
                r = run_all(sess, enc, self.pad_id, want)[want[0]]
                if want[0] == "sentence_embedding":
                    out[part] = np.stack(r)
                else:
                    out[part] = np.stack([h[0] if self.pooling == "cls" else h.mean(0) for h in r])
            else:
                r = run_all(sess, enc, self.pad_id, ["last_hidden_state", "sparse_weights", "colbert_vecs"])
                out[part] = np.stack([h[0] for h in r["last_hidden_state"]])
                out[part + "_sparse"] = [self._lexical(e[0], w) for e, w in zip(enc, r["sparse_weights"])]
                out[part + "_colbert"] = [normalize(v[1:]) for v in r["colbert_vecs"]]
        return out

    def _lexical(self, ids, w) -> dict[int, float]:
        # FlagEmbedding's lexical weights: drop special ids and weights <= 0, keep the largest per id.
        skip = self.skip_ids
        out: dict[int, float] = {}
        for i, v in zip(ids, np.ravel(w)[: len(ids)]):
            if i in skip or v <= 0:
                continue
            out[i] = max(out.get(i, 0.0), float(v))
        return out

    def compare(self, ref: dict, var: dict) -> dict:
        if self.kind == "reranker":
            return self._compare_scores(ref["scores"], var["scores"])
        dense = {**cosine_stats(np.concatenate([ref["c"]]), np.concatenate([var["c"]]), self.corpus),
                 **retrieval_overlap(ref["q"], ref["p"], var["q"], var["p"], self.positives)}
        allr = np.concatenate([ref["c"], ref["q"], ref["p"]])
        allv = np.concatenate([var["c"], var["q"], var["p"]])
        dense["worst_cosine_all_texts"] = round(float(np.min(np.sum(normalize(allr) * normalize(allv), -1))), 6)
        if self.kind == "embedder":
            return {"dense": dense}
        return {"dense": dense, "sparse": self._compare_sparse(ref, var), "colbert": self._compare_colbert(ref, var)}

    def _compare_scores(self, r: np.ndarray, v: np.ndarray) -> dict:
        nq = self.pairs["queries"]
        rr, vv = r.reshape(nq, -1), v.reshape(nq, -1)
        top1 = float(np.mean(np.argmax(rr, 1) == np.argmax(vv, 1)))
        top3 = overlap(np.argsort(-rr, 1, kind="stable")[:, :3], np.argsort(-vv, 1, kind="stable")[:, :3])
        return {"scores": {
            "pairs": int(len(r)), "pearson": round(pearson(r, v), 6), "spearman": round(pearson(rank(r), rank(v)), 6),
            "top1_agreement": round(top1, 4), "top3_overlap": round(float(top3.mean()), 4),
            "max_abs_logit_diff": round(float(np.abs(r - v).max()), 6),
            "logit_range": [round(float(r.min()), 4), round(float(r.max()), 4)]}}

    def _compare_sparse(self, ref: dict, var: dict) -> dict:
        def scores(qs, ps):
            return np.array([[sum(w * p.get(i, 0.0) for i, w in q.items()) for p in ps] for q in qs])

        sr, sv = scores(ref["q_sparse"], ref["p_sparse"]), scores(var["q_sparse"], var["p_sparse"])
        ov = overlap(np.argsort(-sr, 1, kind="stable")[:, :10], np.argsort(-sv, 1, kind="stable")[:, :10])
        errs, peak = [], 0.0
        for a, b in zip(ref["c_sparse"] + ref["p_sparse"], var["c_sparse"] + var["p_sparse"]):
            for i in set(a) | set(b):
                errs.append(abs(a.get(i, 0.0) - b.get(i, 0.0)))
            peak = max([peak, *a.values()])
        return {"score_pearson": round(pearson(sr.ravel(), sv.ravel()), 6), "top10_overlap": round(float(ov.mean()), 4),
                "max_abs_weight_diff": round(float(max(errs, default=0.0)), 6),
                "mean_abs_weight_diff": round(float(np.mean(errs)) if errs else 0.0, 6),
                "max_weight": round(peak, 6)}

    def _compare_colbert(self, ref: dict, var: dict) -> dict:
        cos = np.concatenate([np.sum(a * b, -1) for a, b in zip(ref["c_colbert"] + ref["p_colbert"],
                                                                 var["c_colbert"] + var["p_colbert"]) if len(a)])
        nq, npass = min(100, len(ref["q_colbert"])), min(100, len(ref["p_colbert"]))

        def scores(d):
            return np.array([[float(np.mean(np.max(q @ p.T, 1))) if len(q) and len(p) else 0.0
                              for p in d["p_colbert"][:npass]] for q in d["q_colbert"][:nq]])

        sr, sv = scores(ref), scores(var)
        ov = overlap(np.argsort(-sr, 1, kind="stable")[:, :10], np.argsort(-sv, 1, kind="stable")[:, :10])
        return {"token_worst_cosine": round(float(cos.min()), 6), "token_mean_cosine": round(float(cos.mean()), 6),
                "score_pearson": round(pearson(sr.ravel(), sv.ravel()), 6),
                "max_abs_score_diff": round(float(np.abs(sr - sv).max()), 6),
                "top10_overlap": round(float(ov.mean()), 4), "pairs": int(sr.size)}


def verdict(quality: dict, args) -> dict:
    checks = {}
    if "dense" in quality:
        checks["worst_cosine"] = quality["dense"]["worst_cosine"] >= args.min_cosine
        checks["top10_overlap"] = quality["dense"]["top10_overlap"] >= args.min_top10
    if "sparse" in quality:
        checks["sparse_top10_overlap"] = quality["sparse"]["top10_overlap"] >= args.min_top10
    if "colbert" in quality:
        checks["colbert_top10_overlap"] = quality["colbert"]["top10_overlap"] >= args.min_top10
    if "scores" in quality:
        checks["spearman"] = quality["scores"]["spearman"] >= args.min_correlation
    bounds = {"min_cosine": args.min_cosine, "min_top10": args.min_top10, "min_correlation": args.min_correlation}
    return {"bounds": bounds, "checks": checks,
            "passed": all(checks.values())}


def bench(ref_path: str, var_path: str, with_types: bool, rounds: int = 5) -> dict:
    """Min-of-N seconds per batch, graphs interleaved (CPU shared with others: the minimum is the signal)."""
    rng = np.random.default_rng(0)
    shapes = [(64, 148), (64, 20), (8, 512)]
    sessions = {"fp32": session(ref_path), "variant": session(var_path)}
    feeds = []
    for b, n in shapes:
        ids = rng.integers(1000, 20000, (b, n)).astype(np.int64)
        f = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if with_types:
            f["token_type_ids"] = np.zeros_like(ids)
        feeds.append(f)
    times = {k: [[] for _ in shapes] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            names = {i.name for i in s.get_inputs()}
            for i, f in enumerate(feeds):
                t = time.perf_counter()
                s.run(None, {n: v for n, v in f.items() if n in names})
                times[k][i].append(time.perf_counter() - t)
    out = {}
    for i, (b, n) in enumerate(shapes):
        r, v = min(times["fp32"][i][1:]), min(times["variant"][i][1:])
        out[f"{b}x{n}"] = {"fp32_ms": round(r * 1000, 1), "variant_ms": round(v * 1000, 1), "speedup": round(r / v, 2)}
    return out


# ----------------------------------------------------------------------------------------------------------


def read_texts(path: Path) -> list[str]:
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(raw)
        return [t if isinstance(t, str) else t["text"] for t in data]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        return [r if isinstance(r, str) else r["text"] for r in rows]
    return [line for line in raw.splitlines() if line.strip()]


def graph_kind(model: onnx.ModelProto) -> str:
    outs = {o.name for o in model.graph.output}
    if {"sparse_weights", "colbert_vecs"} <= outs:
        return "m3"
    if "logits" in outs:
        return "reranker"
    return "embedder"


def prepare_out(src: Path, out: Path | None, overwrite: bool) -> Path:
    if out is None:
        return src
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif any((out / f).exists() for f in ("onnx/model.onnx", "model.onnx")):
            return out  # an earlier copy: add this variant beside the others
        else:
            raise SystemExit(f"error: {out} is not empty and not a model directory (use --overwrite)")

    def link_or_copy(a, b):
        try:
            os.link(a, b)  # the fp32 graph can be GBs: share it when the file system allows
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, out, copy_function=link_or_copy, dirs_exist_ok=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--int8", action="store_const", dest="precision", const="int8", help="onnx/model_int8.onnx (default)")
    mode.add_argument("--int4", action="store_const", dest="precision", const="int4", help="onnx/model_q4.onnx")
    ap.add_argument("--out", type=Path, help="write into a copy of MODEL_DIR (files hard-linked where possible); "
                    "an existing copy is reused")
    ap.add_argument("--overwrite", action="store_true", help="make the --out copy afresh")
    ap.add_argument("--calibration", type=Path, default=DATA / "calibration.json",
                    help="calibration texts: .json list, .jsonl ({text} or strings) or .txt one per line")
    ap.add_argument("--include", default=DEFAULT_INCLUDE, help="regex on MatMul node names to quantize")
    ap.add_argument("--exclude", help="regex on MatMul node names to keep in fp32 (e.g. 'output/dense')")
    ap.add_argument("--alpha", type=float, default=0.8, help="SmoothQuant migration strength; 0 turns it off")
    ap.add_argument("--no-gptq", action="store_true", help="round weights to nearest instead of GPTQ")
    ap.add_argument("--reduce-range", action="store_true",
                    help="7-bit weights: needed on x86 CPUs without VNNI (AVX2 only), where u8*s8 sums saturate")
    ap.add_argument("--block-size", type=int, default=32, help="--int4 block size")
    ap.add_argument("--accuracy-level", type=int, default=4, help="--int4 MatMulNBits accuracy_level (4 = int8 compute)")
    ap.add_argument("--pooling", choices=["cls", "mean"], help="embedders: default from the model dir")
    ap.add_argument("--query-instruction", help="prefix for retrieval queries (default: flagserve's for the model name)")
    ap.add_argument("--passage-instruction")
    ap.add_argument("--eval-queries", type=int, default=0, help="use only the first N retrieval queries (0: all 300)")
    ap.add_argument("--eval-passages", type=int, default=0, help="use only the first N passages (0: all 750)")
    ap.add_argument("--rerank-queries", type=int, default=100, help="rerankers: queries x 10 candidate passages")
    ap.add_argument("--min-cosine", type=float, default=0.995)
    ap.add_argument("--min-top10", type=float, default=0.98)
    ap.add_argument("--min-correlation", type=float, default=0.99, help="rerankers: Spearman of the scores")
    ap.add_argument("--strict", action="store_true", help="exit 2 when a quality bound is missed")
    ap.add_argument("--bench", action="store_true", help="also time fp32 vs the variant (onnxruntime Python, 2 threads)")
    ap.add_argument("--eval-only", action="store_true", help="do not quantize: evaluate the existing variant")
    args = ap.parse_args()
    precision = args.precision or "int8"

    src = args.model_dir.resolve()
    md = ModelDir(src)
    target = prepare_out(src, args.out.resolve() if args.out else None, args.overwrite)
    md_out = ModelDir(target)
    fp32_path = md_out.graph
    variant_path = fp32_path.parent / VARIANT_FILE[precision]
    report_path = variant_path.with_name(variant_path.stem + ".quality.json")

    log(f"{md.path.name}: {fp32_path.relative_to(target)} -> {variant_path.relative_to(target)}")
    model = load_model(fp32_path)
    kind = graph_kind(model)
    mms = weight_matmuls(model, args.include, args.exclude)
    if not mms:
        raise SystemExit(f"error: no MatMul with a constant weight matches --include {args.include!r}")
    log(f"  {kind} graph, {len(mms)} MatMuls to quantize, max length {md.max_length}")
    pad_id = int(md.config.get("pad_token_id", 0) or 0)

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        method: dict = {}
        calib_info = None
        if not args.eval_only:
            t = time.time()
            if precision == "int8":
                texts = read_texts(args.calibration)
                pairs = None
                if kind == "reranker":
                    # a cross-encoder sees (query, passage): pair short texts with long ones
                    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
                    half = len(order) // 2
                    pairs = [texts[order[half + i]] for i in range(half)]
                    texts = [texts[order[i]] for i in range(half)]
                stats = calibrate(model, mms, md, texts, pairs, pad_id, tmp)
                calib_info = {"file": str(args.calibration.name), "texts": stats["texts"], "tokens": stats["tokens"],
                              "sha256": hashlib.sha256(args.calibration.read_bytes()).hexdigest()[:16]}
                log(f"  calibration: {stats['texts']} inputs, {stats['tokens']} tokens, {time.time() - t:.0f} s")
                method = quantize_int8(model, mms, stats, args)
                del stats
                qmodel = model
            else:
                qmodel = quantize_int4(model, mms, args)
                method = {"name": "MatMulNBits (weight-only, block-wise)", "bits": 4, "block_size": args.block_size,
                          "accuracy_level": args.accuracy_level, "symmetric": True}
            method["quantized_matmuls"] = len(mms)
            method["include"], method["exclude"] = args.include, args.exclude
            meta = {p.key: p.value for p in qmodel.metadata_props}
            meta["flagserve.quantization"] = json.dumps(method)
            del qmodel.metadata_props[:]
            for k, v in meta.items():
                qmodel.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
            written = save_model(qmodel, variant_path)
            del qmodel, model
            log(f"  wrote {', '.join(str(p.relative_to(target)) for p in written)} "
                f"({sum(p.stat().st_size for p in written) / 1e6:.1f} MB) in {time.time() - t:.0f} s")
        else:
            del model
            if not variant_path.exists():
                raise SystemExit(f"error: {variant_path} does not exist")
            m = onnx.load(str(variant_path), load_external_data=False)
            method = json.loads({p.key: p.value for p in m.metadata_props}.get("flagserve.quantization", "{}"))

        t = time.time()
        ev = Evaluator(md, kind, args)  # the source name picks the instructions
        ref = ev.outputs(session(str(fp32_path)))
        var = ev.outputs(session(str(variant_path)))
        quality = ev.compare(ref, var)
        log(f"  evaluated in {time.time() - t:.0f} s")

    report = {
        "variant": str(variant_path.relative_to(target)),
        "reference": str(fp32_path.relative_to(target)),
        "kind": kind,
        "method": method,
        "calibration": calib_info,
        "eval": {
            "corpus": f"quant_data/corpus.json ({len(ev.corpus)} texts)" if kind != "reranker" else None,
            "retrieval": f"quant_data/retrieval.json ({len(ev.queries)} queries, {len(ev.passages)} passages)",
            "pooling": ev.pooling if kind == "embedder" else None,
            "query_instruction": ev.qi or None,
            "passage_instruction": ev.pi or None,
            "max_length": md_out.max_length,
            "onnxruntime": ort.__version__,
        },
        "quality": quality,
        **verdict(quality, args),
    }
    if args.bench:
        report["speed"] = bench(str(fp32_path), str(variant_path), "token_type_ids" in [i.name for i in session(str(fp32_path)).get_inputs()])
    if report_path.exists():
        report_path.unlink()  # may be a hard link into the source directory (--out): never write through it
    report_path.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, ensure_ascii=False, indent=1))
    log(f"  report: {report_path.relative_to(target)} ({'passed' if report['passed'] else 'below the bounds'})")
    return 2 if args.strict and not report["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
