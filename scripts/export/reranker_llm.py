#!/usr/bin/env python3
"""Export an LLM reranker checkpoint (FlagEmbedding's FlagLLMReranker, LayerWiseFlagLLMReranker or
LightWeightFlagLLMReranker models) to a flagserve model directory whose ONNX graph returns scores, never vocabulary
logits.

    python scripts/export/reranker_llm.py CHECKPOINT OUT [--fp16] [--int8] [--int4] [--overwrite] [options]

OUT receives config.json, the tokenizer files, flagserve.json (the graph contract and FlagEmbedding's defaults) and
onnx/model.onnx + onnx/model.onnx_data, plus onnx/model_fp16.onnx, onnx/model_int8.onnx and onnx/model_q4.onnx (each
with its own *_data file) on request.

  decoder-only-base        (bge-reranker-v2-gemma)       input_ids, attention_mask -> scores [batch]
  decoder-only-layerwise   (bge-reranker-v2-minicpm-layerwise)
                                                          input_ids, attention_mask -> scores [batch, layers, heads]
  decoder-only-lightweight (bge-reranker-v2.5-gemma2-lightweight)
                           input_ids, attention_mask, query_lengths, prompt_lengths, compress_ratio, compress_layers
                                                          -> scores [batch, layers, heads]

Every written graph is run with ONNX Runtime and compared with PyTorch (FlagEmbedding's own modelling code where it
runs) before the script succeeds; any mismatch exits non-zero. README.md beside this file documents the contract and
the exact pre/post-processing (prompt assembly, truncation, padding, layer / head selection, sigmoid).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Shared with the decoder-only embedder export: external-data writer, MatMulNBits quantization, tokenizer files.
from decoder import exported_with, quantize, save, write_model_files  # noqa: E402

OPSET = 17
BASE, LAYERWISE, LIGHTWEIGHT = "decoder-only-base", "decoder-only-layerwise", "decoder-only-lightweight"
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx", "q4": "model_q4.onnx"}
# FlagEmbedding 1.4.2 model_mapping.py: the decoder-only reranker names.
MAPPING = {
    "bge-reranker-v2-gemma": BASE,
    "bge-reranker-v2-minicpm-layerwise": LAYERWISE,
    "bge-reranker-v2.5-gemma2-lightweight": LIGHTWEIGHT,
}
# Class defaults of FlagEmbedding 1.4.2 (decoder_only/base.py, layerwise.py, lightweight.py).
DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a "
    "prediction of either 'Yes' or 'No'."
)
LIGHTWEIGHT_PROMPT = "Predict whether passage B contains an answer to query A."
SEPARATOR = "\n"
QUERY_INSTRUCTION, PASSAGE_INSTRUCTION = "A: ", "B: "
LIGHTWEIGHT_COMPRESS_LAYERS = [8]
PAD_TO_MULTIPLE_OF = 8
GRAPH_INPUTS = {
    BASE: ["input_ids", "attention_mask"],
    LAYERWISE: ["input_ids", "attention_mask"],
    LIGHTWEIGHT: [
        "input_ids", "attention_mask", "query_lengths", "prompt_lengths", "compress_ratio", "compress_layers",
    ],
}

CHECK_PAIRS = [
    ("What is a reranker?", "A reranker scores a query and a passage together."),
    ("", "An empty query still gets a score."),
    ("北京是哪个国家的首都？", "北京是中国的首都。東京は日本の首都です。"),
    ("pizza 🍕", ""),
    ("data data data", "model model vector " * 6),
    ("Tabs\tand\nnew lines", " ".join(f"Sentence {i} is about retrieval and ranking." for i in range(30))),
]


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


# ---------------------------------------------------------------- the model families


class Family:
    """What differs between the decoder stacks: embedding scale, residual scale, attention scaling, norms per layer,
    sliding windows. The layer modules themselves (projections, norms, MLPs) are the checkpoint's own."""

    def __init__(self, model_class: str, lm: torch.nn.Module):
        config = lm.config
        self.config = config
        self.model_type = config.model_type
        self.decoder = lm.model
        self.layers = list(self.decoder.layers)
        self.n_layers = config.num_hidden_layers
        self.n_heads = config.num_attention_heads
        self.n_kv = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.embed_scale: float | None = None
        self.residual_scale = 1.0
        self.sandwich = False  # Gemma2: norms after attention and after the MLP as well
        self.window: int | None = None
        self.sliding_layers: set[int] = set()
        self.minicpm = False  # MiniCPM: embeddings * a Python float, attention scores / sqrt(head_dim)
        self.scaling = self.head_dim**-0.5
        rope_scaling = getattr(config, "rope_scaling", None)
        if rope_scaling and (rope_scaling.get("rope_type") or rope_scaling.get("type")) not in (None, "default"):
            fail(f"rope_scaling {rope_scaling} is not supported by this exporter")
        theta = float(getattr(config, "rope_theta", 10000.0))
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))
        if getattr(config, "attn_logit_softcapping", None) and model_class == BASE:
            fail("attention logit softcapping (Gemma2 as a base reranker) is not supported by this exporter")
        if model_class == LAYERWISE:
            # FlagEmbedding's MiniCPM: embeddings * scale_emb, residual branches * scale_depth / sqrt(layers),
            # attention / sqrt(head_dim).
            self.embed_scale = float(config.scale_emb)
            self.residual_scale = float(config.scale_depth) / math.sqrt(self.n_layers)
            self.minicpm = True
        elif model_class == LIGHTWEIGHT:
            # FlagEmbedding's CostWiseGemma with transformers 4.46: Gemma2 layers, but the model class does not
            # inherit Gemma2PreTrainedModel, so transformers picks SDPA attention, which has no attention logit
            # softcapping; the decoder layer applies the sliding window to even layers itself.
            self.embed_scale = float(config.hidden_size**0.5)
            self.sandwich = True
            self.scaling = float(config.query_pre_attn_scalar) ** -0.5
            self.window = getattr(config, "sliding_window", None)
            self.sliding_layers = {i for i in range(self.n_layers) if i % 2 == 0} if self.window else set()
        elif self.model_type == "gemma":
            self.embed_scale = float(config.hidden_size**0.5)
        elif self.model_type not in ("llama", "mistral", "qwen2"):
            fail(f"model type {self.model_type!r} is not supported as a base reranker (gemma, llama, mistral, qwen2)")
        if self.model_type in ("mistral", "qwen2") and getattr(config, "sliding_window", None):
            if self.model_type == "mistral" or getattr(config, "use_sliding_window", False):
                fail("sliding-window attention in a base LLM reranker is not supported by this exporter")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.decoder.embed_tokens(input_ids)
        if self.embed_scale is not None:
            if self.minicpm:  # MiniCPM multiplies by a Python float
                h = h * self.embed_scale
            else:  # Gemma: the normalizer is a tensor of the hidden dtype (55.4256 becomes 55.5 in fp16)
                h = h * torch.tensor(self.embed_scale, dtype=h.dtype)
        return h

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos / sin [batch or 1, seq, head_dim] in float32 (angles position * inv_freq, as every RoPE here)."""
        freqs = positions.float()[..., None] * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def attention(self, layer_idx: int, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        attn = self.layers[layer_idx].self_attn
        batch, seq = x.shape[0], x.shape[1]
        q = attn.q_proj(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, seq, self.n_kv, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, seq, self.n_kv, self.head_dim).transpose(1, 2)
        c, s = cos[:, None], sin[:, None]
        q = (q.float() * c + rotate_half(q.float()) * s).to(x.dtype)
        k = (k.float() * c + rotate_half(k.float()) * s).to(x.dtype)
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            full = (batch, self.n_heads, seq, self.head_dim)
            k = k[:, :, None].expand(batch, self.n_kv, rep, seq, self.head_dim).reshape(full)
            v = v[:, :, None].expand(batch, self.n_kv, rep, seq, self.head_dim).reshape(full)
        scores = torch.matmul(q, k.transpose(2, 3))
        scores = scores / math.sqrt(self.head_dim) if self.minicpm else scores * self.scaling
        probs = torch.softmax(scores + mask, dim=-1, dtype=torch.float32).to(x.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)
        return attn.o_proj(out)

    def layer(self, idx: int, h: torch.Tensor, masks: dict[str, torch.Tensor], cos, sin) -> torch.Tensor:
        layer = self.layers[idx]
        mask = masks["sliding"] if idx in self.sliding_layers else masks["full"]
        a = self.attention(idx, layer.input_layernorm(h), mask, cos, sin)
        if self.sandwich:
            h = h + layer.post_attention_layernorm(a)
            m = layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
            return h + m
        h = h + a * self.residual_scale if self.residual_scale != 1.0 else h + a
        m = layer.mlp(layer.post_attention_layernorm(h))
        return h + m * self.residual_scale if self.residual_scale != 1.0 else h + m

    def masks(self, key_valid: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Additive masks [batch, 1, seq, seq]: key j is visible from query i iff j <= i and j is a real token (and,
        for sliding layers, j > i - window). A padded query also sees itself, so no row is empty (an all-masked row
        would give NaN in float16, where the mask value is -inf)."""
        seq = key_valid.shape[1]
        pos = torch.arange(seq, device=key_valid.device)
        qi, kj = pos[:, None], pos[None, :]
        visible = (kj <= qi)[None, None] & (key_valid[:, None, None, :] | (kj == qi)[None, None])
        low = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
        zero = torch.zeros((), dtype=dtype)
        out = {"full": torch.where(visible, zero, low)}
        if self.window is not None:
            out["sliding"] = torch.where(visible & (kj > qi - self.window)[None, None], zero, low)
        return out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def gather_rows(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """h[b, index[b]] for every row: [batch, hidden]."""
    return torch.gather(h, 1, index[:, None, None].expand(-1, 1, h.shape[-1]))[:, 0]


class BaseScores(torch.nn.Module):
    """FlagLLMReranker: the 'Yes' logit at the last real position. Positions are counted over real tokens only
    (cumsum of the mask - 1), so a row's score does not depend on how much padding its batch has, on either side;
    FlagEmbedding counts positions along the padded row, which RoPE cannot tell apart beyond rounding."""

    def __init__(self, lm: torch.nn.Module, yes_id: int):
        super().__init__()
        self.lm = lm
        self.family = Family(BASE, lm)
        head = lm.get_output_embeddings().weight[yes_id].detach().clone()
        self.register_buffer("yes_head", head)
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)

    def forward(self, input_ids, attention_mask):
        f = self.family
        h = f.embed(input_ids)
        positions = torch.clamp(torch.cumsum(attention_mask, dim=1) - 1, min=0)
        cos, sin = f.rotary(positions, h.dtype)
        masks = f.masks(attention_mask.bool(), h.dtype)
        for idx in range(f.n_layers):
            h = f.layer(idx, h, masks, cos, sin)
        last = (attention_mask * torch.arange(input_ids.shape[1], device=input_ids.device)[None]).argmax(dim=1)
        hidden = f.decoder.norm(gather_rows(h, last))
        scores = hidden.float() @ self.yes_head.float()
        if self.softcap:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        return scores


