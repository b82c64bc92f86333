#!/usr/bin/env bash
# Rebuilds tests/upgrade/store-a84aaec/ from commit a84aaec (the last release whose records
# carry no format version): checks that commit out in a temporary worktree, runs
# write_store_a84aaec.rs there as an example, and copies the store it wrote.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'git -C "$repo" worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$repo" worktree add --detach "$work/src" a84aaec >/dev/null
mkdir -p "$work/src/examples"
cp "$repo/tests/upgrade/write_store_a84aaec.rs" "$work/src/examples/"
(cd "$work/src" && CARGO_TARGET_DIR="$repo/target/upgrade-a84aaec" \
  cargo run --quiet --example write_store_a84aaec -- "$work/out")
rm -rf "$repo/tests/upgrade/store-a84aaec"
mkdir -p "$repo/tests/upgrade/store-a84aaec"
cp -r "$work/out/." "$repo/tests/upgrade/store-a84aaec/"
du -sh "$repo/tests/upgrade/store-a84aaec"
