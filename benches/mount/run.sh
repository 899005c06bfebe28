#!/usr/bin/env bash
# Reading backups through `cairn mount` against the same reads without it,
# and `cairn copy` against a fresh backup of the same tree.
#
#   benches/mount/run.sh [--runs N] [--source DIR]
#
# One local repository (embedded index) holds a snapshot of the source tree
# (default: the newest Debian linux-source-6.1) and one of a 1 GiB file of
# random bytes. Per round, each from a fresh mount (so neither the chunk
# cache nor the kernel's page cache holds anything of it):
#   dump        `cairn dump` of the 1 GiB file to /dev/null
#   mount read  `cat` of the same file through the mount to /dev/null
#   list        `find` over the source tree's snapshot in the mount | wc -l
#   ls          `cairn ls` of the same snapshot | wc -l
#   backup      a fresh backup of the source tree into a new repository
#   copy        `cairn copy` of its snapshot into a new repository with
#               another chunker seed (each file re-chunked)
#   copy chunks the same into a repository made with
#               `init --copy-chunker-params-from` (chunk for chunk)
# Writes a Markdown table of medians to docs/BENCHMARKS-mount.md (and stdout)
# and the rounds as TSV.
#
# Environment:
#   CAIRN_BIN           the binary (default: the release build, built if missing)
#   CAIRN_BENCH_CACHE   corpora cache (default /work/.cache/cairn-corpora)
#   CAIRN_BENCH_WORK    scratch space (default /var/tmp/cairn-mount)
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"
# shellcheck source=benches/lib.sh
source "$CAIRN_ROOT/benches/lib.sh"

