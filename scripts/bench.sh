#!/bin/sh
# scripts/bench.sh — run RenderTrust's criterion benches and print one table.
#
# Usage: scripts/bench.sh [--quick] [--no-run] [--help] [FILTER]
#
# Runs `cargo bench` for every crate with a hot path, then reads criterion's
# results (target/criterion/*/*/new/) and prints, per benchmark: time per
# iteration, throughput, the issue's target, and the ratio to the raw
# primitive it wraps (e.g. signed-receipt batch verify vs raw ed25519 batch
# verify), so a figure can be judged on this machine's own speed.
#
#   --quick    shorter measurement (criterion --warm-up-time 1 --measurement-time 3)
#   --no-run   print the table from the last run only
#   FILTER     criterion name filter, e.g. `merkle`
#   --help     this text
#
# Benches are single-threaded. Close other work for stable figures; these
# numbers are measured, never asserted in tests.
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

quick=0; run=1; filter=""
for arg in "$@"; do
  case "$arg" in
    --help|-h) usage; exit 0 ;;
    --quick) quick=1 ;;
    --no-run) run=0 ;;
    -*) echo "bench.sh: unknown option: $arg (try --help)" >&2; exit 2 ;;
    *) filter="$arg" ;;
  esac
done

cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
crit="$target_dir/criterion"

if [ "$run" = 1 ]; then
  set -- 
  [ "$quick" = 1 ] && set -- --warm-up-time 1 --measurement-time 3
  # shellcheck disable=SC2086
  cargo bench --locked -p rendertrust-protocol --bench protocol -- "$@" $filter
  # shellcheck disable=SC2086
  cargo bench --locked -p rendertrust-node --bench ledger_store -- "$@" $filter
  # shellcheck disable=SC2086
  cargo bench --locked -p rendertrust-node --bench content -- "$@" $filter
  # shellcheck disable=SC2086
  cargo bench --locked -p rendertrust-node --bench builtin -- "$@" $filter
fi

[ -d "$crit" ] || { echo "bench.sh: no criterion results in $crit" >&2; exit 1; }

# One line per benchmark: id, mean ns/iter, throughput kind, amount per iter.
rows=$(find "$crit" -path '*/new/estimates.json' | sort | while read -r est; do
  dir=$(dirname "$(dirname "$est")")
  id=${dir#"$crit"/}
  mean=$(tr -d '\n ' < "$est" | sed 's/.*"mean":{[^}]*}[^}]*"point_estimate":\([0-9.e+-]*\).*/\1/')
  bj="$(dirname "$est")/benchmark.json"
  tp=$(tr -d '\n ' < "$bj" | sed -n 's/.*"throughput":{"\([A-Za-z]*\)":\([0-9]*\)}.*/\1 \2/p')
  [ -n "$tp" ] || tp="None 0"
  printf '%s %s %s\n' "$id" "$mean" "$tp"
done)

printf '%s\n' "$rows" | awk '
function human_time(ns) {
  if (ns >= 1e9) return sprintf("%.3f s", ns / 1e9)
  if (ns >= 1e6) return sprintf("%.2f ms", ns / 1e6)
  if (ns >= 1e3) return sprintf("%.2f µs", ns / 1e3)
  return sprintf("%.0f ns", ns)
}
function human_tp(kind, n, ns) {
  if (kind == "Bytes" || kind == "BytesDecimal") return sprintf("%.2f GB/s", n / ns)
  if (kind == "Elements") return sprintf("%.1fk/s", n / ns * 1e6)
  return "-"
}
{ id[NR] = $1; ns[$1] = $2; kind[$1] = $3; amt[$1] = $4; rate[$1] = ($4 > 0 ? $4 / $2 : 1 / $2) }
END {
  # what each figure is compared with, and the issue target
  raw["receipts/verify_batch_1024"] = "raw/ed25519_verify_batch_1024"; tgt["receipts/verify_batch_1024"] = ">= 60k/s"
  raw["receipts/verify_single"] = "raw/ed25519_verify_single"; tgt["receipts/verify_single"] = "-"
  raw["seal/seal_chunks_8MiB"] = "raw/xchacha20poly1305_8MiB"; tgt["seal/seal_chunks_8MiB"] = ">= 1.2 GB/s"
  raw["seal/open_chunks_8MiB"] = "raw/xchacha20poly1305_8MiB"; tgt["seal/open_chunks_8MiB"] = ">= 1.2 GB/s"
  raw["seal/seal_8MiB"] = "raw/xchacha20poly1305_8MiB"; tgt["seal/seal_8MiB"] = "(via io)"
  raw["seal/open_8MiB"] = "raw/xchacha20poly1305_8MiB"; tgt["seal/open_8MiB"] = "(via io)"
  raw["content/manifest_8MiB"] = "raw/blake3_8MiB"; tgt["content/manifest_8MiB"] = ">= 4 GB/s"
  tgt["merkle/root_1M"] = "< 1 s"; tgt["merkle/proof_verify_1M"] = "< 20 µs"
  tgt["scheduler/place_1000_of_10k_nodes"] = ">= 50k/s"; tgt["scheduler/place_1000_of_10k_nodes_any"] = ">= 50k/s"
  # a receipt carries two signatures: at the raw ceiling the ratio is 0.5
  raw["ledger/ingest_settle_1024"] = "raw/ed25519_verify_batch_1024"; tgt["ledger/ingest_settle_1024"] = ">= 20k/s"
  raw["ledger_store/ingest_settle_1024"] = "raw/ed25519_verify_batch_1024"; tgt["ledger_store/ingest_settle_1024"] = ">= 20k/s"
  tgt["rollup/proof_verify_1M"] = "< 20 µs"
  printf "%-34s %12s %14s %12s  %s\n", "benchmark", "time/iter", "throughput", "target", "ratio to raw"
  printf "%-34s %12s %14s %12s  %s\n", "---------", "---------", "----------", "------", "------------"
  for (i = 1; i <= NR; i++) {
    b = id[i]
    r = "-"
    if ((b in raw) && (raw[b] in rate)) r = sprintf("%.2f (vs %s)", rate[b] / rate[raw[b]], raw[b])
    t = (b in tgt) ? tgt[b] : "-"
    printf "%-34s %12s %14s %12s  %s\n", b, human_time(ns[b]), human_tp(kind[b], amt[b], ns[b]), t, r
  }
}'
