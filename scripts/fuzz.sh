#!/bin/sh
# scripts/fuzz.sh — run every cargo-fuzz target (or the named ones) for N seconds each.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]      (default: 60 seconds, all targets)
#        scripts/fuzz.sh --list | --help
#
# Targets live in fuzz/fuzz_targets/ and call rendertrust_protocol::fuzz::*, one
# per decoder of peer input. Seeds (valid messages) are in fuzz/seeds/<target>/;
# what a run discovers goes to fuzz/corpus/<target>/ (not committed), crashes to
# fuzz/artifacts/<target>/. `cargo test` replays seeds and corpus on stable.
#
# cargo-fuzz needs nightly flags; on a stable toolchain this script sets
# RUSTC_BOOTSTRAP=1, which lets stable rustc accept them (-Zsanitizer=address).
# cargo-fuzz is installed into .tools/ from crates.io when missing.
# Prints a summary line per target: runs executed, corpus size, result.
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

cd "$(dirname "$0")/.."
secs=60
targets=""
for arg in "$@"; do
  case "$arg" in
    --help|-h) usage; exit 0 ;;
    --list) ls fuzz/fuzz_targets | sed 's/\.rs$//'; exit 0 ;;
    ''|*[!0-9]*) targets="$targets $arg" ;;
    *) secs=$arg ;;
  esac
done
[ -n "$targets" ] || targets=$(ls fuzz/fuzz_targets | sed 's/\.rs$//')

PATH="$PWD/.tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz into .tools/ (one time)"
  cargo install --locked cargo-fuzz --root .tools
fi
export RUSTC_BOOTSTRAP=1
cargo run --quiet --locked -p rendertrust-protocol --example fuzz_seeds -- fuzz/seeds

status=0
summary=""
for t in $targets; do
  [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "fuzz.sh: no such target: $t (try --list)" >&2; exit 2; }
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t" "fuzz/regressions/$t"
  log="fuzz/artifacts/$t.log"
  mkdir -p fuzz/artifacts
  echo "==> $t for ${secs}s"
  if (cd fuzz && cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -max_len=1100000 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    result=ok
  else
    result="FAILED (see $log and fuzz/artifacts/$t/)"
    status=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  size=$(ls "fuzz/corpus/$t" | wc -l | tr -d ' ')
  line=$(printf '%-16s %6ss %12s runs %6s corpus  %s' "$t" "$secs" "${runs:-?}" "$size" "$result")
  echo "$line"
  summary="$summary
$line"
done
printf '\nfuzz summary:%s\n' "$summary"
exit $status
