#!/usr/bin/env bash
# What hiding chunk sizes costs: first backup time, chunk count and
# repository size of the kernel tree, and the total time and final
# repository size of a run of TypeScript nightlies backed up one after the
# other, for each combination of `cairn init --chunker` and `--padding`
# (with `--index-lengths` following the padding: sealed lengths cost no
# bytes). Every mode runs in each round, in rotating order, from a warm
# page cache; the table gives medians.
#
#   benches/size-protection.sh [--rounds N] [--ts-count N]
#
# CAIRN_BIN (default: a release build in the target directory of
# scripts/common.sh), CAIRN_BENCH_CACHE (corpora, default
# /work/.cache/cairn-corpora), CAIRN_BENCH_WORK (scratch, default
# /var/tmp/cairn-size-protection).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=benches/lib.sh disable=SC1091
source "$HERE/lib.sh"

rounds=3
ts_count=10
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --ts-count) ts_count=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

CACHE="${CAIRN_BENCH_CACHE:-/work/.cache/cairn-corpora}"
WORK="${CAIRN_BENCH_WORK:-/var/tmp/cairn-size-protection}"
if [[ -z "${CAIRN_BIN:-}" ]]; then
    # shellcheck source=scripts/common.sh disable=SC1091
    source "$HERE/../scripts/common.sh"
    cargo build --release --locked -p cairn-client --bin cairn >&2
    CAIRN_BIN="$CARGO_TARGET_DIR/release/cairn"
fi
export CAIRN_PASSWORD="size-protection-bench-password"

kernel=$(kernel_tree "$CACHE")
mapfile -t nightlies < <(typescript_nightlies "$CACHE" "${TS_LAST:-6.0.0-dev.20260324}" "$ts_count")

# name: init flags. Within a round, the modes of one cut rule copy one
# chunker seed (`--copy-chunker-params-from`), so padding is compared on the
# same cuts; the seed is new every round, so the rules are compared over
# several keys (which chunks a change touches depends on the key).
modes=(
    "fastcdc,none:--padding none --index-lengths clear"
    "prf,none:--padding none --index-lengths clear"
    "fastcdc,padme:--padding padme --index-lengths sealed"
    "prf,padme:--padding padme --index-lengths sealed"
)

rm -rf "$WORK"
mkdir -p "$WORK"
# Warm the page cache: every mode then reads from memory.
tar -c "$kernel" "${nightlies[@]}" 2>/dev/null | wc -c >/dev/null
results="$WORK/results.tsv"
printf 'round\tmode\tworkload\tseconds\tbytes\tchunks\n' >"$results"

repo_bytes() { du -s -B1 "$1" | cut -f1; }
chunk_count() {
    "$CAIRN_BIN" --repo "$1" stats --json |
        python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["chunks"])'
}

export CAIRN_FROM_PASSWORD=$CAIRN_PASSWORD
for ((r = 1; r <= rounds; r++)); do
    for rule in fastcdc prf; do
        rm -rf "$WORK/seed-$rule"
        "$CAIRN_BIN" --repo "$WORK/seed-$rule" init --chunker "$rule" >/dev/null
    done
    for ((k = 0; k < ${#modes[@]}; k++)); do
        spec=${modes[$(((k + r) % ${#modes[@]}))]}
        name=${spec%%:*}
        read -r -a flags <<<"${spec#*:} --copy-chunker-params-from $WORK/seed-${name%%,*}"
        repo="$WORK/repo"
        rm -rf "$repo"
        "$CAIRN_BIN" --repo "$repo" init "${flags[@]}" >/dev/null
        secs=$(timed "$CAIRN_BIN" --repo "$repo" backup "$kernel" --quiet)
        chunks=$(chunk_count "$repo")
        printf '%s\t%s\tkernel\t%s\t%s\t%s\n' "$r" "$name" "$secs" "$(repo_bytes "$repo/packs")" "$chunks" >>"$results"
        echo "round $r $name kernel: ${secs}s" >&2

        rm -rf "$repo"
        "$CAIRN_BIN" --repo "$repo" init "${flags[@]}" >/dev/null
        start=$EPOCHREALTIME
        for d in "${nightlies[@]}"; do
            "$CAIRN_BIN" --repo "$repo" backup "$d" --quiet >/dev/null
        done
        secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }')
        chunks=$(chunk_count "$repo")
        printf '%s\t%s\tts\t%s\t%s\t%s\n' "$r" "$name" "$secs" "$(repo_bytes "$repo/packs")" "$chunks" >>"$results"
        echo "round $r $name ts: ${secs}s" >&2
    done
done
rm -rf "$WORK/repo" "$WORK"/seed-*

python3 - "$results" "$kernel" "${#nightlies[@]}" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
kernel, ts = sys.argv[2], sys.argv[3]
modes = sorted(set(r["mode"] for r in rows), key=lambda m: (m.split(",")[1] != "none", m.split(",")[0] != "fastcdc"))
def med(mode, workload, key):
    return statistics.median(float(r[key]) for r in rows if r["mode"] == mode and r["workload"] == workload)
def spread(mode, workload, key):
    v = [float(r[key]) for r in rows if r["mode"] == mode and r["workload"] == workload]
    return min(v), max(v)
base = "fastcdc,none"
print(f"kernel: first backup of {kernel}; ts: {ts} TypeScript nightlies backed up in turn")
print()
print("| chunker, padding | kernel first backup | vs fastcdc,none | kernel packs | vs fastcdc,none | kernel chunks | ts backups | vs fastcdc,none | ts packs | vs fastcdc,none |")
print("|---|---|---|---|---|---|---|---|---|---|")
for m in modes:
    ks, kb, kc = med(m, "kernel", "seconds"), med(m, "kernel", "bytes"), med(m, "kernel", "chunks")
    ts_s, ts_b = med(m, "ts", "seconds"), med(m, "ts", "bytes")
    print(f"| {m} | {ks:.2f} s | {ks / med(base, 'kernel', 'seconds'):.3f}× | {kb / 1e6:.1f} MB | "
          f"{kb / med(base, 'kernel', 'bytes'):.4f}× | {kc:.0f} | {ts_s:.2f} s | "
          f"{ts_s / med(base, 'ts', 'seconds'):.3f}× | {ts_b / 1e6:.2f} MB | {ts_b / med(base, 'ts', 'bytes'):.4f}× |")
print()
print("ts packs per round (MB), by mode: " + "; ".join(
    f"{m}: " + ", ".join(f"{float(r['bytes']) / 1e6:.2f}" for r in rows if r["mode"] == m and r["workload"] == "ts")
    for m in modes))
EOF
echo "raw results: $results" >&2
