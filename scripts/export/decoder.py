#!/usr/bin/env python3
"""Export a decoder-only embedding checkpoint (Mistral, Qwen2, Qwen3, Gemma2, other Llama-family models) to a
flagserve model directory: one ONNX graph that returns FlagEmbedding's last-token pooled, unnormalised vector.

    python scripts/export/decoder.py CHECKPOINT OUT [--fp16] [--int8] [--int4] [--overwrite] [options]

OUT receives config.json, the tokenizer files, flagserve.json (model class, instruction formats, padding side, ...)
and onnx/model.onnx + onnx/model.onnx_data, plus onnx/model_fp16.onnx, onnx/model_int8.onnx and onnx/model_q4.onnx
(each with its own *_data file) on request. Every written graph is run with ONNX Runtime and compared with the
PyTorch model before the script succeeds; any mismatch exits non-zero. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

OPSET = 17
DATA_SUFFIX = "_data"  # onnx/model.onnx -> onnx/model.onnx_data (the name optimum and transformers.js use)
# Tensors below this many bytes stay inside the graph file; everything else goes to the one data file.
INLINE_LIMIT = 1024
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAME = "sentence_embedding"
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx", "q4": "model_q4.onnx"}

BASE, ICL, MOE = "decoder-only-base", "decoder-only-icl", "decoder-only-pseudo_moe"
INSTRUCT_QUERY = "Instruct: {}\nQuery: {}"
BGE_INSTRUCT = "<instruct>{}\n<query>{}"
# The decoder-only rows of FlagEmbedding 1.4.2's model_mapping.py: name -> (class, query_instruction_format).
# (scripts/fixtures/decoders.py checks this table against the installed FlagEmbedding.)
MAPPING: dict[str, tuple[str, str]] = {
    "bge-reasoner-embed-qwen3-8b-0923": (BASE, INSTRUCT_QUERY),
    "bge-code-v1": (BASE, BGE_INSTRUCT),
    "bge-en-icl": (ICL, BGE_INSTRUCT),
    "bge-multilingual-gemma2": (BASE, BGE_INSTRUCT),
    "Qwen3-Embedding-0.6B": (BASE, "Instruct: {}\nQuery:{}"),
    "Qwen3-Embedding-4B": (BASE, "Instruct: {}\nQuery:{}"),
    "Qwen3-Embedding-8B": (BASE, "Instruct: {}\nQuery:{}"),
    "e5-mistral-7b-instruct": (BASE, INSTRUCT_QUERY),
    "gte-Qwen2-7B-instruct": (BASE, INSTRUCT_QUERY),
    "gte-Qwen2-1.5B-instruct": (BASE, INSTRUCT_QUERY),
    "gte-Qwen1.5-7B-instruct": (BASE, INSTRUCT_QUERY),
    "SFR-Embedding-2_R": (BASE, INSTRUCT_QUERY),
    "SFR-Embedding-Mistral": (BASE, INSTRUCT_QUERY),
    "Linq-Embed-Mistral": (BASE, INSTRUCT_QUERY),
}
# FlagICLModel's constructor defaults.
ICL_EXAMPLES_FORMAT = "<instruct>{}\n<query>{}\n<response>{}"
ICL_SUFFIX = "\n<response>"

# Texts the graphs are checked on: an empty string, CJK, emoji (byte fallback), repeated words, a long text
# (longer than small sliding windows), tabs and newlines.
CHECK_TEXTS = [
    "What is a decoder-only embedding model?",
    "",
    "北京是中国的首都。東京は日本の首都です。",
    "I love pizza 🍕 and emoji 👩‍👩‍👧‍👦 too",
    "data data data model model vector",
    "Tabs\tand\nnew lines",
    " ".join(f"Sentence {i} is about retrieval, ranking and dense vectors." for i in range(40)),
]


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


# ---------------------------------------------------------------- the exported module


def forward_sources(model: torch.nn.Module) -> str:
    """Source of every forward along the class hierarchy (a custom model may wrap a transformers one)."""
    out = []
    for cls in type(model).__mro__:
        if "forward" in vars(cls):
            try:
                out.append(inspect.getsource(vars(cls)["forward"]))
            except (OSError, TypeError):
                pass
    return "\n".join(out)


def uses_mask_mapping(model: torch.nn.Module) -> bool:
    """Newer transformers models (Qwen2, Qwen3, Gemma2, ...) accept {"full_attention": ..., "sliding_attention": ...}
    in place of the 2D mask and pick one per layer; the others take one 4D mask for every layer."""
    return "causal_mask_mapping" in forward_sources(model)


def single_mask_is_sliding(model: torch.nn.Module) -> bool:
    """Mistral / Phi-3 style: one mask for all layers, a sliding window one when config.sliding_window is set."""
    if getattr(model.config, "sliding_window", None) is None:
        return False
    return "create_sliding_window_causal_mask" in forward_sources(model)


class LastTokenPooled(torch.nn.Module):
    """The decoder plus FlagEmbedding's last-token pooling, taking only input_ids and attention_mask.

    transformers builds its attention masks with vmap, which the TorchScript exporter cannot keep dynamic, so the
    same masks are built here with plain tensor ops (eager_mask semantics: key j is visible from query i iff j <= i,
    j is not padding and, in sliding-window layers, j > i - window; 0 where visible, finfo(dtype).min elsewhere) and
    handed to the model ready-made. Positions are 0..T-1 along the padded row, exactly what the model computes when
    FlagEmbedding calls it without position_ids (RoPE only sees differences of positions, so left padding does not
    change the result beyond rounding). The pooled row is the last position whose mask is 1: FlagEmbedding's
    last_token_pool takes [:, -1] for left-padded batches and [sum(mask) - 1] otherwise, which is the same position.
    """

    def __init__(self, model: torch.nn.Module, domain: str | None = None):
        super().__init__()
        self.model = model
        self.mapping = uses_mask_mapping(model)
        self.single_sliding = single_mask_is_sliding(model)
        self.window = getattr(model.config, "sliding_window", None)
        self.domain = domain

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        dtype = self.model.get_input_embeddings().weight.dtype
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        q, k = positions[:, None], positions[None, :]
        visible = (k <= q)[None, None] & attention_mask[:, None, None, :].bool()
        low = torch.finfo(dtype).min
        zero = torch.zeros((), dtype=dtype)
        full = torch.where(visible, zero, low)
        if self.window is not None:
            sliding = torch.where(visible & (k > q - self.window)[None, None], zero, low)
        else:
            sliding = full
        if self.mapping:
            mask: Any = {"full_attention": full, "sliding_attention": sliding}
        else:
            mask = sliding if self.single_sliding else full
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": positions[None, :].expand(input_ids.shape[0], -1),
            "use_cache": False,
        }
        if self.domain is not None:
            kwargs["domain"] = self.domain
        hidden = self.model(**kwargs).last_hidden_state
        last = (attention_mask * positions[None, :]).argmax(dim=1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return pooled.float()


def flag_last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FlagEmbedding's last_token_pool (decoder_only/base.py), used for the reference outputs."""
    if mask[:, -1].sum() == mask.shape[0]:
        return hidden[:, -1]
    lengths = mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0]), lengths]


