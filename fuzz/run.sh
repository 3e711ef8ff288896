#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS (default 30) from its seeds, one after the
# other, niced; exits non-zero if any target crashed (panic, abort, timeout or out of memory).
#
#   fuzz/run.sh [SECONDS] [TARGET...]      (every target when none is named)
#
# FUZZ_SEED=N fixes libFuzzer's seed (CI sets it, so its run is the same every time; left
# unset, each run explores anew).
#
# Needs a nightly toolchain and cargo-fuzz (CI's fuzz step installs both when missing). Builds go
# to $FUZZ_TARGET_DIR (default ~/.cache/model-runner-fuzz-target), outside the clone. Each target
# reads corpus-seeds/TARGET/ (kept in git) and writes what it finds to corpus/TARGET/ and a
# crashing input to artifacts/TARGET/ (both git-ignored); reproduce one with
# `cargo +nightly fuzz run -s none TARGET artifacts/TARGET/crash-...`.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-30}"
shift || true
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/model-runner-fuzz-target}"
# No sanitizer: the crates forbid unsafe code, and what fuzzing looks for here is panics,
# aborts, hangs and memory blow-ups, which libFuzzer catches without one at twice the speed.
flags=(-s none)

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
nice -n 19 cargo +nightly fuzz build "${flags[@]}"

failed=()
for t in "${targets[@]}"; do
  printf '\n--- fuzz %s for %ss ---\n' "$t" "$seconds"
  mkdir -p "corpus/$t"
  if ! nice -n 19 cargo +nightly fuzz run "${flags[@]}" "$t" "corpus/$t" "corpus-seeds/$t" -- \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    ${FUZZ_SEED:+-seed="$FUZZ_SEED"}; then
    failed+=("$t")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each, no crash"