class LayerwiseScores(torch.nn.Module):
    """LayerWiseFlagLLMReranker: for every exported layer l (the hidden state after l decoder layers, through the
    model's final norm) and every exported head j, head_j . norm(h_l) at the last real position -> [batch, L, L]."""

    def __init__(self, lm: torch.nn.Module, layers: list[int], heads: torch.Tensor):
        super().__init__()
        self.lm = lm
        self.family = Family(LAYERWISE, lm)
        self.layers = layers
        self.register_buffer("heads", heads)

    def forward(self, input_ids, attention_mask):
        f = self.family
        h = f.embed(input_ids)
        positions = torch.clamp(torch.cumsum(attention_mask, dim=1) - 1, min=0)
        cos, sin = f.rotary(positions, h.dtype)
        masks = f.masks(attention_mask.bool(), h.dtype)
        last = (attention_mask * torch.arange(input_ids.shape[1], device=input_ids.device)[None]).argmax(dim=1)
        collected = []
        for idx in range(max(self.layers) + 1):
            if idx in self.layers:
                collected.append(f.decoder.norm(gather_rows(h, last)))
            if idx < f.n_layers and idx < max(self.layers):
                h = f.layer(idx, h, masks, cos, sin)
        stacked = torch.stack(collected, dim=1).float()  # [batch, L, hidden]
        return torch.matmul(stacked, self.heads.float().t())