def reference(model: torch.nn.Module, feeds: dict[str, np.ndarray], domain: str | None) -> np.ndarray:
    """What FlagEmbedding computes: the unmodified model called with the 2D mask, then last_token_pool."""
    kwargs: dict[str, Any] = {k: torch.from_numpy(v) for k, v in feeds.items()}
    if domain is not None:
        kwargs["domain"] = domain
    with torch.no_grad():
        hidden = model(**kwargs, return_dict=True).last_hidden_state
        return flag_last_token_pool(hidden, kwargs["attention_mask"]).float().numpy()


# ---------------------------------------------------------------- ONNX files


def save(model: onnx.ModelProto, path: Path, base_dir: Path | None = None) -> None:
    """Write the graph with every tensor of INLINE_LIMIT bytes or more in one `<name>_data` file beside it.

    Tensors are moved one at a time (reading any external data from base_dir), so graphs far past protobuf's 2 GB
    limit are regrouped without holding a second copy of the weights."""
    from onnx.external_data_helper import ExternalDataInfo, set_external_data

    data_name = path.name + DATA_SUFFIX
    for stale in (path, path.with_name(data_name)):
        stale.unlink(missing_ok=True)
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append(attr.t)
    offset = 0
    with open(path.with_name(data_name), "wb") as data:
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = ExternalDataInfo(tensor)
                with open((base_dir or path.parent) / info.location, "rb") as src:
                    src.seek(info.offset or 0)
                    raw = src.read(info.length) if info.length else src.read()
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.DEFAULT
            else:
                if not tensor.HasField("raw_data"):
                    array = onnx.numpy_helper.to_array(tensor)
                    tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
                raw = tensor.raw_data
            tensor.raw_data = raw
            if len(raw) < INLINE_LIMIT:
                continue
            pad = (-offset) % 64  # keep every tensor 64-byte aligned, as onnx's own writer does for mmap
            data.write(b"\0" * pad)
            offset += pad
            data.write(raw)
            set_external_data(tensor, location=data_name, offset=offset, length=len(raw))
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            offset += len(raw)
    onnx.save_model(model, str(path))


