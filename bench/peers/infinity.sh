#!/usr/bin/env bash
# Start the peer server infinity-emb (ONNX "optimum" engine, CPU, fp32 graph) in the
# foreground, so a benchmark can spawn it, wait until it is ready, and kill it.
#
#   bash bench/peers/infinity.sh MODEL_DIR [PORT] [extra infinity_emb v2 args...]
#
# MODEL_DIR: a flagserve-style model folder (config.json, tokenizer files, onnx/model.onnx
# or model.onnx). It is never written to: a copy is laid out under $INFINITY_WORKDIR.
#
# Readiness: GET http://127.0.0.1:PORT/health returns 200 ({"unix": ...}) once the
# model is loaded and warmed up; before that the port refuses connections (uvicorn
# binds only after the app's startup finished). Startup is ~20 s on 2 cores, most of
# it infinity's warm-up (batch of 32 x 512 tokens).
# Requests: POST http://127.0.0.1:PORT/embeddings
#   {"model": "<served name>", "input": ["..."]}   (OpenAI-style response)
# The served name is $INFINITY_SERVED_MODEL_NAME, default: basename of MODEL_DIR.
# Stop: SIGTERM/SIGINT to this script's PID (exec'd into the server), ~2-3 s to exit.
#
# Environment:
#   INFINITY_VENV        venv to use/create (default ~/.cache/flagserve-bench/infinity-venv)
#   INFINITY_WORKDIR     model copy + HF cache (default ~/.cache/flagserve-bench/infinity)
#   INFINITY_ONNX_FILE   ONNX file inside MODEL_DIR (default onnx/model.onnx, else model.onnx)
#   INFINITY_SERVED_MODEL_NAME, INFINITY_POOLING_METHOD (default mean)
#   PYTHON               interpreter for creating the venv (default python3; 3.9-3.13)
#   Other INFINITY_* variables are read by infinity itself, e.g. INFINITY_BATCH_SIZE
#   (default 32), INFINITY_QUEUE_SIZE (32000), INFINITY_LOG_LEVEL (info),
#   INFINITY_MODEL_WARMUP (true).
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: bash $0 MODEL_DIR [PORT] [extra infinity_emb v2 args...]" >&2
  exit 2
fi
MODEL_DIR=$(cd "$1" && pwd -P)
PORT=${2:-7997}
shift
if [ $# -gt 0 ]; then shift; fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REQ="$HERE/requirements-infinity.txt"
VENV=${INFINITY_VENV:-$HOME/.cache/flagserve-bench/infinity-venv}
WORKDIR=${INFINITY_WORKDIR:-$HOME/.cache/flagserve-bench/infinity}
PY=${PYTHON:-python3}

# Offline only: infinity must never reach the Hugging Face hub, and no telemetry.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export DO_NOT_TRACK=1 INFINITY_ANONYMOUS_USAGE_STATS=0
export HF_HOME="$WORKDIR/hf-home"

log() { echo "[infinity.sh] $*" >&2; }

# 1. venv, (re)installed when requirements-infinity.txt changes.
req_hash=$(sha256sum "$REQ" | cut -d' ' -f1)
stamp="$VENV/.flagserve-requirements.sha256"
if [ ! -x "$VENV/bin/infinity_emb" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$req_hash" ]; then
  log "installing infinity into $VENV (first time: ~6 GB, a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -r "$REQ" >&2
  echo "$req_hash" >"$stamp"
fi

# 2. Model layout. infinity 0.0.78 passes the ONNX path it globbed (model_id/...) as
# optimum's `file_name`, which optimum-onnx 0.1.0 compares with bare file names, so any
# model_id other than "." with the .onnx at the top level fails to load. We therefore
# copy the model into a flat folder (model.onnx at its root), cd there and serve
# `--model-id .`. Copies, not symlinks: nothing must write through into MODEL_DIR.
# Only the fp32 graph is copied, so infinity cannot pick a quantized file (on CPU it
# prefers *quantize* files unless --onnx-do-not-prefer-quantized, which we pass too).
if [ -n "${INFINITY_ONNX_FILE:-}" ]; then
  onnx="$MODEL_DIR/$INFINITY_ONNX_FILE"
elif [ -f "$MODEL_DIR/onnx/model.onnx" ]; then
  onnx="$MODEL_DIR/onnx/model.onnx"
else
  onnx="$MODEL_DIR/model.onnx"
fi
[ -f "$onnx" ] || { log "no ONNX file at $onnx"; exit 1; }
name=$(basename "$MODEL_DIR")
key=$( (echo "$MODEL_DIR $onnx"; stat -c '%s %Y' "$onnx") | sha256sum | cut -c1-12)
LAYOUT="$WORKDIR/models/$name-$key"
if [ ! -f "$LAYOUT/.complete" ]; then
  log "preparing model layout in $LAYOUT"
  rm -rf "$LAYOUT"
  mkdir -p "$LAYOUT"
  for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json \
    vocab.txt sentencepiece.bpe.model spiece.model added_tokens.json modules.json \
    sentence_bert_config.json config_sentence_transformers.json; do
    if [ -f "$MODEL_DIR/$f" ]; then cp "$MODEL_DIR/$f" "$LAYOUT/$f"; fi
  done
  if [ -d "$MODEL_DIR/1_Pooling" ]; then cp -r "$MODEL_DIR/1_Pooling" "$LAYOUT/"; fi
  cp "$onnx" "$LAYOUT/model.onnx"
  # external weights (model.onnx_data / model.onnx.data), referenced by name
  for ext in "${onnx}_data" "${onnx%.onnx}.onnx.data"; do
    if [ -f "$ext" ]; then cp "$ext" "$LAYOUT/"; fi
  done
  touch "$LAYOUT/.complete"
fi

# 3. Serve. --onnx-disable-optimize: infinity's own offline ORTOptimizer pass (fusions,
# "optimization_level=99", cached as *_optimized.onnx under $HF_HOME) fails with
# optimum-onnx 0.1.0 anyway and falls back to the plain graph; disabling it makes that
# explicit. onnxruntime still applies its default session-time graph optimizations
# (ORT_ENABLE_ALL, intra-op threads = physical cores), as flagserve does.
cd "$LAYOUT"
exec "$VENV/bin/infinity_emb" v2 \
  --model-id . \
  --served-model-name "${INFINITY_SERVED_MODEL_NAME:-$name}" \
  --engine optimum \
  --device cpu \
  --pooling-method "${INFINITY_POOLING_METHOD:-mean}" \
  --onnx-do-not-prefer-quantized \
  --onnx-disable-optimize \
  --no-vector-disk-cache \
  --host 127.0.0.1 \
  --port "$PORT" \
  "$@"
