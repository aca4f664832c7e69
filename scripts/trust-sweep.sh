#!/bin/sh
# scripts/trust-sweep.sh — issue 7's measure: verification overhead against
# wrong results accepted.
#
# Usage: scripts/trust-sweep.sh [--help] [--out DIR] [--docs]
#
# Builds rendertrust-sim (release) and sweeps sim/scenarios/trust.toml over
# trust.policy (none, quorum, spot-check) × trust.reputation (a book per
# scheduler with probation for new nodes, or none) × trust.sample_permille
# (50, 100, 250, 1000) × dishonest.fraction (0.05, 0.2, 0.4): 72 small runs
# in parallel (about a minute on 2 cores). Writes DIR/trust.md (the table),
# DIR/trust.csv and DIR/trust.{svg,png} (the plot), plus one directory per
# variant. `none` ignores the rate (its four rows are the same run).
#
#   --out DIR   output directory (default target/trust-sweep)
#   --docs      also copy the plot to docs/trust-sweep.png (the table goes
#               into docs/trust-sweep.md by hand)
#   --help      this text
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

out=target/trust-sweep
docs=0
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --out) [ $# -ge 2 ] || { echo "trust-sweep.sh: --out needs a value" >&2; exit 2; }; out=$2; shift ;;
    --docs) docs=1 ;;
    *) echo "trust-sweep.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
cargo build --locked --release -p rendertrust-sim
bin="${CARGO_TARGET_DIR:-target}/release/rendertrust-sim"
"$bin" sweep sim/scenarios/trust.toml --out "$out" --set output.plots=false \
  --param trust.policy=none,quorum,spot-check \
  --param trust.reputation=true,false \
  --param trust.sample_permille=50,100,250,1000 \
  --param dishonest.fraction=0.05,0.2,0.4
echo "table: $out/trust.md, plot: $out/trust.png"
if [ "$docs" = 1 ]; then
  cp "$out/trust.png" docs/trust-sweep.png
fi