def compress(h, lengths, query_lengths, prompt_lengths, ratio):
    """FlagEmbedding's token_compress (decoder_only/models/gemma_model.py) for a right-padded batch, with the ratio
    as a tensor: per row the passage tokens (between the query part and the prompt part) are averaged in groups of
    `ratio` (the last group may be shorter), the prompt part moves up behind them, the rest is zero padding.
    Returns the new hidden states [batch, max new length, hidden] and the new lengths [batch]."""
    from torch.onnx.operators import reshape_from_tensor_shape, shape_as_tensor

    shape = shape_as_tensor(h)
    seq = shape[1]
    passage = lengths - query_lengths - prompt_lengths
    kept = torch.div(passage + ratio - 1, ratio, rounding_mode="floor")
    new_lengths = query_lengths + kept + prompt_lengths
    groups = torch.div(passage.max() + ratio - 1, ratio, rounding_mode="floor")
    t = torch.arange(groups * ratio, device=h.device)
    src = torch.minimum(query_lengths[:, None] + t[None, :], seq - 1)
    valid = t[None, :] < passage[:, None]
    buf = torch.gather(h, 1, src[..., None].expand(-1, -1, h.shape[-1]))
    count = torch.minimum(
        torch.clamp(passage[:, None] - torch.div(t, ratio, rounding_mode="floor")[None, :] * ratio, min=1), ratio
    )
    weights = valid.to(h.dtype) / count.to(h.dtype)
    buf = buf * weights[..., None]
    grouped = torch.cat([shape[0:1], groups.reshape(1), ratio.reshape(1), shape[2:3]])
    merged = reshape_from_tensor_shape(buf, grouped).sum(dim=2)  # [batch, groups, hidden]
    j = torch.arange(new_lengths.max(), device=h.device)[None, :]
    in_query = j < query_lengths[:, None]
    in_passage = j < (query_lengths + kept)[:, None]
    in_row = j < new_lengths[:, None]
    zero = torch.zeros_like(j)
    in_prompt = torch.where(in_row, j - kept[:, None] + passage[:, None], zero)
    index = torch.where(in_query, j, torch.where(in_passage, seq + j - query_lengths[:, None], in_prompt))
    both = torch.cat([h, merged], dim=1)
    out = torch.gather(both, 1, index[..., None].expand(-1, -1, h.shape[-1])) * in_row[..., None].to(h.dtype)
    return out, new_lengths


class LightweightScores(torch.nn.Module):
    """LightWeightFlagLLMReranker (CostWiseGemma): token compression before layer i (i >= 1) when
    compress_layers[i] != 0, by compress_ratio (1 = none); for every exported layer l and head j,
    softcap(head_j . norm(h_l)) at the last real position of that layer's (possibly compressed) row -> [batch, L, L].
    Rows must be right-padded (FlagEmbedding forces padding_side = 'right' for this class)."""

    def __init__(self, lm: torch.nn.Module, layers: list[int], heads: torch.Tensor):
        super().__init__()
        self.lm = lm
        self.family = Family(LIGHTWEIGHT, lm)
        self.layers = layers
        self.register_buffer("heads", heads)
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)

    def forward(self, input_ids, attention_mask, query_lengths, prompt_lengths, compress_ratio, compress_layers):
        f = self.family
        h = f.embed(input_ids)
        lengths = attention_mask.sum(dim=1)
        ratio = compress_ratio.reshape(())
        one = torch.ones_like(ratio)
        collected = []
        for idx in range(max(self.layers) + 1):
            if idx in self.layers:
                collected.append(f.decoder.norm(gather_rows(h, lengths - 1)))
            if idx >= f.n_layers or idx >= max(self.layers):
                break
            if idx > 0:
                r = torch.where(compress_layers[idx] != 0, ratio, one)
                h, lengths = compress(h, lengths, query_lengths, prompt_lengths, r)
            seq = h.shape[1]
            positions = torch.arange(seq, device=h.device)[None]
            cos, sin = f.rotary(positions, h.dtype)
            key_valid = torch.arange(seq, device=h.device)[None, :] < lengths[:, None]
            h = f.layer(idx, h, f.masks(key_valid, h.dtype), cos, sin)
        stacked = torch.stack(collected, dim=1).float()
        scores = torch.matmul(stacked, self.heads.float().t())
        if self.softcap:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        return scores


