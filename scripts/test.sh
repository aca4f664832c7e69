#!/bin/sh
# scripts/test.sh — the whole RenderTrust test suite, as CI runs it.
#
# Usage: scripts/test.sh [--quick] [--help]
#
# Steps, in order; the first failure stops the run:
#   1. scripts/deps.sh         install whatever the tests need (idempotent)
#   2. cargo fmt --check       formatting
#   3. cargo clippy -D warnings  lints on every crate and target
#   4. sans-IO check           rendertrust-protocol must not depend on tokio,
#                              sled or the libp2p swarm
#   4b. contract check         node/contracts/Anchor.json matches a fresh compile
#                              of Anchor.sol (scripts/build-contract.sh --check;
#                              skipped without npm)
#   5. cargo build --bins      the binaries the multi-process tests start
#   6. cargo test --workspace  unit, property, fuzz-corpus replay and
#                              multi-process tests
#
# Steps 3, 5 and 6 build with the rendertrust-node feature
# dishonest-test-hooks (tests/trust.rs starts cheating workers with
# `node start --dishonest`), all with the same features so the node is
# compiled once. It is a debug-only feature: release builds refuse it.
#
#   --quick   skip step 3 (clippy) for a faster local loop
#   --help    this text
#
# Environment: CARGO_TARGET_DIR and RUST_LOG are honoured. CI runs this script
# from .ci/run on a fresh clone. CARGO_INCREMENTAL defaults to 0 here: a
# one-shot build gains nothing from incremental state and it doubles the size
# of target/ (set CARGO_INCREMENTAL=1 for a local edit-test loop).
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

quick=0
for arg in "$@"; do
  case "$arg" in
    --help|-h) usage; exit 0 ;;
    --quick) quick=1 ;;
    *) echo "test.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Test-only dishonest workers (node/src/jobs/dishonest.rs), debug builds only.
features="--features rendertrust-node/dishonest-test-hooks"
step() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)

step "dependencies"
scripts/deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

if [ "$quick" = 0 ]; then
  step "cargo clippy (-D warnings)"
  cargo clippy --workspace --all-targets --locked $features -- -D warnings
fi

step "sans-IO check: rendertrust-protocol"
tree=$(cargo tree -p rendertrust-protocol -e normal,build --prefix none --locked)
bad=$(printf '%s\n' "$tree" | grep -E '^(tokio|sled|libp2p-swarm|mio|async-std) ' || true)
if [ -n "$bad" ]; then
  echo "rendertrust-protocol must stay sans-IO, but depends on:" >&2
  printf '%s\n' "$bad" | sort -u >&2
  exit 1
fi
echo "ok: no tokio, sled, mio or libp2p-swarm under rendertrust-protocol"

step "anchor contract artifact matches node/contracts/Anchor.sol"
if command -v npm >/dev/null 2>&1; then
  scripts/build-contract.sh --check
else
  echo "skipped: npm not found (scripts/build-contract.sh needs it for solcjs)"
fi

step "cargo build --workspace --bins (the multi-process tests start them)"
cargo build --workspace --bins --locked $features

step "cargo test --workspace"
cargo test --workspace --locked $features

printf '\nscripts/test.sh: all steps passed in %ss\n' "$(( $(date +%s) - start ))"
