#!/usr/bin/env bash
# ethereum-etl 2.4.2 extract_token_transfers against model-runner on the same generated
# ethereum-etl export (see README.md).
#
#   bench/peers/ethereum-etl/run.sh [--logs 200000] [--seed 1] [--logs-per-block 300]
#                                   [--repeat 3] [--chunk-size 100]
#
# MODEL_RUNNER_BIN: the model-runner binary to measure. Unset: built here with
#   cargo build --release -p model-runner   (into CARGO_TARGET_DIR, default the workspace's target/).
#   MODEL_RUNNER_BIN=none measures ethereum-etl alone.
# PYTHON310: the Python 3.10 for ethereum-etl's virtual environment (default: pyenv's 3.10.*,
#   else python3.10 on PATH).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../lib.sh
source "$here/../lib.sh"

logs=200000 seed=1 per_block=300 repeat=3 chunk=100
while [ $# -gt 0 ]; do
    case "$1" in
        --logs) logs="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --logs-per-block) per_block="$2"; shift 2 ;;
        --repeat) repeat="$2"; shift 2 ;;
        --chunk-size) chunk="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

python310="${PYTHON310:-}"
if [ -z "$python310" ]; then
    python310="$(printf '%s\n' "$HOME"/.pyenv/versions/3.10.*/bin/python | sort -V | tail -1)"
    [ -x "$python310" ] || python310=""
    [ -n "$python310" ] || python310="$(command -v python3.10 || true)"
fi
[ -n "$python310" ] || die "ethereum-etl 2.4.2 needs Python 3.10: install it (e.g. pyenv install 3.10) or set PYTHON310"
venv="$(ensure_venv ethereum-etl "$python310" "$here/requirements.txt")"

runner="${MODEL_RUNNER_BIN:-}"
if [ -z "$runner" ]; then
    command -v cargo >/dev/null || die "no cargo to build model-runner: set MODEL_RUNNER_BIN"
    repo="$(cd "$here/../../.." && pwd)"
    echo "building model-runner (cargo build --release -p model-runner)" >&2
    (cd "$repo" && cargo build --release --quiet -p model-runner) >&2
    runner="${CARGO_TARGET_DIR:-$repo/target}/release/model-runner"
elif [ "$runner" = none ]; then
    runner=""
fi
[ -z "$runner" ] || [ -x "$runner" ] || die "MODEL_RUNNER_BIN=$runner is not an executable"

work="$(mktemp -d "${TMPDIR:-/tmp}/peers-etl.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(uname -sr); $(date -u +%Y-%m-%dT%H:%M:%SZ); load $(load)"
echo "generating: generate_logs.py --logs $logs --seed $seed --logs-per-block $per_block"
"$venv/bin/python" "$here/generate_logs.py" --logs "$logs" --seed "$seed" --logs-per-block "$per_block" \
    --out "$work/data" >/dev/null
"$venv/bin/python" "$here/bench.py" --etl-bin "$venv/bin/ethereumetl" ${runner:+--runner-bin "$runner"} \
    --data "$work/data" --workdir "$work" --repeat "$repeat" --chunk-size "$chunk"