# ---------------------------------------------------------------- loading


def detect_class(src: Path, config: dict[str, Any], requested: str | None) -> str:
    if requested:
        return requested
    name = src.parent.name if src.name.startswith("checkpoint-") else src.name
    if name in MAPPING:
        return MAPPING[name]
    arch = (config.get("architectures") or [""])[0]
    if arch == "LayerWiseMiniCPMForCausalLM":
        return LAYERWISE
    if arch == "CostWiseGemmaForCausalLM":
        return LIGHTWEIGHT
    if arch.endswith("ForCausalLM"):
        return BASE
    fail(f"cannot tell the reranker class of {src} (architecture {arch!r}): pass --model-class")


def load_model(src: Path, model_class: str, trust_remote_code: bool) -> torch.nn.Module:
    """The checkpoint in float32 with the class FlagEmbedding uses for it."""
    if model_class == BASE:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            src, dtype=torch.float32, attn_implementation="eager", trust_remote_code=trust_remote_code
        ).eval()
    try:
        if model_class == LAYERWISE:
            from FlagEmbedding.inference.reranker.decoder_only.models.modeling_minicpm_reranker import (
                LayerWiseMiniCPMForCausalLM as cls,
            )
        else:
            from FlagEmbedding.inference.reranker.decoder_only.models.gemma_model import CostWiseGemmaForCausalLM as cls
    except ImportError:
        if not trust_remote_code:
            fail("FlagEmbedding is not installed: install it (requirements.txt) or pass --trust-remote-code")
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, trust_remote_code=True).eval()
    return cls.from_pretrained(src, dtype=torch.float32, attn_implementation="eager").eval()


def heads_of(lm: torch.nn.Module, model_class: str) -> list[torch.Tensor]:
    """The per-layer score heads (Linear(hidden, 1) each), in FlagEmbedding's order."""
    config = lm.config
    if model_class == LAYERWISE:
        if config.head_type != "simple":
            fail(f"head_type {config.head_type!r}: only the 'simple' (one logit per layer) head is supported")
        if not config.head_multi:
            return [lm.lm_head.linear_head.weight[0]] * (config.num_hidden_layers - config.start_layer + 1)
    elif not config.layer_wise:
        fail("a lightweight checkpoint must have layer_wise = true (one head per layer)")
    return [head.linear_head.weight[0] for head in lm.lm_head]


def available_layers(config, model_class: str) -> list[int]:
    """The cutoff layers FlagEmbedding accepts (layerwise: start_layer..N; lightweight: range(start, N + 1, sep))."""
    if model_class == LAYERWISE:
        return list(range(config.start_layer, config.num_hidden_layers + 1))
    return list(range(config.start_layer, config.num_hidden_layers + 1, config.layer_sep))


# ---------------------------------------------------------------- FlagEmbedding's pair assembly (for the checks)


def class_prompt(model_class: str) -> str:
    return LIGHTWEIGHT_PROMPT if model_class == LIGHTWEIGHT else DEFAULT_PROMPT


def prepends_bos(tokenizer, model_class: str) -> bool:
    """FlagLLMReranker prepends BOS only when the tokenizer has one that is not also its pad token; the layerwise
    and lightweight classes always prepend bos_token_id."""
    if model_class == BASE:
        return tokenizer.bos_token_id is not None and tokenizer.bos_token_id != tokenizer.pad_token_id
    return True


def pair_rows(tokenizer, model_class: str, pairs, max_length: int, query_max_length: int, prompt: str):
    """input ids, query length (BOS + query + separator) and prompt length (separator + prompt) of each pair, built
    as compute_score_single_gpu builds them (default instructions 'A: ' / 'B: ' applied first)."""
    sep = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if prepends_bos(tokenizer, model_class) else []
    rows = []
    for query, passage in pairs:
        q = tokenizer(QUERY_INSTRUCTION + query, add_special_tokens=False)["input_ids"][:query_max_length]
        p = tokenizer(PASSAGE_INSTRUCTION + passage, add_special_tokens=False)["input_ids"][:max_length]
        first, second = bos + q, sep + p
        remove = len(first) + len(second) - (max_length + len(sep) + len(prompt_ids))
        if 0 < remove < len(second):
            second = second[:-remove]
        rows.append((first + second + sep + prompt_ids, len(bos) + len(q) + len(sep), len(sep) + len(prompt_ids)))
    return rows


def pad_rows(rows, pad_id: int, side: str) -> dict[str, np.ndarray]:
    width = -(-max(len(r[0]) for r in rows) // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (row, _, _) in enumerate(rows):
        sl = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, sl] = row
        mask[i, sl] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "query_lengths": np.array([r[1] for r in rows], dtype=np.int64),
        "prompt_lengths": np.array([r[2] for r in rows], dtype=np.int64),
    }


# ---------------------------------------------------------------- references (PyTorch, FlagEmbedding's code path)


