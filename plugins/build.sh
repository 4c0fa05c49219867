#!/usr/bin/env sh
# Builds every plugin in this workspace for wasm32-wasip2 and leaves one
# component per plugin in dist/NAME.wasm (NAME = the crate name).
#
# Usage: plugins/build.sh   (from anywhere)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

target=wasm32-wasip2
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx "$target"; then
        echo "build.sh: installing the $target target" >&2
        rustup target add "$target"
    fi
fi

cargo build --release --target "$target" --workspace --quiet

# Cargo may place the output elsewhere if CARGO_TARGET_DIR is set.
out="${CARGO_TARGET_DIR:-$here/target}/$target/release"
mkdir -p dist
count=0
for manifest in */Cargo.toml */*/Cargo.toml; do
    grep -q 'cdylib' "$manifest" || continue
    name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -n 1)
    artifact="$out/$(echo "$name" | tr '-' '_').wasm"
    if [ ! -f "$artifact" ]; then
        echo "build.sh: $artifact is missing after the build" >&2
        exit 1
    fi
    # Copy then rename, so a reader never sees a half-written file.
    cp "$artifact" "dist/.$name.wasm.tmp"
    mv "dist/.$name.wasm.tmp" "dist/$name.wasm"
    count=$((count + 1))
done
echo "build.sh: $count plugins in $here/dist" >&2
