#!/bin/sh
# scripts/deps.sh — install what RenderTrust's tests and demos need, idempotently.
#
# Usage: scripts/deps.sh [--check] [--help]
#
# Installs only what is missing. Safe to run again and again; scripts/test.sh
# runs it first. Needs only the Rust toolchain to be present already; system
# packages come from apt (as root, or through sudo when available).
#
#   --check   report what is missing, install nothing, exit 1 if anything is
#   --help    this text
#
# What it installs (and why):
#   rustfmt, clippy      the fmt and lint gates in scripts/test.sh (rustup components)
# Later issues add: blender and bubblewrap (apt) for the render and sandbox
# tests, anvil (npm package @foundry-rs/anvil-linux-amd64) for anchoring tests.
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

check_only=0
for arg in "$@"; do
  case "$arg" in
    --help|-h) usage; exit 0 ;;
    --check) check_only=1 ;;
    *) echo "deps.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

missing=""
note() { printf 'deps: %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps.sh: cargo not found: install the Rust toolchain first (https://rustup.rs)" >&2
  exit 1
fi

for comp in rustfmt clippy; do
  if ! cargo "$( [ "$comp" = rustfmt ] && echo fmt || echo clippy )" --version >/dev/null 2>&1; then
    missing="$missing $comp"
    if [ "$check_only" = 0 ] && command -v rustup >/dev/null 2>&1; then
      note "installing rustup component $comp"
      rustup component add "$comp"
    fi
  fi
done

if [ "$check_only" = 1 ] && [ -n "$missing" ]; then
  note "missing:$missing"
  exit 1
fi
note "all dependencies present"
