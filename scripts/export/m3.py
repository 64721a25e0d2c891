#!/usr/bin/env python3
"""Export a BAAI/bge-m3 style checkpoint to a flagserve model directory (ONNX, M3 heads inside the graph).

    python scripts/export/m3.py SRC_DIR OUT_DIR [--fp16] [--overwrite]

SRC_DIR is a local copy of the hub repository (config.json, tokenizer files, model weights,
colbert_linear.pt, sparse_linear.pt). OUT_DIR receives config.json, tokenizer.json, tokenizer_config.json,
special_tokens_map.json and onnx/model.onnx (+ onnx/model.onnx_data when the weights exceed the 2 GB protobuf
limit) and, with --fp16, onnx/model_fp16.onnx. Every written graph is run with ONNX Runtime and compared with
the PyTorch modules before the script succeeds; any mismatch exits non-zero. See README.md beside this file
for what each graph output contains.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

OPSET = 17
# Above this many bytes of weights the graph is saved with its tensors in one external data file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
DATA_SUFFIX = "_data"  # onnx/model.onnx -> onnx/model.onnx_data, the name optimum and transformers.js use
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
OUTPUT_NAMES = ["last_hidden_state", "sparse_weights", "colbert_vecs"]

# Inputs used to compare ONNX Runtime with PyTorch: padding, an empty string, non-Latin script, a repeated
# word and one long text are all in one padded batch.
CHECK_TEXTS = [
    "What is BGE M3?",
    "BM25 is a bag-of-words retrieval function that ranks documents by the query terms in each document.",
    "",
    "北京是中国的首都。東京は日本の首都です。",
    "data data data model model vector",
    " ".join(f"Sentence {i} is about retrieval, ranking and dense vectors." for i in range(40)),
]


class M3Heads(torch.nn.Module):
    """The encoder plus bge-m3's two heads, applied to every position of the last hidden state.

    FlagEmbedding (EncoderOnlyEmbedderM3Model) computes
        sparse: relu(sparse_linear(last_hidden_state))                 -> weights for every token
        colbert: colbert_linear(last_hidden_state[:, 1:]) * mask[:, 1:] -> then L2-normalised
    Both heads are position-wise linear maps, so applying them to every position (cls included) and letting
    the caller drop position 0, mask and normalise gives the same numbers.
    """

    def __init__(self, encoder: torch.nn.Module, colbert_linear: torch.nn.Linear, sparse_linear: torch.nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.colbert_linear = colbert_linear
        self.sparse_linear = sparse_linear

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, torch.relu(self.sparse_linear(hidden)), self.colbert_linear(hidden)


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def load_heads(src: Path, hidden_size: int) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """Load colbert_linear.pt / sparse_linear.pt the way FlagEmbedding's M3 runner does (state dicts)."""
    heads = []
    for name in ("colbert_linear", "sparse_linear"):
        path = src / f"{name}.pt"
        if not path.is_file():
            fail(f"{path} is missing: a bge-m3 checkpoint ships colbert_linear.pt and sparse_linear.pt")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if set(state) != {"weight", "bias"}:
            fail(f"{path}: expected a Linear state dict with weight and bias, got keys {sorted(state)}")
        out_features, in_features = state["weight"].shape
        if in_features != hidden_size:
            fail(f"{path}: in_features {in_features} != hidden_size {hidden_size}")
        if name == "sparse_linear" and out_features != 1:
            fail(f"{path}: sparse_linear must have one output, has {out_features}")
        linear = torch.nn.Linear(in_features, out_features)
        linear.load_state_dict({k: v.float() for k, v in state.items()})
        heads.append(linear.eval())
    return heads[0], heads[1]


def write_model_files(src: Path, out: Path, tokenizer) -> None:
    shutil.copy(src / "config.json", out / "config.json")
    missing = [f for f in TOKENIZER_FILES if not (src / f).is_file()]
    if missing:
        # Older snapshots without tokenizer.json: let transformers convert the SentencePiece model.
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            for f in TOKENIZER_FILES:
                shutil.copy(Path(tmp) / f, out / f)
    else:
        for f in TOKENIZER_FILES:
            shutil.copy(src / f, out / f)
    # Only tokenizer.json is shipped: a "from_slow" flag would make transformers look for the SentencePiece file.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.pop("from_slow", None) is not None:
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export(module: torch.nn.Module, example: dict[str, torch.Tensor], path: Path, external: bool) -> None:
    """TorchScript export with dynamic batch and sequence axes; weights re-saved into one data file."""
    axes = {name: {0: "batch", 1: "sequence"} for name in [*example, *OUTPUT_NAMES]}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module,
                tuple(example.values()),
                str(raw),
                input_names=list(example),
                output_names=OUTPUT_NAMES,
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        # A >2 GB export is written as one file per tensor; loading pulls them in, saving regroups them.
        save(onnx.load(str(raw)), path, external)


def save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    for stale in (path, path.with_name(path.name + DATA_SUFFIX)):
        stale.unlink(missing_ok=True)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + DATA_SUFFIX,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def make_fp16(src: Path, dst: Path, external: bool) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Given a path, the converter runs shape inference on the file, which also works for >2 GB graphs.
    # keep_io_types: int64 ids in, float32 outputs, as optimum's fp16 encoder exports.
    half = convert_float_to_float16(str(src), keep_io_types=True)
    save(half, dst, external)


