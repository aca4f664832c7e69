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
#   anvil                a local EVM chain for the anchor tests (node/tests/anchor_evm.rs):
#                        npm package @foundry-rs/anvil-linux-amd64, pinned, into the
#                        git-ignored .tools/ (binary: .tools/node_modules/.bin/anvil,
#                        printed at the end; scripts/anvil.sh starts it). Needs npm
#                        (installed from apt if missing). Linux x86-64 only; elsewhere
#                        install foundry and set RENDERTRUST_ANVIL=/path/to/anvil.
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

if [ "$(id -u)" = 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1; then
  sudo="sudo"
else
  sudo="none"
fi
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    note "apt-get not available: install these yourself: $* (skipping)"
    return 1
  elif [ "$sudo" = none ]; then
    note "not root and no sudo: install these yourself: $* (skipping)"
    return 1
  fi
  note "installing from apt: $*"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  # shellcheck disable=SC2086
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

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
if [ "$check_only" = 0 ] && [ -n "$apt_missing" ]; then
  # shellcheck disable=SC2086
  apt_install $apt_missing || true
fi

# anvil, from npm into .tools/ (the tests look there first).
ANVIL_VERSION=1.7.1
root=$(cd "$(dirname "$0")/.." && pwd)
anvil="$root/.tools/node_modules/.bin/anvil"
if [ -n "${RENDERTRUST_ANVIL:-}" ]; then
  note "anvil: using RENDERTRUST_ANVIL=$RENDERTRUST_ANVIL"
elif [ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]; then
  note "anvil: no npm package for $(uname -s)-$(uname -m); install foundry and set RENDERTRUST_ANVIL (the EVM anchor tests skip without it)"
elif "$anvil" --version 2>/dev/null | grep -q "Version: $ANVIL_VERSION"; then
  :
else
  missing="$missing anvil"
  if [ "$check_only" = 0 ]; then
    if ! command -v npm >/dev/null 2>&1; then
      apt_install npm ||
        { echo "deps.sh: npm not found and could not be installed: install Node.js and npm" >&2; exit 1; }
    fi
    note "installing anvil $ANVIL_VERSION (npm @foundry-rs/anvil-linux-amd64) into .tools/"
    mkdir -p "$root/.tools"
    npm install --prefix "$root/.tools" --save-exact --no-audit --no-fund --loglevel=error \
      "@foundry-rs/anvil-linux-amd64@$ANVIL_VERSION"
    "$anvil" --version >/dev/null
  fi
fi

if [ "$check_only" = 1 ]; then
  if [ -n "$missing" ]; then
    note "missing:$missing"
    exit 1
  fi
  note "all dependencies present"
  exit 0
fi

# What is still missing after installing.
missing=""
for comp in rustfmt clippy; do
  cargo "$( [ "$comp" = rustfmt ] && echo fmt || echo clippy )" --version >/dev/null 2>&1 || missing="$missing $comp"
done
for cmd in bwrap prlimit blender; do
  command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ -x "$anvil" ]; then note "anvil: $anvil"; elif [ -z "${RENDERTRUST_ANVIL:-}" ]; then missing="$missing anvil"; fi
if [ -n "$missing" ]; then
  note "still missing:$missing; tests that need them skip loudly (and fail in CI)"
  exit 0
fi
note "all dependencies present"
