#!/usr/bin/env bash
# The main job, as far as Ferrix goes today: serialise, list, hash and check an example tree
# and show an example derivation. Needs only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "main-job: cargo is missing (install the Rust toolchain with rustup)" >&2; exit 1; }
cargo build --release -q -p ferrix-cli
ferrix=$PWD/target/release/ferrix
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$ferrix" install-links "$work/bin" >/dev/null

src=examples/hello-src
echo "== ferrix nar dump-path $src > hello.nar"
"$ferrix" nar dump-path "$src" > "$work/hello.nar"
echo "   $(wc -c < "$work/hello.nar") bytes"
echo "== ferrix nar ls -lR hello.nar /"
"$ferrix" nar ls -lR "$work/hello.nar" /
echo "== ferrix hash path $src (SRI, then nix32)"
"$ferrix" hash path "$src"
"$ferrix" hash path --base32 "$src"
echo "== nix-hash --type sha256 $src (ferrix's nix-hash personality)"
"$work/bin/nix-hash" --type sha256 "$src"
echo "== nix-store --restore, then hash again: identical"
"$work/bin/nix-store" --restore "$work/restored" < "$work/hello.nar"
"$ferrix" hash path "$work/restored"
echo "== ferrix derivation show examples/*.drv"
"$ferrix" derivation show examples/*.drv

# The local store (a private one here: the build engine will use the default store).
store="$work/root"
echo "== nix-store --store $store --add $src"
p=$("$work/bin/nix-store" --store "$store" --add "$src")
echo "$p"
echo "== ferrix path-info --json (store at $store)"
"$ferrix" --store "$store" path-info --json "$p"; echo
echo "== nix-store --verify --check-contents"
"$work/bin/nix-store" --store "$store" --verify --check-contents
echo "== nix-store --gc (nothing roots the path, so it goes)"
"$work/bin/nix-store" --store "$store" --gc
