#!/bin/sh
# scripts/sim-bench.sh — the simulator's scaling measurement.
#
# Usage: scripts/sim-bench.sh [--help] [--hours H] [NODES...]
#
# Builds rendertrust-sim in release mode, then runs sim/scenarios/steady.toml
# (steady Poisson load at 60 % of capacity, 4 schedulers, 20 creators, no
# churn) with the worker group set to each NODES count (default: 1000 10000
# 100000) for H simulated hours of arrivals (default 1; the run then drains
# until every job finished). For each run it prints: nodes, simulated
# seconds, events, wall seconds, CPU (user) seconds, events per wall second,
# peak resident memory (from /usr/bin/time -v), and the load average before
# the run, so a figure can be judged against how busy the machine was.
# Outputs (no plots) go to target/sim-bench/<nodes>/; figures are measured,
# never asserted in tests.
#
#   --hours H   simulated hours of arrivals (default 1)
#   --help      this text
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

hours=1
nodes=""
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --hours) [ $# -ge 2 ] || { echo "sim-bench.sh: --hours needs a value" >&2; exit 2; }; hours=$2; shift ;;
    -*) echo "sim-bench.sh: unknown option: $1 (try --help)" >&2; exit 2 ;;
    *) nodes="$nodes $1" ;;
  esac
  shift
done
[ -n "$nodes" ] || nodes="1000 10000 100000"

cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --locked --release -p rendertrust-sim
bin="$target_dir/release/rendertrust-sim"
[ -x /usr/bin/time ] || { echo "sim-bench.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
duration=$(awk "BEGIN { printf \"%d\", $hours * 3600 }")

printf '%-8s %10s %12s %9s %9s %12s %10s %8s\n' nodes sim_s events wall_s cpu_s events/s peak_MiB load
for n in $nodes; do
  out="$target_dir/sim-bench/$n"
  mkdir -p "$out"
  load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
  /usr/bin/time -v -o "$out/time.txt" "$bin" run sim/scenarios/steady.toml \
    --out "$out" --no-plots --perf "$out/perf.json" \
    --set groups.0.count="$n" --set duration_s="$duration" >"$out/run.txt" 2>&1 || {
      echo "sim-bench.sh: run with $n nodes failed; see $out/run.txt" >&2; exit 1; }
  wall=$(sed -n 's/.*"wall_s": \([0-9.]*\).*/\1/p' "$out/perf.json")
  events=$(sed -n 's/.*"events": \([0-9]*\).*/\1/p' "$out/perf.json")
  simulated=$(sed -n 's/.*"simulated_s": \([0-9.]*\).*/\1/p' "$out/perf.json")
  cpu=$(sed -n 's/.*User time (seconds): \([0-9.]*\).*/\1/p' "$out/time.txt")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$out/time.txt")
  awk -v n="$n" -v s="$simulated" -v e="$events" -v w="$wall" -v c="$cpu" -v r="$rss" -v l="$load" \
    'BEGIN { printf "%-8s %10.0f %12d %9.1f %9.1f %12.0f %10.0f %8s\n", n, s, e, w, c, e / w, r / 1024, l }'
done
