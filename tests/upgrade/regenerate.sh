#!/usr/bin/env bash
# Rebuilds tests/upgrade/store-<commit>/ from that commit: checks it out in a temporary
# worktree, runs write_store_<commit>.rs there as an example, and copies the store it wrote.
#   a84aaec — the last release whose records carry no format version (format 0)
#   96cd6c8 — the last release of store format 1 (versioned records, no intake log)
#   551746f — the last release of store format 2 (job records v1, intake-log frames v1)
#   3a2b10f — the last release of store format 3 (every job, finished ones too, in `jobs`)
#   08992d1 — the last release of store format 4 (delivery records and marks in sled)
#   95337e3 — the last release of store format 5 (every job in sled's trees, none in chunks)
# Usage: tests/upgrade/regenerate.sh [a84aaec|96cd6c8|551746f|3a2b10f|08992d1|95337e3]   (default: all)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"

# An intake log is allocated with zeros ahead of use (8 MiB a segment): keep only its
# frames, up to the first zero header, and drop the segment prepared for later.
trim_intake_log() {
  rm -f "$1"/intake-next.prep
  for log in "$1"/intake-*.log; do
    [ -e "$log" ] || continue
    python3 - "$log" <<'PY'
import struct, sys
path = sys.argv[1]
data = open(path, "rb").read()
at = 0
while at + 8 <= len(data):
    length, _crc = struct.unpack_from("<II", data, at)
    if length == 0:
        break
    at += 8 + length
open(path, "r+b").truncate(at)
PY
  done
}
for commit in "${@:-a84aaec 96cd6c8 551746f 3a2b10f 08992d1 95337e3}"; do
  for c in $commit; do
    work="$(mktemp -d)"
    git -C "$repo" worktree add --detach "$work/src" "$c" >/dev/null
    mkdir -p "$work/src/examples"
    cp "$repo/tests/upgrade/write_store_$c.rs" "$work/src/examples/"
    (cd "$work/src" && CARGO_TARGET_DIR="${UPGRADE_TARGET_DIR:-$repo/target/upgrade-$c}" \
      cargo run --quiet --example "write_store_$c" -- "$work/out")
    rm -rf "$repo/tests/upgrade/store-$c"
    mkdir -p "$repo/tests/upgrade/store-$c"
    cp -r "$work/out/." "$repo/tests/upgrade/store-$c/"
    trim_intake_log "$repo/tests/upgrade/store-$c/data"
    # When it was written: the upgrade test sets bb2tc's clock to an hour after this.
    date +%s%3N > "$repo/tests/upgrade/store-$c/written_at_ms.txt"
    git -C "$repo" worktree remove --force "$work/src" >/dev/null 2>&1 || true
    rm -rf "$work"
    du -sh "$repo/tests/upgrade/store-$c"
  done
done