def shorten_names(model: onnx.ModelProto) -> None:
    """Rename nodes and intermediate values to n<i> / t<i> (inputs, outputs and weights keep their names). The
    exporter's names ("/model/layers.0/self_attn/Mul_3_output_0", ...) are most of a small graph's bytes; the test
    fixtures use this to stay small."""
    keep = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    keep |= {t.name for t in model.graph.initializer}
    names: dict[str, str] = {}
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
        for values in (node.input, node.output):
            for j, name in enumerate(values):
                if name and name not in keep:
                    values[j] = names.setdefault(name, f"t{len(names)}")


def export(module: LastTokenPooled, example: dict[str, torch.Tensor], path: Path, short_names: bool = False) -> None:
    """TorchScript export (stable names, dynamic batch and sequence axes), then regrouped by save()."""
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module,
                tuple(example[name] for name in INPUT_NAMES),
                str(raw),
                input_names=INPUT_NAMES,
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        # Graphs over 2 GB come out as one file per tensor; load the structure only and stream the tensors.
        model = onnx.load(str(raw), load_external_data=False)
        if short_names:
            shorten_names(model)
        save(model, path, base_dir=Path(tmp))


def embedding_table_to_fp16(model: onnx.ModelProto) -> None:
    """Store the token embedding table (the Gather on input_ids) as float16 followed by a Cast to float32: the table
    is the one large weight MatMulNBits does not quantize (152k x 3584 floats = 2.2 GB for gte-Qwen2-7B)."""
    inits = {t.name: t for t in model.graph.initializer}
    for i, node in enumerate(list(model.graph.node)):
        if node.op_type != "Gather" or node.input[1] != "input_ids" or node.input[0] not in inits:
            continue
        table = inits[node.input[0]]
        if table.data_type != onnx.TensorProto.FLOAT:
            continue
        half = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(table).astype(np.float16), table.name)
        table.CopyFrom(half)
        out = node.output[0]
        node.output[0] = out + "_fp16"
        cast = onnx.helper.make_node("Cast", [out + "_fp16"], [out], to=onnx.TensorProto.FLOAT, name=node.name + "_to_fp32")
        model.graph.node.insert(list(model.graph.node).index(node) + 1, cast)
        return
    print("  note: no float32 embedding Gather found; the table is left as it is")


