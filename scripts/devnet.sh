#!/bin/sh
# scripts/devnet.sh — build RenderTrust and run a whole mesh on loopback.
#
# Usage: scripts/devnet.sh [--nodes N] [--dir DIR] [--demo] [--help]
#
# Builds the release binaries (rendertrust, rendertrust-bootstrap), then runs
# `rendertrust devnet`: one bootstrap peer and N nodes (default 4) as child
# processes with their own data dirs under DIR (default ./devnet) and free
# loopback ports. Each node's API URL is printed; Ctrl-C stops them all.
#
#   --demo   also submit a builtin render job from a node that is not a
#            scheduler, show its progress, fetch and verify the frames into
#            DIR/frames, then stop (the README's main command)
#
# Needs only the Rust toolchain. Every option of `rendertrust devnet --help`
# is passed through.
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
case "${1:-}" in --help|-h) usage; exit 0 ;; esac

cd "$(dirname "$0")/.."
cargo build --release --locked -p rendertrust-node -p rendertrust-bootstrap
exec "${CARGO_TARGET_DIR:-target}/release/rendertrust" devnet "$@"
