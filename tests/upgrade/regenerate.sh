#!/usr/bin/env bash
# Rebuilds tests/upgrade/store-<commit>/ from that commit: checks it out in a temporary
# worktree, runs write_store_<commit>.rs there as an example, and copies the store it wrote.
#   a84aaec — the last release whose records carry no format version (format 0)
#   96cd6c8 — the last release of store format 1 (versioned records, no intake log)
# Usage: tests/upgrade/regenerate.sh [a84aaec|96cd6c8]   (default: both)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
for commit in "${@:-a84aaec 96cd6c8}"; do
  for c in $commit; do
    work="$(mktemp -d)"
    git -C "$repo" worktree add --detach "$work/src" "$c" >/dev/null
    mkdir -p "$work/src/examples"
    cp "$repo/tests/upgrade/write_store_$c.rs" "$work/src/examples/"
    (cd "$work/src" && CARGO_TARGET_DIR="$repo/target/upgrade-$c" \
      cargo run --quiet --example "write_store_$c" -- "$work/out")
    rm -rf "$repo/tests/upgrade/store-$c"
    mkdir -p "$repo/tests/upgrade/store-$c"
    cp -r "$work/out/." "$repo/tests/upgrade/store-$c/"
    git -C "$repo" worktree remove --force "$work/src" >/dev/null 2>&1 || true
    rm -rf "$work"
    du -sh "$repo/tests/upgrade/store-$c"
  done
done