def quantize(src: Path, dst: Path, bits: int, block_size: int) -> None:
    """Weight-only block-wise quantization of every MatMul with a constant weight to com.microsoft.MatMulNBits."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    model = onnx.load(str(src))
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, bits=bits, op_types_to_quantize=("MatMul",)
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    quantized = quantizer.model.model
    embedding_table_to_fp16(quantized)
    save(quantized, dst)


# ---------------------------------------------------------------- checks


def open_session(path: Path) -> ort.InferenceSession:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != INPUT_NAMES or outputs != [OUTPUT_NAME]:
        fail(f"{path}: unexpected graph signature {inputs} -> {outputs}")
    return session


def batches(tokenizer, texts: list[str], max_length: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The check texts tokenized as FlagEmbedding does (truncation at max_length), padded on both sides."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    rows = [{"input_ids": ids, "attention_mask": mask} for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
    out = []
    saved = tokenizer.padding_side
    try:
        for side in ("left", "right"):
            tokenizer.padding_side = side
            padded = tokenizer.pad({k: [r[k] for r in rows] for k in rows[0]}, padding=True, return_tensors="np")
            out.append((side, {k: padded[k].astype(np.int64) for k in INPUT_NAMES}))
    finally:
        tokenizer.padding_side = saved
    return out


def verify_fp32(path: Path, model, tokenizer, texts, max_length, atol, rtol, domain) -> dict[str, np.ndarray]:
    """Both padding sides against PyTorch, and every row alone (batch independence). Returns the references."""
    session = open_session(path)
    refs = {}
    for side, feeds in batches(tokenizer, texts, max_length):
        want = reference(model, feeds, domain)
        got = session.run(None, feeds)[0]
        worst = float(np.max(np.abs(got - want)))
        if got.shape != want.shape or np.any(np.abs(got - want) > atol + rtol * np.abs(want)):
            fail(f"{path}: {side}-padded batch differs from PyTorch by up to {worst:.3g} (atol {atol}, rtol {rtol})")
        print(f"  {path.name}: {side} padding, {feeds['input_ids'].shape}: max |onnx - torch| = {worst:.3g}")
        refs[side] = want
        lengths = feeds["attention_mask"].sum(axis=1)
        for i, n in enumerate(lengths):
            sl = slice(None, n) if side == "right" else slice(feeds["input_ids"].shape[1] - n, None)
            single = {k: v[i : i + 1, sl] for k, v in feeds.items()}
            alone = session.run(None, single)[0]
            diff = float(np.max(np.abs(alone[0] - want[i])))
            if np.any(np.abs(alone[0] - want[i]) > atol + rtol * np.abs(want[i])):
                fail(f"{path}: row {i} alone differs from the {side}-padded batch by {diff:.3g}")
    print(f"  {path.name}: every row alone matches its padded batch")
    return refs


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    cos = np.sum(a * b, axis=-1) / np.maximum(na * nb, 1e-12)
    return np.where((na < 1e-6) & (nb < 1e-6), 1.0, cos)  # two zero vectors (e.g. a zero embedding row) agree


def verify_variant(path: Path, tokenizer, texts, max_length, refs, min_cosine: float) -> float:
    session = open_session(path)
    worst = 1.0
    for side, feeds in batches(tokenizer, texts, max_length):
        got = session.run(None, feeds)[0]
        if got.dtype != np.float32 or not np.isfinite(got).all():
            fail(f"{path}: output is {got.dtype} or not finite")
        worst = min(worst, float(np.min(cosine_rows(got.astype(np.float64), refs[side].astype(np.float64)))))
    print(f"  {path.name}: min cosine to fp32 PyTorch = {worst:.6f}")
    if worst < min_cosine:
        fail(f"{path}: cosine {worst:.6f} to the fp32 model is below {min_cosine}")
    return worst


def check_tokenizer(src_tok, out: Path, texts: list[str]) -> None:
    """The shipped files must tokenize like the source, both through transformers and through tokenizer.json alone
    (what flagserve reads: the post-processor in tokenizer.json decides the BOS / EOS tokens)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    shipped = AutoTokenizer.from_pretrained(out)
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in texts + ["<s>", f"{ICL_SUFFIX}</s>"]:
        want = src_tok(text)["input_ids"]
        if shipped(text)["input_ids"] != want:
            fail(f"the tokenizer written to {out} tokenizes {text[:40]!r} differently from the source")
        if raw.encode(text).ids != want:
            fail(f"{out}/tokenizer.json alone tokenizes {text[:40]!r} as {raw.encode(text).ids}, transformers as {want}")
    if shipped.padding_side != src_tok.padding_side:
        fail(f"padding side {shipped.padding_side} != source {src_tok.padding_side}")


