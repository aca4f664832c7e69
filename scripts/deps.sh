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
#   bubblewrap (bwrap)   the sandbox of `process` and `blender` tasks (apt)
#   util-linux (prlimit) memory/CPU/file-size limits of sandboxed tasks (apt)
#   blender              the `blender` runtime and its tests (apt; large, ~1 GB
#                        with dependencies, so only when missing)
# Later issues add: anvil (npm package @foundry-rs/anvil-linux-amd64) for
# anchoring tests.
#
# System packages need apt-get and either root or sudo. Without them, what is
# missing is reported and skipped: the tests that need it then print a loud
# SKIPPED outside CI, and fail in CI (the CI environment variable is set).
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

# System packages: command -> apt package.
apt_missing=""
for pair in bwrap:bubblewrap prlimit:util-linux blender:blender; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1; then
    missing="$missing $cmd"
    apt_missing="$apt_missing $pkg"
  fi
done

if [ "$check_only" = 1 ]; then
  if [ -n "$missing" ]; then
    note "missing:$missing"
    exit 1
  fi
  note "all dependencies present"
  exit 0
fi

if [ -n "$apt_missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    sudo=""
  elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    sudo="none"
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    note "apt-get not available: install these yourself:$apt_missing (skipping)"
  elif [ "$sudo" = none ]; then
    note "not root and no sudo: install these yourself:$apt_missing (skipping)"
  else
    note "installing from apt:$apt_missing"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $apt_missing
  fi
fi

# What is still missing after installing.
missing=""
for comp in rustfmt clippy; do
  cargo "$( [ "$comp" = rustfmt ] && echo fmt || echo clippy )" --version >/dev/null 2>&1 || missing="$missing $comp"
done
for cmd in bwrap prlimit blender; do
  command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
  note "still missing:$missing; tests that need them skip loudly (and fail in CI)"
  exit 0
fi
note "all dependencies present"