def flag_last_logit_pool(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """decoder_only/base.py last_logit_pool (and its layerwise / lightweight copies)."""
    if mask[:, -1].sum() == mask.shape[0]:
        return logits[:, -1]
    return logits[torch.arange(logits.shape[0]), mask.sum(dim=1) - 1]


def reference_base(lm, feeds, yes_id: int) -> np.ndarray:
    with torch.no_grad():
        ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
        logits = lm(input_ids=ids, attention_mask=mask).logits
        return flag_last_logit_pool(logits, mask)[:, yes_id].float().numpy()


def reference_layerwise(lm, feeds, layers: list[int], heads: torch.Tensor) -> np.ndarray:
    """The MiniCPM model's own forward (cutoff_layers = every exported layer): its diagonal is what FlagEmbedding
    returns; the full matrix applies every head to the model's own normed hidden states."""
    with torch.no_grad():
        ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
        out = lm(input_ids=ids, attention_mask=mask, cutoff_layers=layers, output_hidden_states=True, use_cache=False)
        last = [flag_last_logit_pool(hs, mask) for hs in out.hidden_states]
        matrix = torch.stack(last, dim=1).float() @ heads.float().t()
        diagonal = torch.stack([flag_last_logit_pool(lg, mask) for lg in out.logits], dim=1)
        start = layers[0]
        own = torch.stack([matrix[:, i, layer - start] for i, layer in enumerate(layers)], dim=1)
        if not torch.allclose(own, diagonal, atol=1e-6, rtol=1e-5):
            fail("the layerwise head matrix does not reproduce the model's own per-layer logits")
        return matrix.numpy()


def reference_lightweight(lm, feeds, layers: list[int], heads: torch.Tensor, ratio: int, compress_at: list[int]):
    """CostWiseGemmaModel.forward step by step, with FlagEmbedding's own token_compress. Under transformers 4.46
    (what FlagEmbedding asks for) the model's forward is called directly; newer transformers changed the Gemma2
    decoder layer's signature (position embeddings from outside, the sliding window from the caller's mask), so
    there the same loop is run here with the checkpoint's layers in SDPA mode (no attention softcapping)."""
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_model import token_compress

    ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
    q_len, p_len = torch.from_numpy(feeds["query_lengths"]), torch.from_numpy(feeds["prompt_lengths"])
    with torch.no_grad():
        try:
            out = lm(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, compress_layer=compress_at,
                compress_ratio=ratio, query_lengths=q_len.tolist(), prompt_lengths=p_len.tolist(), cutoff_layers=layers,
            )
            states, masks = out.hidden_states, out.attention_masks
        except TypeError:
            states, masks = lightweight_loop(lm, ids, mask, q_len, p_len, layers, ratio, compress_at, token_compress)
        last = torch.stack([flag_last_logit_pool(s, m) for s, m in zip(states, masks)], dim=1).float()
        scores = last @ heads.float().t()
        cap = lm.config.final_logit_softcapping
        if cap:
            scores = torch.tanh(scores / cap) * cap
        return scores.numpy()


def lightweight_loop(lm, ids, mask, q_len, p_len, layers, ratio, compress_at, token_compress):
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RotaryEmbedding

    config = lm.config
    model = lm.model
    saved = config._attn_implementation
    config._attn_implementation = "sdpa"
    try:
        rotary = Gemma2RotaryEmbedding(config)
        h = model.embed_tokens(ids) * torch.tensor(config.hidden_size**0.5, dtype=torch.float32)
        states, masks = [], []
        for idx, layer in enumerate(model.layers):
            if idx in layers:
                states.append(model.norm(h))
                masks.append(mask)
            if idx == max(layers):
                break
            if ratio != 1 and idx in compress_at and idx != 0:
                h, mask = token_compress(ratio, h, mask, q_len, p_len)
            seq = h.shape[1]
            pos = torch.arange(seq)
            allowed = (pos[None, :] <= pos[:, None])[None, None] & mask[:, None, None, :].bool()
            if idx % 2 == 0 and config.sliding_window:
                allowed = allowed & (pos[None, :] > pos[:, None] - config.sliding_window)[None, None]
            bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
            out = layer(h, position_embeddings=rotary(h, pos[None]), attention_mask=bias)
            h = out[0] if isinstance(out, tuple) else out
        if max(layers) == config.num_hidden_layers:
            states.append(model.norm(h))
            masks.append(mask)
        return states, masks
    finally:
        config._attn_implementation = saved


# ---------------------------------------------------------------- export and checks


def example_feeds(tokenizer, model_class: str, n_layers: int) -> dict[str, torch.Tensor]:
    rows = pair_rows(tokenizer, model_class, CHECK_PAIRS[:2], 32, 24, class_prompt(model_class))
    feeds = pad_rows(rows, tokenizer.pad_token_id, "right" if model_class == LIGHTWEIGHT else tokenizer.padding_side)
    out = {k: torch.from_numpy(v) for k, v in feeds.items()}
    out["compress_ratio"] = torch.tensor([2], dtype=torch.int64)
    out["compress_layers"] = torch.zeros(n_layers, dtype=torch.int64)
    out["compress_layers"][1:] = 1
    return {k: out[k] for k in GRAPH_INPUTS[model_class]}


def export(module: torch.nn.Module, model_class: str, example: dict[str, torch.Tensor], path: Path) -> None:
    """TorchScript export (dynamic batch / sequence axes), then every weight into one `<name>_data` file."""
    names = GRAPH_INPUTS[model_class]
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask")}
    if model_class == LIGHTWEIGHT:
        axes.update({"query_lengths": {0: "batch"}, "prompt_lengths": {0: "batch"}})
    axes["scores"] = {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module.eval(),
                tuple(example[n] for n in names),
                str(raw),
                input_names=names,
                output_names=["scores"],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        save(onnx.load(str(raw), load_external_data=False), path, base_dir=Path(tmp))


class Runner:
    def __init__(self, path: Path, model_class: str):
        self.path = path
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != GRAPH_INPUTS[model_class] or outputs != ["scores"]:
            fail(f"{path}: unexpected graph signature {inputs} -> {outputs}")
        self.names = inputs

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run(None, {k: feeds[k] for k in self.names})[0]
        if out.dtype != np.float32 or not np.isfinite(out).all():
            fail(f"{self.path}: scores are {out.dtype} or not finite")
        return out


def check_cases(tokenizer, model_class: str, max_length: int, n_layers: int, exported: list[int]):
    """(name, feeds) for the checks: every check query with every check passage, padded on each side FlagEmbedding
    could use (lightweight: right only), and for the lightweight graph several compression settings."""
    queries = [q for q, _ in CHECK_PAIRS]
    passages = [p for _, p in CHECK_PAIRS]
    pairs = [(q, p) for q in queries for p in passages]
    rows = pair_rows(tokenizer, model_class, pairs, max_length, max_length * 3 // 4, class_prompt(model_class))
    sides = ["right"] if model_class == LIGHTWEIGHT else ["left", "right"]
    settings: list[tuple[int, list[int]]] = [(1, [])]
    if model_class == LIGHTWEIGHT:
        inner = [i for i in range(1, n_layers) if i < max(exported)]
        if inner:
            mid = inner[len(inner) // 2]
            settings += [(2, [mid]), (4, [inner[0], inner[-1]]), (8, [inner[0]]), (3, inner[:3])]
    cases = []
    for side in sides:
        for ratio, at in settings:
            feeds = pad_rows(rows, tokenizer.pad_token_id, side)
            feeds["compress_ratio"] = np.array([ratio], dtype=np.int64)
            flags = np.zeros(n_layers, dtype=np.int64)
            flags[at] = 1
            feeds["compress_layers"] = flags
            label = f"{side} padding" + (f", compress_ratio {ratio} at {at}" if model_class == LIGHTWEIGHT else "")
            cases.append((label, feeds, ratio, at))
    return rows, cases


def single_row(feeds: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    keep = feeds["attention_mask"][i].astype(bool)
    out = {k: v[i : i + 1][:, keep] for k, v in feeds.items() if k in ("input_ids", "attention_mask")}
    for k in ("query_lengths", "prompt_lengths"):
        out[k] = feeds[k][i : i + 1]
    out["compress_ratio"], out["compress_layers"] = feeds["compress_ratio"], feeds["compress_layers"]
    return out


def verify_fp32(runner: Runner, cases, reference, atol: float, rtol: float) -> list[np.ndarray]:
    """Every case against PyTorch, then every row alone against its padded batch (batch independence)."""
    refs = []
    for name, feeds, ratio, at in cases:
        want = reference(feeds, ratio, at)
        got = runner(feeds)
        worst = float(np.max(np.abs(got - want)))
        if got.shape != want.shape or np.any(np.abs(got - want) > atol + rtol * np.abs(want)):
            fail(f"{runner.path.name}: {name}: differs from PyTorch by up to {worst:.3g} (atol {atol}, rtol {rtol})")
        alone = max(float(np.max(np.abs(runner(single_row(feeds, i))[0] - got[i]))) for i in range(len(got)))
        if alone > atol + rtol * float(np.max(np.abs(got))):
            fail(f"{runner.path.name}: {name}: a row run alone differs from its padded batch by {alone:.3g}")
        print(f"  {runner.path.name}: {name}, {feeds['input_ids'].shape}: max |onnx - torch| = {worst:.2g}, "
              f"alone vs batch {alone:.2g}")
        refs.append(want)
    return refs


def verify_variant(runner: Runner, cases, refs: list[np.ndarray], min_corr: float) -> dict[str, float]:
    got = np.concatenate([runner(feeds).ravel() for _, feeds, _, _ in cases]).astype(np.float64)
    want = np.concatenate([r.ravel() for r in refs]).astype(np.float64)
    corr = float(np.corrcoef(got, want)[0, 1]) if np.std(got) > 0 and np.std(want) > 0 else float("nan")
    worst = float(np.max(np.abs(got - want)))
    print(f"  {runner.path.name}: score correlation to fp32 PyTorch = {corr:.6f}, max |diff| = {worst:.3g}")
    if not corr >= min_corr:
        fail(f"{runner.path.name}: correlation {corr:.6f} to the fp32 scores is below {min_corr}")
    return {"pearson_to_fp32": round(corr, 6), "max_abs_diff_to_fp32": float(f"{worst:.3g}")}


def check_tokenizer(src_tok, out: Path) -> None:
    """The shipped tokenizer.json alone must give the ids FlagEmbedding builds pairs from (no special tokens)."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    texts = [SEPARATOR, "Yes", DEFAULT_PROMPT, LIGHTWEIGHT_PROMPT] + [QUERY_INSTRUCTION + q for q, _ in CHECK_PAIRS]
    texts += [PASSAGE_INSTRUCTION + p for _, p in CHECK_PAIRS]
    for text in texts:
        want = src_tok(text, add_special_tokens=False)["input_ids"]
        got = raw.encode(text, add_special_tokens=False).ids
        if got != want:
            fail(f"{out}/tokenizer.json tokenizes {text[:40]!r} as {got[:12]}..., transformers as {want[:12]}...")


# ---------------------------------------------------------------- metadata


def graph_entry(model_class: str, dtype: str, layers: list[int], n_layers: int, lm, fixed: dict) -> dict[str, Any]:
    inputs = [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
    ]
    if model_class == LIGHTWEIGHT:
        inputs += [
            {"name": "query_lengths", "dtype": "int64", "shape": ["batch"],
             "value": "1 (BOS) + query tokens + separator tokens, per row"},
            {"name": "prompt_lengths", "dtype": "int64", "shape": ["batch"],
             "value": "separator tokens + prompt tokens, per row"},
            {"name": "compress_ratio", "dtype": "int64", "shape": [1], "value": "1 = no compression"},
            {"name": "compress_layers", "dtype": "int64", "shape": [n_layers],
             "value": "1 at index i = compress before decoder layer i (i >= 1; index 0 is ignored)"},
        ]
    if model_class == BASE:
        outputs = {"scores": {"dtype": "float32", "shape": ["batch"],
                              "value": "logit of yes_token_id at the last real position (raw, no sigmoid)"}}
    else:
        what = "softcapped " if model_class == LIGHTWEIGHT and lm.config.final_logit_softcapping else ""
        outputs = {"scores": {
            "dtype": "float32", "shape": ["batch", len(layers), len(layers)],
            "value": f"[b, i, j] = {what}head j applied to the normed hidden state after layers[i] decoder layers, "
                     "at the row's last real position (raw, no sigmoid)",
            "layers": layers, "heads": list(range(len(layers))),
        }}
    return {"dtype": dtype, "inputs": inputs, "outputs": outputs, "fixed": fixed}


def build_metadata(args, model_class, lm, tokenizer, yes_id, layers, files: dict[str, dict], quality) -> dict[str, Any]:
    config = lm.config
    name = args.src.parent.name if args.src.name.startswith("checkpoint-") else args.src.name
    meta: dict[str, Any] = {
        "flagserve_format": 1,
        "kind": "rerank",
        "model_class": model_class,
        "mapped_name": name if name in MAPPING else None,
        "padding_side": "right" if model_class == LIGHTWEIGHT else tokenizer.padding_side,
        "pad_to_multiple_of": PAD_TO_MULTIPLE_OF,
        "prompt": class_prompt(model_class),
        "separator": SEPARATOR,
        "yes_token_id": yes_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "prepend_bos": prepends_bos(tokenizer, model_class),
        "query_max_length": None,
        "max_length": 512,
        "query_instruction_for_rerank": QUERY_INSTRUCTION,
        "query_instruction_format": "{}{}",
        "passage_instruction_for_rerank": PASSAGE_INSTRUCTION,
        "passage_instruction_format": "{}{}",
        "normalize": False,
        "cutoff_layers": None,
        "compress_ratio": None,
        "compress_layers": None,
    }
    if model_class != BASE:
        usable = available_layers(config, model_class)
        meta["cutoff_layers"] = {
            "default": [config.num_hidden_layers],
            "available": layers,
            "accepted_by_flagembedding": usable,
            "head_for_result_i": "cutoff_layers[i] - start_layer" if model_class == LAYERWISE else "i",
            "start_layer": config.start_layer,
        }
        if model_class == LIGHTWEIGHT:
            meta["cutoff_layers"]["layer_sep"] = config.layer_sep
    if model_class == LIGHTWEIGHT:
        # FlagEmbedding documents 1, 2, 4 and 8; the graph takes any integer >= 1
        meta["compress_ratio"] = {"default": 1, "available": [1, 2, 4, 8], "any_integer": True}
        meta["compress_layers"] = {
            "default": LIGHTWEIGHT_COMPRESS_LAYERS,
            "available": list(range(1, config.num_hidden_layers)),
        }
    meta["graphs"] = files
    meta["variants"] = {k: f"onnx/{v}" for k, v in VARIANT_FILES.items() if f"onnx/{v}" in files}
    meta["quality"] = quality
    meta["exported_with"] = exported_with("scripts/export/reranker_llm.py")
    return meta


def fixed_settings(model_class: str, lm, family: Family) -> dict[str, Any]:
    config = lm.config
    fixed: dict[str, Any] = {
        "model_type": config.model_type,
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "positions": "0..sequence-1 along the right-padded row, restarting after each compression",
    }
    if model_class == BASE:
        fixed["positions"] = "cumsum(attention_mask) - 1 (either padding side)"
    if model_class == LAYERWISE:
        fixed["positions"] = "cumsum(attention_mask) - 1 (either padding side)"
        fixed.update({"scale_emb": config.scale_emb, "scale_depth": config.scale_depth, "head_type": config.head_type})
    if model_class == LIGHTWEIGHT:
        fixed.update({
            "attention": "SDPA semantics of transformers 4.46 (FlagEmbedding's CostWiseGemma): no attention logit "
                         "softcapping, sliding window on even layers",
            "sliding_window": family.window,
            "final_logit_softcapping": config.final_logit_softcapping,
            "padding": "right only (compression indexes rows from position 0)",
        })
    return fixed


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="local Hugging Face checkpoint directory")
    parser.add_argument("out", type=Path, help="flagserve model directory to write")
    parser.add_argument("--fp16", action="store_true", help="also write onnx/model_fp16.onnx")
    parser.add_argument("--int8", action="store_true", help="also write onnx/model_int8.onnx (MatMulNBits, 8 bits)")
    parser.add_argument("--int4", action="store_true", help="also write onnx/model_q4.onnx (MatMulNBits, 4 bits)")
    parser.add_argument("--block-size", type=int, default=32, help="quantization block size (default 32)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT directory")
    parser.add_argument("--model-class", choices=[BASE, LAYERWISE, LIGHTWEIGHT],
                        help="default: from the directory name (FlagEmbedding's mapping), else the architecture")
    parser.add_argument("--max-layer", type=int,
                        help="layerwise / lightweight: export layers up to this one only (a smaller, faster graph)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="without FlagEmbedding installed: load the checkpoint's own modelling code")
    check = parser.add_argument_group("checks")
    check.add_argument("--atol", type=float, default=1e-5, help="fp32 check: absolute tolerance (default 1e-5)")
    check.add_argument("--rtol", type=float, default=1e-4, help="fp32 check: relative tolerance (default 1e-4)")
    check.add_argument("--check-max-length", type=int, default=48, help="max_length of the check pairs")
    check.add_argument("--fp16-min-corr", type=float, default=0.999)
    check.add_argument("--int8-min-corr", type=float, default=0.99)
    check.add_argument("--int4-min-corr", type=float, default=0.9)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    started = time.time()
    # absolute(), not resolve(): a symlink named after the hub repository keeps its name (the mapping key)
    args.src = src = args.src.absolute()
    out = args.out.absolute()
    if not (src / "config.json").is_file():
        fail(f"{src} is not a checkpoint directory (no config.json)")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        fail(f"{out} is not empty (pass --overwrite to replace it)")
    model_class = detect_class(src, json.loads((src / "config.json").read_text()), args.model_class)

    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=args.trust_remote_code)
    if not tokenizer.is_fast:
        fail("a fast tokenizer (tokenizer.json) is required")
    if tokenizer.pad_token_id is None:
        fail("the tokenizer has no pad token: FlagEmbedding's collator could not pad a batch")
    if model_class != BASE and tokenizer.bos_token_id is None:
        fail("the tokenizer has no BOS token, which the layerwise / lightweight classes prepend")
    if model_class == LIGHTWEIGHT:
        tokenizer.padding_side = "right"  # LightweightLLMReranker.__init__ does the same
    yes_ids = tokenizer("Yes", add_special_tokens=False)["input_ids"]
    yes_id = yes_ids[0]
    if len(yes_ids) != 1:
        print(f"  note: 'Yes' is {len(yes_ids)} tokens {yes_ids}; FlagEmbedding scores the first one")
    lm = load_model(src, model_class, args.trust_remote_code)
    config = lm.config
    n_bytes = sum(p.numel() * 4 for p in lm.parameters())
    print(f"{src.name}: {model_class}, {type(lm).__name__}, {config.num_hidden_layers} layers, "
          f"hidden {config.hidden_size}, {n_bytes / 1e9:.2f} GB fp32")

    layers: list[int] = []
    heads = None
    if model_class == BASE:
        module: torch.nn.Module = BaseScores(lm, yes_id)
    else:
        usable = available_layers(config, model_class)
        layers = [n for n in usable if args.max_layer is None or n <= args.max_layer]
        if not layers:
            fail(f"--max-layer {args.max_layer} leaves no layer (available: {usable})")
        heads = torch.stack(heads_of(lm, model_class)[: len(layers)]).detach().clone()
        cls = LayerwiseScores if model_class == LAYERWISE else LightweightScores
        module = cls(lm, layers, heads)
    family = module.family  # type: ignore[attr-defined]

    if out.exists():
        shutil.rmtree(out)
    (out / "onnx").mkdir(parents=True)
    write_model_files(src, out, tokenizer)
    check_tokenizer(tokenizer, out)

    def reference(feeds, ratio, at):
        if model_class == BASE:
            return reference_base(lm, feeds, yes_id)
        if model_class == LAYERWISE:
            return reference_layerwise(lm, feeds, layers, heads)
        return reference_lightweight(lm, feeds, layers, heads, ratio, at)

    n_layers = config.num_hidden_layers
    _, cases = check_cases(tokenizer, model_class, args.check_max_length, n_layers, layers)
    example = example_feeds(tokenizer, model_class, n_layers)
    fixed = fixed_settings(model_class, lm, family)
    files: dict[str, dict] = {}
    quality: dict[str, dict] = {}

    fp32 = out / "onnx" / VARIANT_FILES["fp32"]
    export(module, model_class, example, fp32)
    refs = verify_fp32(Runner(fp32, model_class), cases, reference, args.atol, args.rtol)
    files["onnx/model.onnx"] = graph_entry(model_class, "float32", layers, n_layers, lm, fixed)
    for flag, key, bits, threshold in (("int8", "int8", 8, args.int8_min_corr), ("int4", "q4", 4, args.int4_min_corr)):
        if getattr(args, flag):
            path = out / "onnx" / VARIANT_FILES[key]
            quantize(fp32, path, bits, args.block_size)
            quality[f"onnx/{path.name}"] = verify_variant(Runner(path, model_class), cases, refs, threshold)
            files[f"onnx/{path.name}"] = graph_entry(
                model_class, f"MatMulNBits {bits}-bit weights, block {args.block_size}", layers, n_layers, lm, fixed
            )
    if args.fp16:
        lm.half()  # last: the float32 weights are not needed any more
        path = out / "onnx" / VARIANT_FILES["fp16"]
        export(module, model_class, {k: v for k, v in example.items()}, path)
        quality[f"onnx/{path.name}"] = verify_variant(Runner(path, model_class), cases, refs, args.fp16_min_corr)
        files[f"onnx/{path.name}"] = graph_entry(model_class, "float16 (float32 inputs and outputs)", layers, n_layers,
                                                 lm, fixed)

    meta = build_metadata(args, model_class, lm, tokenizer, yes_id, layers, files, quality)
    (out / "flagserve.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    total = 0
    for f in sorted(out.rglob("*")):
        if f.is_file():
            total += f.stat().st_size
            print(f"  wrote {f.relative_to(out)} ({f.stat().st_size / 1e6:.3f} MB)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"done in {time.time() - started:.1f} s, {total / 1e6:.2f} MB written, peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
