#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, vector, property, snapshot and interop tests.
# Interop tests run against real Nix 2.8 (Debian's nix-bin), remote-build tests against an sshd
# of their own (openssh-server); as root this installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test: cargo is missing (install the Rust toolchain with rustup)" >&2; exit 1; }

need=()
command -v nix-store >/dev/null || need+=(nix-bin)
# Remote-build tests start their own sshd on a loopback port.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing ${need[*]} for the interop tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test: the interop and remote-build tests need these packages: run 'sudo apt-get install -y ${need[*]}'" >&2
    exit 1
  fi
fi

if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets -q -- -D warnings
fi
# The interop tests refuse to skip; tell them real Nix is expected.
export FERRIX_REQUIRE_NIX=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole suite (cargo ends on the doc-tests of crates that have none).
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
