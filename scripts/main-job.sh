#!/usr/bin/env bash
# The main job: serialise, list, hash and check an example tree, add it to a local store, then
# evaluate a small package set in the Nix language (examples/pkgs) and build it with nix-build
# on a fresh store with default settings. Needs only the Rust toolchain (and /bin/sh,
# /usr/bin/tr, which every Debian has).
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

# The local store (a private chroot store here).
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

# Building, in a private store. Every setting but the location is the default (max-jobs 1,
# sandbox = true, …), except that the sandbox must show the host's /bin/sh and what it links
# against: the builders here use Debian's tools, not ones from the store.
export NIX_STORE_DIR="$work/b/store" NIX_STATE_DIR="$work/b/var/nix" NIX_LOG_DIR="$work/b/var/log/nix"
export NIX_CONF_DIR="$work/b/etc"
unset NIX_REMOTE
mkdir -p "$NIX_CONF_DIR"
echo 'sandbox-paths = /bin /usr /lib /lib64?' > "$NIX_CONF_DIR/nix.conf"
echo "== the package set in the Nix language (examples/pkgs): greeting <- shout <- report (out, doc)"
echo "== nix-instantiate examples/pkgs -A report: the .drv files written to the store"
"$work/bin/nix-instantiate" examples/pkgs -A report
echo "== nix-build examples/pkgs -A report -A report.doc"
pkgs=$PWD/examples/pkgs
(cd "$work" && "$work/bin/nix-build" "$pkgs" -A report -A report.doc)
echo "== the results (result -> out, result-doc -> doc)"
cat "$work/result/greeting" "$work/result/shout" "$work/result-doc/README"
echo "== ferrix log (greeting)"
"$ferrix" log "$("$work/bin/nix-instantiate" examples/pkgs -A greeting 2>/dev/null)"
echo "== nix-store -qR result: the closure, found by scanning the outputs for references"
"$work/bin/nix-store" -qR "$work/result"
echo "== building again does nothing"
(cd "$work" && "$work/bin/nix-build" "$pkgs" -A report --no-out-link)
echo "== ferrix eval: a value of the package set"
"$ferrix" eval --file examples/pkgs greeting.name
