#!/bin/sh
# scripts/anvil.sh — start a local EVM chain (anvil) for the anchor backend.
#
# Usage: scripts/anvil.sh [--port PORT] [--help] [-- ANVIL-ARGS...]
#
# Runs anvil on 127.0.0.1:PORT (default 8545) in the foreground; Ctrl-C stops
# it. Its first funded account has the well-known development key
#   0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
# (never use it on a real chain). Then, for example:
#   echo 0xac09...ff80 > dev.key
#   rendertrust ledger deploy-contract --rpc-url http://127.0.0.1:8545 --key-file dev.key
#
# The binary is RENDERTRUST_ANVIL if set, else .tools/node_modules/.bin/anvil
# (installed by scripts/deps.sh), else anvil on PATH.
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

port=8545
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --port) [ $# -ge 2 ] || { echo "anvil.sh: --port needs a value" >&2; exit 2; }; port=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "anvil.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${RENDERTRUST_ANVIL:-}" ]; then
  anvil=$RENDERTRUST_ANVIL
elif [ -x "$root/.tools/node_modules/.bin/anvil" ]; then
  anvil=$root/.tools/node_modules/.bin/anvil
elif command -v anvil >/dev/null 2>&1; then
  anvil=$(command -v anvil)
else
  echo "anvil.sh: anvil not found: run scripts/deps.sh (or set RENDERTRUST_ANVIL)" >&2
  exit 1
fi
exec "$anvil" --host 127.0.0.1 --port "$port" "$@"