def reference(module: M3Heads, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outs = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return {name: t.numpy() for name, t in zip(OUTPUT_NAMES, outs)}


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != ["input_ids", "attention_mask"] or outputs != OUTPUT_NAMES:
        fail(f"{path}: unexpected graph signature {inputs} -> {outputs}")
    return dict(zip(outputs, session.run(None, feeds)))


def verify_fp32(path: Path, want: dict[str, np.ndarray], feeds, atol: float, rtol: float) -> None:
    got = run_onnx(path, feeds)
    mask = feeds["attention_mask"].astype(bool)
    for name in OUTPUT_NAMES:
        if got[name].shape != want[name].shape:
            fail(f"{path}: {name} has shape {got[name].shape}, PyTorch {want[name].shape}")
        # padded positions are never read by the TS side
        g, w = got[name][mask], want[name][mask]
        excess = np.abs(g - w) - (atol + rtol * np.abs(w))
        worst = float(np.max(np.abs(g - w)))
        if np.any(excess > 0):
            fail(f"{path}: {name} differs from PyTorch by up to {worst:.3g} (atol {atol}, rtol {rtol})")
        print(f"  {path.name}: {name} max |onnx - torch| = {worst:.3g}")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(na * nb, 1e-12)


def verify_fp16(path: Path, want: dict[str, np.ndarray], feeds, min_cosine: float, sparse_atol: float) -> None:
    got = run_onnx(path, feeds)
    mask = feeds["attention_mask"].astype(bool)
    dense = float(np.min(cosine_rows(got["last_hidden_state"][:, 0], want["last_hidden_state"][:, 0])))
    colbert = float(np.min(cosine_rows(got["colbert_vecs"][mask], want["colbert_vecs"][mask])))
    sparse = float(np.max(np.abs(got["sparse_weights"][mask] - want["sparse_weights"][mask])))
    print(f"  {path.name}: min cos(dense) = {dense:.6f}, min cos(colbert) = {colbert:.6f}, max |d sparse| = {sparse:.3g}")
    if not all(np.isfinite(got[n]).all() for n in OUTPUT_NAMES):
        fail(f"{path}: non-finite values in the fp16 outputs")
    if dense < min_cosine or colbert < min_cosine or sparse > sparse_atol:
        fail(f"{path}: fp16 outputs too far from PyTorch (min cosine {min_cosine}, sparse atol {sparse_atol})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="local BAAI/bge-m3 style checkpoint directory")
    parser.add_argument("out", type=Path, help="flagserve model directory to write")
    parser.add_argument("--fp16", action="store_true", help="also write onnx/model_fp16.onnx")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT directory")
    parser.add_argument(
        "--external-data",
        choices=["auto", "always", "never"],
        default="auto",
        help="store weights in onnx/model.onnx_data (auto: only when they exceed ~1.8 GB)",
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="fp32 check: absolute tolerance")
    parser.add_argument("--rtol", type=float, default=1e-3, help="fp32 check: relative tolerance")
    parser.add_argument("--fp16-min-cosine", type=float, default=0.999, help="fp16 check: dense/colbert cosine")
    parser.add_argument("--fp16-sparse-atol", type=float, default=0.01, help="fp16 check: sparse weight tolerance")
    args = parser.parse_args(argv)

    from transformers import AutoModel, AutoTokenizer

    src, out = args.src.resolve(), args.out.resolve()
    if not (src / "config.json").is_file():
        fail(f"{src} is not a checkpoint directory (no config.json)")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        fail(f"{out} is not empty (pass --overwrite to replace it)")

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(src)
    if not tokenizer.is_fast:
        fail("a fast tokenizer (tokenizer.json) is required")
    encoder = AutoModel.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval()
    hidden = encoder.config.hidden_size
    colbert_linear, sparse_linear = load_heads(src, hidden)
    module = M3Heads(encoder, colbert_linear, sparse_linear).eval()
    n_bytes = sum(p.numel() * 4 for p in module.parameters())
    external = args.external_data == "always" or (args.external_data == "auto" and n_bytes > EXTERNAL_DATA_THRESHOLD)
    print(f"{src.name}: hidden {hidden}, colbert dim {colbert_linear.out_features}, {n_bytes / 1e6:.1f} MB fp32")

    if out.exists():
        shutil.rmtree(out)
    (out / "onnx").mkdir(parents=True)
    write_model_files(src, out, tokenizer)
    shipped = AutoTokenizer.from_pretrained(out)
    for text in CHECK_TEXTS:
        if shipped(text)["input_ids"] != tokenizer(text)["input_ids"]:
            fail(f"the tokenizer written to {out} tokenizes {text[:40]!r} differently from the source")

    enc = tokenizer(CHECK_TEXTS[:2], padding=True, return_tensors="pt", return_token_type_ids=False)
    example = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    fp32_path = out / "onnx" / "model.onnx"
    export(module, example, fp32_path, external)

    check = tokenizer(CHECK_TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    feeds = {"input_ids": check["input_ids"].astype(np.int64), "attention_mask": check["attention_mask"].astype(np.int64)}
    want = reference(module, feeds)
    verify_fp32(fp32_path, want, feeds, args.atol, args.rtol)
    # the same graph must not depend on the batch it runs in
    for i in (0, 2):
        n = int(feeds["attention_mask"][i].sum())
        single = {k: v[i : i + 1, :n] for k, v in feeds.items()}
        verify_fp32(fp32_path, {k: v[i : i + 1, :n] for k, v in want.items()}, single, args.atol, args.rtol)

    if args.fp16:
        fp16_path = out / "onnx" / "model_fp16.onnx"
        make_fp16(fp32_path, fp16_path, external and n_bytes / 2 > EXTERNAL_DATA_THRESHOLD)
        verify_fp16(fp16_path, want, feeds, args.fp16_min_cosine, args.fp16_sparse_atol)

    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"  wrote {f.relative_to(out)} ({f.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