def write_model_files(src: Path, out: Path, tokenizer) -> None:
    shutil.copy(src / "config.json", out / "config.json")
    with tempfile.TemporaryDirectory() as tmp:
        # save_pretrained writes what transformers actually uses (e.g. the TemplateProcessing that
        # LlamaTokenizerFast rebuilds from add_bos_token / add_eos_token), so tokenizer.json alone is enough.
        tokenizer.save_pretrained(tmp)
        for f in TOKENIZER_FILES:
            if not (Path(tmp) / f).is_file():
                fail(f"the tokenizer has no {f}")
            shutil.copy(Path(tmp) / f, out / f)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # Only tokenizer.json is shipped: these keys would make transformers look for the slow tokenizer's files.
    changed = [config.pop(k) for k in ("from_slow", "add_prefix_space") if k in config]
    if "padding_side" not in config:
        config["padding_side"] = tokenizer.padding_side  # class defaults differ (Llama / Gemma: left), write it down
        changed.append(True)
    if changed:
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- metadata


def mapped_name(src: Path) -> str:
    name = src.name
    return src.parent.name if name.startswith("checkpoint-") else name


def resolve_class(args) -> tuple[str, str | None, str]:
    """(model class, mapped name or None, query instruction format) as FlagAutoModel would pick them."""
    name = args.mapped_name or mapped_name(args.src)
    mapped = MAPPING.get(name)
    model_class = args.model_class or (mapped[0] if mapped else None)
    if model_class is None:
        fail(f"{name!r} is not a decoder-only name in FlagEmbedding's mapping: pass --model-class or --mapped-name")
    # FlagAutoModel: the mapping's format for mapped names, "{}{}" when the class is given explicitly.
    default_format = mapped[1] if mapped and not args.model_class else "{}{}"
    fmt = (args.query_instruction_format or default_format).replace("\\n", "\n")
    return model_class, name if mapped else None, fmt


def metadata(args, config, tokenizer, variants: dict[str, str], domains: list[str] | None) -> dict[str, Any]:
    model_class, name, fmt = resolve_class(args)
    fixed: dict[str, Any] = {
        "attn_implementation": "eager",
        "position_ids": "0..sequence-1 along the padded row (what the model computes without position_ids)",
        "hidden_size": config.hidden_size,
        "sliding_window": getattr(config, "sliding_window", None),
        "layer_types": getattr(config, "layer_types", None),
        "attn_logit_softcapping": getattr(config, "attn_logit_softcapping", None),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "model_type": config.model_type,
    }
    meta: dict[str, Any] = {
        "flagserve_format": 1,
        "kind": "embedding",
        "model_class": model_class,
        "mapped_name": name,
        "pooling": "last_token",
        "padding_side": tokenizer.padding_side,
        "normalize_embeddings": True,
        "query_instruction_format": fmt,
        "query_instruction_for_retrieval": args.query_instruction,
        "passage_instruction_format": (args.passage_instruction_format or "{}{}").replace("\\n", "\n"),
        "passage_instruction_for_retrieval": args.passage_instruction,
        "query_max_length": args.query_max_length,
        "passage_max_length": args.passage_max_length,
        "embedding_dim": config.hidden_size,
        "variants": variants,
    }
    if model_class == ICL:
        examples = json.loads(Path(args.examples).read_text(encoding="utf-8")) if args.examples else None
        meta["examples_instruction_format"] = (args.examples_instruction_format or ICL_EXAMPLES_FORMAT).replace("\\n", "\n")
        meta["examples_for_task"] = examples
        meta["suffix"] = args.suffix.replace("\\n", "\n")
    if model_class == MOE:
        meta["domains"] = {d: "onnx/" if d == args.default_domain else f"onnx/domain_{d}/" for d in domains or []}
        meta["default_domain"] = args.default_domain
        fixed["domain"] = "one graph per domain (routing fixed at export); onnx/model*.onnx: the default domain"
    meta["graph"] = {
        "inputs": INPUT_NAMES,
        "outputs": {OUTPUT_NAME: "last-token pooled, unnormalised"},
    }
    meta["fixed_at_export"] = fixed
    meta["exported_with"] = exported_with("scripts/export/decoder.py")
    return meta


