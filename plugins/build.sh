#!/usr/bin/env bash
# Builds the plugins we ship (plugins/) and the test plugins (tests/plugins/) as WebAssembly components for
# wasm32-wasip2, into <repo>/target/wasm, and prints the path of every .wasm produced, one per line, on stdout.
# Cargo's progress goes to stderr. Extra arguments go to both `cargo build` runs (for example -j1).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$PATH:$HOME/.cargo/bin"
export CARGO_TARGET_DIR="$repo/target/wasm"
target=wasm32-wasip2

if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" >&2
fi

for workspace in "$repo/plugins" "$repo/tests/plugins"; do
    # The JSON messages name each artifact; the .wasm ones are the components.
    cargo build --release --target "$target" --manifest-path "$workspace/Cargo.toml" \
        --message-format=json-render-diagnostics "$@" \
        | grep '"reason":"compiler-artifact"' \
        | grep -o '"[^"]*\.wasm"' \
        | tr -d '"'
done
