#!/bin/sh
# scripts/build-contract.sh — compile node/contracts/Anchor.sol into the
# committed artifact node/contracts/Anchor.json (ABI, init code, runtime code).
#
# Usage: scripts/build-contract.sh [--check] [--help]
#
# A normal build of RenderTrust needs none of this: the artifact is committed,
# and node/src/anchor/evm.rs reads it at compile time (alloy's `sol!`). Run
# this after editing Anchor.sol, and commit both files together.
#
#   --check   compile into a temporary dir and compare with the committed
#             artifact; exit 1 if they differ (nothing is written)
#   --help    this text
#
# The compiler is solcjs (the npm package `solc`, Solidity compiled to wasm),
# pinned below, installed with npm into the git-ignored .tools/ (needs node and
# npm; only the npm registry is contacted). Settings: optimizer on (200 runs),
# EVM version shanghai (no opcode newer than PUSH0, so the contract deploys on
# any current EVM chain), default metadata (the IPFS hash of the metadata is
# part of the bytecode, so the bytecode pins the exact source).
set -eu

SOLC_VERSION=0.8.37
EVM_VERSION=shanghai

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

check=0
for arg in "$@"; do
  case "$arg" in
    --help|-h) usage; exit 0 ;;
    --check) check=1 ;;
    *) echo "build-contract.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
contracts="$root/node/contracts"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build-contract.sh: $tool not found: install Node.js (>= 18) and npm" >&2
    exit 1
  fi
done

have=$(node -e "try{process.stdout.write(require('$tools/node_modules/solc/package.json').version)}catch(e){}" 2>/dev/null || true)
if [ "$have" != "$SOLC_VERSION" ]; then
  echo "build-contract.sh: installing solc@$SOLC_VERSION (solcjs) into .tools/" >&2
  mkdir -p "$tools"
  npm install --prefix "$tools" --save-exact --no-audit --no-fund --loglevel=error "solc@$SOLC_VERSION" >&2
fi

if [ "$check" = 1 ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT INT TERM
else
  out="$contracts"
fi

SOLC_MODULE="$tools/node_modules/solc" SRC="$contracts/Anchor.sol" OUT="$out" \
EVM_VERSION="$EVM_VERSION" SOLC_VERSION="$SOLC_VERSION" node - <<'JS'
const fs = require('fs');
const solc = require(process.env.SOLC_MODULE);
const want = process.env.SOLC_VERSION;
if (!solc.version().startsWith(want + '+')) {
  console.error(`solcjs is ${solc.version()}, expected ${want}`);
  process.exit(1);
}
const input = {
  language: 'Solidity',
  sources: { 'Anchor.sol': { content: fs.readFileSync(process.env.SRC, 'utf8') } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: process.env.EVM_VERSION,
    outputSelection: {
      'Anchor.sol': { Anchor: ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] },
    },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
let failed = false;
for (const e of output.errors || []) {
  console.error(e.formattedMessage || e.message);
  if (e.severity === 'error') failed = true;
}
if (failed) process.exit(1);
const c = output.contracts['Anchor.sol'].Anchor;
const artifact = {
  contractName: 'Anchor',
  source: 'node/contracts/Anchor.sol',
  compiler: `solc ${solc.version()}`,
  settings: { optimizer: input.settings.optimizer, evmVersion: input.settings.evmVersion },
  rebuild: 'scripts/build-contract.sh',
  abi: c.abi,
  bytecode: '0x' + c.evm.bytecode.object,
  deployedBytecode: '0x' + c.evm.deployedBytecode.object,
};
fs.writeFileSync(`${process.env.OUT}/Anchor.json`, JSON.stringify(artifact, null, 2) + '\n');
console.error(`compiled Anchor.sol with solc ${solc.version()}: ` +
  `${c.evm.bytecode.object.length / 2} bytes of init code, ${c.evm.deployedBytecode.object.length / 2} of runtime code`);
JS

if [ "$check" = 1 ]; then
  status=0
  for f in Anchor.json; do
    if ! cmp -s "$out/$f" "$contracts/$f"; then
      echo "build-contract.sh: node/contracts/$f does not match a fresh compile of Anchor.sol: run scripts/build-contract.sh and commit" >&2
      status=1
    fi
  done
  [ "$status" = 0 ] && echo "ok: committed contract artifacts match a fresh compile (solc $SOLC_VERSION)"
  exit "$status"
fi
echo "wrote node/contracts/Anchor.json"