def exported_with(script: str) -> dict[str, str]:
    """The script and package versions a flagserve.json records."""
    import transformers  # imported where needed: it takes seconds

    return {
        "script": script,
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


# ---------------------------------------------------------------- main


def export_fp32(args, model, tokenizer, onnx_dir: Path, domain: str | None, texts, example) -> dict[str, np.ndarray]:
    """The fp32 graph, checked against PyTorch. Returns the PyTorch reference vectors of the check batches."""
    onnx_dir.mkdir(parents=True, exist_ok=True)
    fp32 = onnx_dir / VARIANT_FILES["fp32"]
    export(LastTokenPooled(model, domain).eval(), example, fp32, args.short_names)
    return verify_fp32(fp32, model, tokenizer, texts, args.check_len, args.atol, args.rtol, domain)


def export_fp16(args, model, tokenizer, onnx_dir: Path, domain: str | None, texts, example, refs) -> None:
    """PyTorch's own fp16 computation (RMSNorm statistics and softmax upcast to fp32 as the modeling code does, masks
    at float16's minimum), traced from the half-precision model; the output is cast back to float32."""
    path = onnx_dir / VARIANT_FILES["fp16"]
    export(LastTokenPooled(model, domain).eval(), example, path, args.short_names)
    verify_variant(path, tokenizer, texts, args.check_len, refs, args.fp16_min_cosine)


def export_quantized(args, tokenizer, onnx_dir: Path, texts, refs) -> None:
    """The MatMulNBits variants, quantized from the fp32 graph on disk."""
    for flag, key, bits, threshold in (("int8", "int8", 8, args.int8_min_cosine), ("int4", "q4", 4, args.int4_min_cosine)):
        if getattr(args, flag):
            path = onnx_dir / VARIANT_FILES[key]
            quantize(onnx_dir / VARIANT_FILES["fp32"], path, bits, args.block_size)
            verify_variant(path, tokenizer, texts, args.check_len, refs, threshold)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="local Hugging Face checkpoint directory")
    parser.add_argument("out", type=Path, help="flagserve model directory to write")
    parser.add_argument("--fp16", action="store_true", help="also write onnx/model_fp16.onnx")
    parser.add_argument("--int8", action="store_true", help="also write onnx/model_int8.onnx (MatMulNBits, 8 bits)")
    parser.add_argument("--int4", action="store_true", help="also write onnx/model_q4.onnx (MatMulNBits, 4 bits)")
    parser.add_argument("--block-size", type=int, default=32, help="quantization block size (default 32)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT directory")
    parser.add_argument("--trust-remote-code", action="store_true", help="load custom modeling code from SRC")
    parser.add_argument("--short-names", action="store_true", help="n<i> / t<i> node and value names (smaller graphs)")
    meta = parser.add_argument_group("flagserve.json (defaults: FlagEmbedding's mapping and class defaults)")
    meta.add_argument("--mapped-name", help="name to look up in FlagEmbedding's mapping (default: SRC's base name)")
    meta.add_argument("--model-class", choices=[BASE, ICL, MOE])
    meta.add_argument("--query-instruction-format")
    meta.add_argument("--query-instruction", help="query_instruction_for_retrieval (default: none)")
    meta.add_argument("--passage-instruction-format")
    meta.add_argument("--passage-instruction")
    meta.add_argument("--query-max-length", type=int, default=512)
    meta.add_argument("--passage-max-length", type=int, default=512)
    meta.add_argument("--examples-instruction-format", help=f"ICL (default {ICL_EXAMPLES_FORMAT!r})")
    meta.add_argument("--examples", help="ICL: JSON file with [{instruct, query, response}, ...]")
    meta.add_argument("--suffix", default=ICL_SUFFIX, help=f"ICL query suffix (default {ICL_SUFFIX!r})")
    meta.add_argument("--domains", help="pseudo-MoE: comma-separated domains, one graph each")
    meta.add_argument("--default-domain", help="pseudo-MoE: the domain onnx/model*.onnx is exported with")
    check = parser.add_argument_group("checks")
    check.add_argument("--atol", type=float, default=1e-4, help="fp32 check: absolute tolerance")
    check.add_argument("--rtol", type=float, default=1e-3, help="fp32 check: relative tolerance")
    check.add_argument("--check-max-length", type=int, default=64, help="truncation of the check texts")
    check.add_argument("--check-window", type=int, help="add a check text of 2x this many words (sliding windows)")
    check.add_argument("--fp16-min-cosine", type=float, default=0.999)
    check.add_argument("--int8-min-cosine", type=float, default=0.99)
    check.add_argument("--int4-min-cosine", type=float, default=0.9)
    args = parser.parse_args(argv)

    from transformers import AutoModel, AutoTokenizer

    started = time.time()
    src, out = args.src.resolve(), args.out.resolve()
    args.src = src
    if not (src / "config.json").is_file():
        fail(f"{src} is not a checkpoint directory (no config.json)")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        fail(f"{out} is not empty (pass --overwrite to replace it)")

    resolve_class(args)  # fail early on an unknown name
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=args.trust_remote_code)
    if not tokenizer.is_fast:
        fail("a fast tokenizer (tokenizer.json) is required")
    if tokenizer.pad_token is None:
        fail("the tokenizer has no pad token: FlagEmbedding's tokenizer.pad would refuse to pad a batch")
    model = AutoModel.from_pretrained(
        src, attn_implementation="eager", dtype=torch.float32, trust_remote_code=args.trust_remote_code
    ).eval()
    n_bytes = sum(p.numel() * 4 for p in model.parameters())
    window = getattr(model.config, "sliding_window", None)
    print(f"{src.name}: {type(model).__name__}, hidden {model.config.hidden_size}, {n_bytes / 1e6:.1f} MB fp32")

    if out.exists():
        shutil.rmtree(out)
    (out / "onnx").mkdir(parents=True)
    write_model_files(src, out, tokenizer)
    check_tokenizer(tokenizer, out, CHECK_TEXTS)

    domains = [d for d in (args.domains or "").split(",") if d]
    if args.model_class == MOE and not domains:
        fail("a pseudo-MoE export needs --domains (one graph per domain)")
    # (directory, domain) of every graph: the default one, then one folder per pseudo-MoE domain
    graphs: list[tuple[Path, str | None]] = [(out / "onnx", args.default_domain)]
    graphs += [(out / "onnx" / f"domain_{d}", d) for d in domains if d != args.default_domain]
    texts = list(CHECK_TEXTS)
    args.check_len = args.check_max_length
    if args.check_window:
        texts.append(" ".join(["word"] * (2 * args.check_window)))
        args.check_len = max(args.check_len, 2 * args.check_window + 8)
    longest = max(len(ids) for ids in tokenizer(texts, truncation=True, max_length=args.check_len)["input_ids"])
    if window is not None:
        exercised = "exercised" if longest > window else "NOT exercised (see --check-window)"
        print(f"  sliding window {window}: {exercised} by the checks (longest check sequence {longest} tokens)")
    enc = tokenizer(CHECK_TEXTS[:2], padding=True, return_tensors="pt")
    example = {k: enc[k] for k in INPUT_NAMES}
    refs = {}
    for onnx_dir, domain in graphs:
        if domain is not None:
            print(f"domain {domain}:")
        refs[onnx_dir] = export_fp32(args, model, tokenizer, onnx_dir, domain, texts, example)
    if args.fp16:
        model.half()  # the fp32 weights are not needed any more: the references are computed
        for onnx_dir, domain in graphs:
            export_fp16(args, model, tokenizer, onnx_dir, domain, texts, example, refs[onnx_dir])
    config = model.config
    del model  # quantization holds the whole ONNX model in memory; free PyTorch's copy first
    gc.collect()
    for onnx_dir, _ in graphs:
        export_quantized(args, tokenizer, onnx_dir, texts, refs[onnx_dir])
    variants = {k: f"onnx/{v}" for k, v in VARIANT_FILES.items() if (out / "onnx" / v).is_file()}

    meta = metadata(args, config, tokenizer, variants, domains)
    (out / "flagserve.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"  wrote {f.relative_to(out)} ({f.stat().st_size / 1e6:.2f} MB)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"done in {time.time() - started:.1f} s, peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
