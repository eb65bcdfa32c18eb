#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), two at a time, and
# prints libFuzzer's final stats. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Not part of the test command: fuzzing is run
# by hand and its figures go in the closing note of the issue that asks.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH="${1:-600}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outrider/fuzz-target}"
OUT="${FUZZ_OUT:-/tmp/outrider-fuzz}"
mkdir -p "$OUT"
cargo +nightly fuzz build -O --sanitizer none
run() {
  local t=$1
  mkdir -p "corpus/$t"
  cargo +nightly fuzz run -O --sanitizer none "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -print_final_stats=1 -max_len=4096 >"$OUT/$t.log" 2>&1 || true
  echo "== $t"; grep -E "stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|panicked|deadly signal" "$OUT/$t.log" || true
}
targets=(http_response journal_record publish filter template)
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" &
  if ((i + 1 < ${#targets[@]})); then run "${targets[i + 1]}" & fi
  wait
done
