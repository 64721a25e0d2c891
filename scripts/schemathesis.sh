#!/usr/bin/env bash
# Schema fuzzing: the OpenAPI document is a contract, and schemathesis holds the server to it.
# Two real servers on loopback serve the fixture models (an embedder, BGE-M3, a cross-encoder):
#   keyed: --api-key; requests carry the key, every check (missing or wrong keys must get 401);
#   open:  no key; requests carry none, every check but the authentication ones, which cannot
#          hold on a server that asks for no key (ignored_auth, and missing_required_header: the
#          only required header is Authorization), and no Authorization header is generated.
# Each run covers every operation (coverage, fuzzing and stateful phases), continues after
# failures and is bounded in time. Exits non-zero on any failure: a 5xx, a status, header or body
# the document does not declare, valid data refused or invalid data accepted, a wrong answer to
# an undeclared method. Operations where a check cannot hold, and why: scripts/schemathesis.toml.
#
#   bash scripts/schemathesis.sh             # st from PATH, ST=/path/to/st, or .cache/schemathesis-venv
#   ST_SEED=1 ST_MAX_TIME=30 ST_RANDOM_TIME=0 bash scripts/schemathesis.sh
# ST_MAX_TIME (75): seconds per server with the fixed seed ST_SEED, which reproduces a failure;
# ST_RANDOM_TIME (40): seconds per server with a random seed (printed), 0 for none;
# ST_OPTIONAL=1: exit 0 when schemathesis is not installed and ST is not set (npm test sets it);
# ST_PORT (18110): the keyed server's port, the open one's is the next.
set -euo pipefail
cd "$(dirname "$0")/.."

ST=${ST:-}
given=$ST
if [ -z "$ST" ]; then
  if command -v st >/dev/null 2>&1; then ST=st; else ST=.cache/schemathesis-venv/bin/st; fi
fi
if ! command -v "$ST" >/dev/null 2>&1; then
  echo "schemathesis.sh: no schemathesis at $ST; python3 -m venv .cache/schemathesis-venv &&" \
    ".cache/schemathesis-venv/bin/pip install -r scripts/schemathesis-requirements.txt" >&2
  # Optional (npm test on a machine without it), unless ST names it (CI).
  if [ -n "${ST_OPTIONAL:-}" ] && [ -z "$given" ]; then
    echo "schemathesis.sh: skipping the schema fuzzer (.ci/run installs it)" >&2
    exit 0
  fi
  exit 2
fi
PORT=${ST_PORT:-18110}
MAX_TIME=${ST_MAX_TIME:-75}
RANDOM_TIME=${ST_RANDOM_TIME:-40}
SEED=${ST_SEED:-20261129}
KEY="st-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"

work=$(mktemp -d "${TMPDIR:-/tmp}/flagserve-st.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The model mapping knows models by directory name: name the fixtures as the models they stand for.
fixtures="$PWD/test/fixtures/models"
ln -s "$fixtures/tiny-bge" "$work/bge-small-en-v1.5"
ln -s "$fixtures/tiny-m3" "$work/bge-m3"
ln -s "$fixtures/tiny-reranker-bert" "$work/jina-reranker-v1-turbo-en"

serve() { # port, extra flags...
  local port=$1
  shift
  # Job data in the run's own directory, not the user's (~/.local/share/flagserve/jobs).
  node --import tsx src/cli.ts serve --host 127.0.0.1 --port "$port" --log-level warn \
    --results-dir "$work/jobs-$port" --model "$work/bge-small-en-v1.5=bge" --model "$work/bge-m3=bge-m3" \
    --model "$work/jina-reranker-v1-turbo-en=rerank" "$@" >"$work/server-$port.log" 2>&1 &
  pids+=("$!")
}

ready() { # port: /ready answers 200 (models loaded and warmed)
  local probe="fetch('http://127.0.0.1:$1/ready').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"
  for _ in $(seq 1 120); do
    if node -e "$probe" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "schemathesis.sh: the server on port $1 did not get ready; its log:" >&2
  cat "$work/server-$1.log" >&2
  return 1
}

serve "$PORT" --api-key "$KEY"
serve "$((PORT + 1))"
ready "$PORT"
ready "$((PORT + 1))"

failed=0
fuzz() { # name, port, seed, seconds, st options...
  local name=$1 port=$2 seed=$3 seconds=$4
  shift 4
  echo "=== schemathesis: $name server, seed $seed, at most ${seconds}s"
  # Every check is on by default; `--checks all` would also override the config's per-operation
  # exceptions, so checks are only ever excluded here.
  if ! "$ST" --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
    --continue-on-failure --max-time "$seconds" --seed "$seed" \
    --generation-database none --no-color "$@"; then
    failed=1
    echo "=== schemathesis: the $name server failed with seed $seed (ST_SEED=$seed reproduces it); its log:" >&2
    tail -n 50 "$work/server-$port.log" >&2
  fi
}

passes=("$SEED:$MAX_TIME")
if [ "$RANDOM_TIME" -gt 0 ]; then passes+=("$((RANDOM * 32768 + RANDOM)):$RANDOM_TIME"); fi
for pass in "${passes[@]}"; do
  seed=${pass%%:*}
  seconds=${pass##*:}
  fuzz keyed "$PORT" "$seed" "$seconds" -H "Authorization: Bearer $KEY"
  fuzz open "$((PORT + 1))" "$seed" "$seconds" --exclude-checks ignored_auth,missing_required_header \
    --generation-with-security-parameters false
done
exit "$failed"