RUNS=3
SOURCE=""
while (($#)); do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --source) SOURCE=$2; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--source DIR]" >&2; exit 2 ;;
    esac
done

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { echo "mount bench: error: $*" >&2; exit 1; }
[[ -e /dev/fuse ]] || die "needs /dev/fuse"

CACHE=${CAIRN_BENCH_CACHE:-/work/.cache/cairn-corpora}
WORK=${CAIRN_BENCH_WORK:-/var/tmp/cairn-mount}
CAIRN_BIN=${CAIRN_BIN:-$CARGO_TARGET_DIR/release/cairn}
if [[ ! -x $CAIRN_BIN ]]; then
    log "building the release binary"
    (cd "$CAIRN_ROOT" && cargo build --release --locked -p cairn-client)
fi
[[ -n $SOURCE ]] || SOURCE=$(kernel_tree "$CACHE")
[[ -d $SOURCE ]] || die "no source tree at $SOURCE"

MNT="$WORK/mnt"
MOUNT_PID=""
cleanup() {
    if [[ -n $MOUNT_PID ]]; then
        kill "$MOUNT_PID" 2>/dev/null || true
        wait "$MOUNT_PID" 2>/dev/null || true
    fi
    mountpoint -q "$MNT" 2>/dev/null && umount -l "$MNT"
    umount "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK"
# Scratch space in memory (see benches/fleet/run.sh: online discard on this
# disk makes timings after large deletes swing several-fold).
mount -t tmpfs -o size=16g cairn-bench "$WORK"
mkdir -p "$WORK/src" "$MNT"
export XDG_CACHE_HOME="$WORK/cache"
export CAIRN_PASSWORD="mount benchmark" CAIRN_FROM_PASSWORD="mount benchmark" CAIRN_KDF_MEMORY_KIB=65536
export CAIRN_REPO="$WORK/repo"
cairn() { "$CAIRN_BIN" "$@"; }

mount_fresh() {
    # The binary itself, not the `cairn` function: $! must be the process.
    "$CAIRN_BIN" mount "$MNT" 2>"$WORK/mount.log" &
    MOUNT_PID=$!
    local deadline=$((SECONDS + 60))
    until [[ -e $MNT/.stats ]]; do
        kill -0 "$MOUNT_PID" 2>/dev/null || die "cairn mount exited: $(cat "$WORK/mount.log")"
        ((SECONDS < deadline)) || die "the mount did not answer within 60 s"
        sleep 0.1
    done
}

unmount() {
    kill "$MOUNT_PID"
    wait "$MOUNT_PID" || die "cairn mount failed: $(cat "$WORK/mount.log")"
    MOUNT_PID=""
}

log "source: $SOURCE"
head -c 1G /dev/urandom >"$WORK/src/big.bin"
cairn init -q >/dev/null
cairn backup -q "$SOURCE" >/dev/null
tree_id=$(cairn snapshots --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["short_id"])')
cairn backup -q "$WORK/src" >/dev/null
big_id=$(cairn snapshots --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["short_id"])')
files=$(find "$SOURCE" | wc -l)

TSV=${CAIRN_BENCH_TSV:-/var/tmp/cairn-mount-results.tsv}
printf 'round\tworkload\tseconds\n' >"$TSV"
for round in $(seq 1 "$RUNS"); do
    log "round $round"
    t=$(timed cairn dump "$big_id" "$WORK/src/big.bin"); printf '%s\tdump\t%s\n' "$round" "$t" >>"$TSV"
    mount_fresh
    t=$(timed cat "$MNT/snapshots/$big_id$WORK/src/big.bin"); printf '%s\tmount_read\t%s\n' "$round" "$t" >>"$TSV"
    unmount
    mount_fresh
    n=$(find "$MNT/snapshots/$tree_id$SOURCE" | wc -l)
    ((n == files)) || die "the mount lists $n entries, the source $files"
    t=$(timed find "$MNT/snapshots/$tree_id$SOURCE"); printf '%s\tlist_cold\t%s\n' "$round" "$t" >>"$TSV"
    unmount
    t=$(timed cairn ls "$tree_id" "$SOURCE"); printf '%s\tls\t%s\n' "$round" "$t" >>"$TSV"
    rm -rf "$WORK/fresh" "$WORK/copy" "$WORK/twin"
    CAIRN_REPO="$WORK/fresh" cairn init -q >/dev/null
    t=$(CAIRN_REPO="$WORK/fresh" timed cairn backup -q "$SOURCE"); printf '%s\tbackup\t%s\n' "$round" "$t" >>"$TSV"
    CAIRN_REPO="$WORK/copy" cairn init -q >/dev/null
    t=$(CAIRN_REPO="$WORK/copy" timed cairn copy -q --from-repo "$CAIRN_REPO" "$tree_id"); printf '%s\tcopy\t%s\n' "$round" "$t" >>"$TSV"
    CAIRN_REPO="$WORK/twin" cairn init -q --copy-chunker-params-from "$CAIRN_REPO" >/dev/null
    t=$(CAIRN_REPO="$WORK/twin" timed cairn copy -q --from-repo "$CAIRN_REPO" "$tree_id"); printf '%s\tcopy_chunks\t%s\n' "$round" "$t" >>"$TSV"
    rm -rf "$WORK/fresh" "$WORK/copy" "$WORK/twin"
done

python3 - "$TSV" "$files" "$(git -C "$CAIRN_ROOT" rev-parse --short HEAD)" "$(nproc)" "$RUNS" <<'PY' | tee "$CAIRN_ROOT/docs/BENCHMARKS-mount.md"
import csv, datetime, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
files, commit, cores, runs = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
print("# Reading backups through `cairn mount`, and `cairn copy`\n")
print(f"`bash benches/mount/run.sh --runs {runs}` on {datetime.date.today()}, {cores} cores, "
      "local repository on tmpfs, release build; each mount fresh (nothing of the file in the "
      "chunk cache or the mount's page cache).\n")
med = {w: statistics.median(float(r["seconds"]) for r in rows if r["workload"] == w)
       for w in {r["workload"] for r in rows}}
mib = 1024
print(f"Medians of {runs} rounds, commit {commit}, {files} entries in the tree.\n")
print("| workload | time | rate |")
print("|---|---|---|")
print(f"| `cairn dump` of a 1 GiB file | {med['dump']:.2f} s | {mib / med['dump']:.0f} MiB/s |")
print(f"| `cat` of the same file through a fresh mount | {med['mount_read']:.2f} s | {mib / med['mount_read']:.0f} MiB/s |")
print(f"| `find` over the tree's snapshot in a fresh mount | {med['list_cold']:.2f} s | {files / med['list_cold']:.0f} entries/s |")
print(f"| `cairn ls` of the same snapshot | {med['ls']:.2f} s | {files / med['ls']:.0f} entries/s |")
print()
print("| into a new local repository | time | / fresh backup |")
print("|---|---|---|")
print(f"| fresh backup of the tree | {med['backup']:.2f} s | 1.00 |")
print(f"| `cairn copy` of its snapshot, re-chunked | {med['copy']:.2f} s | {med['copy'] / med['backup']:.2f} |")
print(f"| `cairn copy`, chunk for chunk (`--copy-chunker-params-from`) | {med['copy_chunks']:.2f} s | {med['copy_chunks'] / med['backup']:.2f} |")
PY
