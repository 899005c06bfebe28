#!/usr/bin/env bash
# Side-by-side benchmark of Cairn against bupstash, restic, rustic, Borg 1.2
# and Borg 1.4, next to the physical reference of each step.
#
#   benches/compare/run.sh [--runs N] [--quick] [--workloads LIST]
#                          [--tools LIST] [--cache LIST] [--ts-count N] [--no-report]
#
# Fetches and caches real corpora (two consecutive Debian linux-source-6.1
# packages, a run of consecutive TypeScript nightlies from npm, one 2 GiB
# file), installs the peers (restic and Borg 1.2 from apt, rustic and
# bupstash from crates.io, Borg 1.4 from PyPI), then runs every tool on the
# same data, in alternation, N times, measuring each step with
# /usr/bin/time -v, and measures what the same step costs without a backup
# tool (the reference: tar | zstd, tar | wc -c, a stat walk, tar -x). Results
# go to a TSV file under the work directory; docs/BENCHMARKS.md and
# docs/BENCHMARKS.csv are rewritten from them.
#
# Options:
#   --runs N          rounds of every workload (default 3)
#   --quick           1 round and 5 TypeScript nightlies (unless given otherwise)
#   --workloads LIST  comma-separated subset of: kernel,ts,bigfile (default all)
#   --tools LIST      comma-separated subset of: cairn,bupstash,restic,rustic,borg,borg14
#   --cache LIST      page cache before each measured kernel and TypeScript step:
#                     cold (dropped), warm (the step's inputs read just before),
#                     or both (default cold,warm)
#   --ts-count N      number of TypeScript nightlies (default 30)
#   --no-report       leave docs/BENCHMARKS.md alone
#   --prepare-only    install the peers and fetch the corpora, then stop
#                     (so that a later measured run starts at once)
#
# Environment:
#   CAIRN_BIN            cairn binary to measure (default: build it with
#                        cargo build --release --locked --workspace --bins)
#   CAIRN_BIN_PROFILE    free text describing how CAIRN_BIN was built, for the report
#   CAIRN_BENCH_CACHE    corpora cache (default /work/.cache/cairn-corpora)
#   CAIRN_BENCH_TOOLS    where rustic, bupstash and Borg 1.4 are installed
#                        (default /work/.cache/cairn-tools)
#   CAIRN_BENCH_WORK     scratch space for sources, repositories and restores
#                        (default /var/tmp/cairn-bench; must be on the disk under test)
#   KERNEL_V1, KERNEL_V2 linux-source-6.1 package versions (default 6.1.187-1, 6.1.190-1)
#   TS_LAST              newest TypeScript nightly of the run (default 6.0.0-dev.20260324)
#   BORG_ENCRYPTION      (default repokey: HMAC-SHA256 ids, fast with SHA-NI)
#   BORG_COMPRESSION     (default zstd,3)
#   CAIRN_BENCH_NOTES    a Markdown file appended to docs/BENCHMARKS.md (observations)
#   CAIRN_BENCH_CEILING_GBPS  the chunk+fingerprint ceiling of this machine in GB/s (criterion
#                        group `ceiling`), for the 2 GiB target (default 3.8)
#   RUSTIC_BIN           rustic binary (default: CAIRN_BENCH_TOOLS/bin/rustic, installed if missing)
#   BUPSTASH_BIN         bupstash binary (default: CAIRN_BENCH_TOOLS/bin/bupstash, 0.12.0 installed if missing)
#   BORG14_BIN           Borg 1.4 (default: CAIRN_BENCH_TOOLS/borg14/bin/borg, a venv made if missing)
#
# In the cold pass, page caches are dropped (sync; echo 3 >
# /proc/sys/vm/drop_caches) before every measured step of the kernel and
# TypeScript workloads when the harness is allowed to; in the warm pass the
# step's inputs (source tree, repository, the tool's caches) are read just
# before it. The 2 GiB file is always read from a warm page cache, so that it
# measures the chunk, hash, compress and encrypt pipeline rather than the disk.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
COMMAND_LINE="benches/compare/run.sh${*:+ $*}"

die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# shellcheck source=benches/compare/tools.sh disable=SC1091
source "$HERE/tools.sh"
# shellcheck source=benches/lib.sh disable=SC1091
source "$HERE/../lib.sh"

# ---- options -------------------------------------------------------------

RUNS=""
TS_COUNT=""
QUICK=0
WORKLOADS="kernel,ts,bigfile"
TOOLS="cairn,bupstash,restic,rustic,borg,borg14"
CACHE_MODES="cold,warm"
REPORT=1
PREPARE_ONLY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --workloads) WORKLOADS="${2:?--workloads needs a list}"; shift 2 ;;
        --tools) TOOLS="${2:?--tools needs a list}"; shift 2 ;;
        --cache) CACHE_MODES="${2:?--cache needs a list}"; shift 2 ;;
        --ts-count) TS_COUNT="${2:?--ts-count needs a number}"; shift 2 ;;
        --no-report) REPORT=0; shift ;;
        --prepare-only) PREPARE_ONLY=1; shift ;;
        -h | --help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if [[ $QUICK == 1 ]]; then
    RUNS="${RUNS:-1}"
    TS_COUNT="${TS_COUNT:-5}"
fi
RUNS="${RUNS:-3}"
TS_COUNT="${TS_COUNT:-30}"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number"
[[ "$TS_COUNT" =~ ^[1-9][0-9]*$ ]] || die "--ts-count must be a positive number"
IFS=, read -r -a TOOL_LIST <<<"$TOOLS"
for t in "${TOOL_LIST[@]}"; do
    case "$t" in cairn | bupstash | restic | rustic | borg | borg14) ;; *) die "unknown tool $t" ;; esac
done
IFS=, read -r -a CACHE_LIST <<<"$CACHE_MODES"
for c in "${CACHE_LIST[@]}"; do
    case "$c" in cold | warm) ;; *) die "unknown cache mode $c (cold or warm)" ;; esac
done
has_workload() { [[ ",$WORKLOADS," == *",$1,"* ]]; }
has_tool() { [[ ",$TOOLS," == *",$1,"* ]]; }

# Cairn's default zstd level, read where it is defined, so the first
# backup's reference compresses as Cairn does.
CAIRN_ZSTD_LEVEL="$(sed -n 's/^pub const DEFAULT_ZSTD_LEVEL: i32 = \([0-9-]*\);$/\1/p' \
    "$ROOT/chunk-store/src/config.rs")"
[[ -n $CAIRN_ZSTD_LEVEL ]] || die "DEFAULT_ZSTD_LEVEL not found in chunk-store/src/config.rs"

CACHE_DIR="${CAIRN_BENCH_CACHE:-/work/.cache/cairn-corpora}"
TOOLS_DIR="${CAIRN_BENCH_TOOLS:-/work/.cache/cairn-tools}"
WORK="${CAIRN_BENCH_WORK:-/var/tmp/cairn-bench}"
KERNEL_V1="${KERNEL_V1:-6.1.187-1}"
KERNEL_V2="${KERNEL_V2:-6.1.190-1}"
TS_LAST="${TS_LAST:-6.0.0-dev.20260324}"
BORG_ENCRYPTION="${BORG_ENCRYPTION:-repokey}"
BORG_COMPRESSION="${BORG_COMPRESSION:-zstd,3}"
BIGFILE_BYTES=$((2 * 1024 * 1024 * 1024))

mkdir -p "$CACHE_DIR" "$TOOLS_DIR" "$WORK"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$WORK/results-$STAMP"
mkdir -p "$OUT/logs"
RESULTS="$OUT/results.tsv"
META="$OUT/meta.txt"
log "results in $OUT"

# ---- peers ---------------------------------------------------------------

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

install_tools() {
    local need=()
    has_tool restic && ! command -v restic >/dev/null && need+=(restic)
    has_tool borg && ! command -v borg >/dev/null && need+=(borgbackup)
    [[ -x /usr/bin/time ]] || need+=(time)
    command -v rsync >/dev/null || need+=(rsync)
    command -v xz >/dev/null || need+=(xz-utils)
    command -v zstd >/dev/null || need+=(zstd)
    # bupstash links libsodium; Borg 1.4 builds its C extensions.
    has_tool bupstash && need+=(libsodium-dev pkg-config)
    has_tool borg14 && need+=(python3-venv libacl1-dev libssl-dev liblz4-dev libzstd-dev libxxhash-dev pkg-config)
    if [[ ${#need[@]} -gt 0 ]]; then
        log "installing ${need[*]} from apt"
        apt_install "${need[@]}"
    fi

    RUSTIC_BIN="${RUSTIC_BIN:-$TOOLS_DIR/bin/rustic}"
    if has_tool rustic && [[ ! -x "$RUSTIC_BIN" ]]; then
        log "installing rustic-rs from crates.io into $TOOLS_DIR (compiles for a while)"
        CARGO_TARGET_DIR="$TOOLS_DIR/rustic-target" \
            cargo install rustic-rs --locked --root "$TOOLS_DIR"
        rm -rf "$TOOLS_DIR/rustic-target"
    fi
    BUPSTASH_BIN="${BUPSTASH_BIN:-$TOOLS_DIR/bin/bupstash}"
    if has_tool bupstash && [[ ! -x "$BUPSTASH_BIN" ]]; then
        log "installing bupstash 0.12.0 from crates.io into $TOOLS_DIR"
        CARGO_TARGET_DIR="$TOOLS_DIR/bupstash-target" \
            cargo install bupstash --version 0.12.0 --locked --root "$TOOLS_DIR"
        rm -rf "$TOOLS_DIR/bupstash-target"
    fi
    BORG14_BIN="${BORG14_BIN:-$TOOLS_DIR/borg14/bin/borg}"
    if has_tool borg14 && [[ ! -x "$BORG14_BIN" ]]; then
        log "installing borgbackup 1.4 from PyPI into $TOOLS_DIR/borg14"
        rm -rf "$TOOLS_DIR/borg14"
        python3 -m venv "$TOOLS_DIR/borg14"
        "$TOOLS_DIR/borg14/bin/pip" install --quiet 'borgbackup==1.4.*'
    fi
    export RUSTIC_BIN BUPSTASH_BIN BORG14_BIN
}

# ---- cairn ---------------------------------------------------------------

build_cairn() {
    if [[ -n "${CAIRN_BIN:-}" ]]; then
        [[ -x "$CAIRN_BIN" ]] || die "CAIRN_BIN=$CAIRN_BIN is not executable"
        CAIRN_BIN_PROFILE="${CAIRN_BIN_PROFILE:-unknown (given by CAIRN_BIN)}"
    else
        # shellcheck source=scripts/common.sh disable=SC1091
        source "$ROOT/scripts/common.sh"
        log "building cairn (release) in $CARGO_TARGET_DIR"
        (cd "$ROOT" && cargo build --release --locked --workspace --bins)
        CAIRN_BIN="$CARGO_TARGET_DIR/release/cairn"
        CAIRN_BIN_PROFILE="release profile"
    fi
    export CAIRN_BIN CAIRN_BIN_PROFILE
}

# ---- corpora -------------------------------------------------------------

# Unpack linux-source-6.1=VERSION into $CACHE_DIR/kernel-VERSION (once).
fetch_kernel() {
    local v="$1" dir="$CACHE_DIR/kernel-$1" deb
    [[ -d "$dir" ]] && return 0
    mkdir -p "$CACHE_DIR/debs"
    deb="$CACHE_DIR/debs/linux-source-6.1_${v}_all.deb"
    if [[ ! -f "$deb" ]]; then
        log "downloading linux-source-6.1=$v"
        (cd "$CACHE_DIR/debs" && apt-get download "linux-source-6.1=$v") ||
            { apt-get update -q >/dev/null && (cd "$CACHE_DIR/debs" && apt-get download "linux-source-6.1=$v"); }
    fi
    log "unpacking linux-source-6.1=$v"
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/src/linux-source-6.1.tar.xz |
        xz -dc | tar -x -C "$dir.partial" --strip-components=1
    mv "$dir.partial" "$dir"
}

# Fill TS_VERSIONS with the TS_COUNT consecutive nightlies ending at TS_LAST,
# each unpacked under $CACHE_DIR/typescript/VERSION (once).
fetch_typescript() {
    local dirs
    dirs=$(typescript_nightlies "$CACHE_DIR" "$TS_LAST" "$TS_COUNT") || die "TypeScript nightlies up to $TS_LAST"
    mapfile -t TS_VERSIONS < <(for d in $dirs; do basename "$d"; done)
}

# One 2 GiB file of random (incompressible, non-duplicate) bytes.
fetch_bigfile() {
    BIGFILE="$CACHE_DIR/bigfile-2GiB.bin"
    [[ -f "$BIGFILE" ]] && return 0
    log "writing $BIGFILE"
    head -c "$BIGFILE_BYTES" /dev/urandom >"$BIGFILE.partial"
    mv "$BIGFILE.partial" "$BIGFILE"
}

# ---- measurement ---------------------------------------------------------

CACHES_DROPPED=yes
drop_caches() {
    sync
    if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        CACHES_DROPPED=no
    fi
}

# The pass under way: cold or warm (see --cache).
CACHE=cold

# Sets the page cache for the next measured step of the current pass: cold
# drops it; warm reads PATHS (the step's inputs) into it. GNU tar skips the
# reads when it writes to /dev/null itself, hence the cat.
prepare_cache() {
    if [[ $CACHE == cold ]]; then
        drop_caches
        return
    fi
    local p present=()
    for p in "$@"; do [[ -e $p ]] && present+=("$p"); done
    sync
    [[ ${#present[@]} -gt 0 ]] && tar -cf - "${present[@]}" 2>/dev/null | cat >/dev/null
    return 0
}

repo_bytes() { du -s -B1 "$1" | cut -f1; }

printf 'workload\tcache\tround\ttool\tstep\twall_s\tuser_s\tsys_s\tmaxrss_kb\trepo_bytes\n' >"$RESULTS"

# measure WORKLOAD ROUND TOOL STEP REPO -- runs CMD (in CMD_DIR) with the
# tool's environment under /usr/bin/time -v and appends one row to RESULTS.
# A failing command fails the harness, with its log named.
measure() {
    local workload="$1" round="$2" tool="$3" step="$4" repo="$5" home="$6"
    local tag="$workload-$CACHE-r$round-$tool-$step" tfile start end rc=0
    tfile="$OUT/logs/$tag.time"
    if [[ $tool == reference ]]; then
        TOOL_ENV=("HOME=$home")
    else
        tool_env "$tool" "$home"
    fi
    start=$(date +%s%N)
    env -C "$CMD_DIR" "${TOOL_ENV[@]}" /usr/bin/time -v -o "$tfile" "${CMD[@]}" \
        >"$OUT/logs/$tag.out" 2>&1 || rc=$?
    end=$(date +%s%N)
    if [[ $rc != 0 ]]; then
        tail -n 20 "$OUT/logs/$tag.out" >&2
        die "$tool failed (exit $rc) in $tag; see $OUT/logs/$tag.out"
    fi
    local user sys rss
    user=$(awk -F': ' '/User time \(seconds\)/ {print $2}' "$tfile")
    sys=$(awk -F': ' '/System time \(seconds\)/ {print $2}' "$tfile")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tfile")
    local wall
    wall=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", (e - s) / 1e9 }')
    local bytes=0
    [[ -n $repo && -e $repo ]] && bytes=$(repo_bytes "$repo")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$CACHE" "$round" "$tool" "$step" \
        "$wall" "$user" "$sys" "$rss" "$bytes" >>"$RESULTS"
    log "  $tool $workload/$CACHE/$step: ${wall}s, rss ${rss} KiB"
}

# The tools of round R, rotated so no tool always goes first.
round_tools() {
    local r="$1" n=${#TOOL_LIST[@]} i
    ROUND_TOOLS=()
    for ((i = 0; i < n; i++)); do
        ROUND_TOOLS+=("${TOOL_LIST[$(((i + r - 1) % n))]}")
    done
}

# Fail loudly unless DIR and RESTORED hold the same tree (names, contents,
# symlink targets, file types and permission bits).
verify_restore() {
    local src="$1" restored="$2" tool="$3"
    [[ -d "$restored" ]] || die "$tool restored nothing at $restored"
    if ! diff -r --no-dereference "$src" "$restored" >"$OUT/logs/diff-$tool.txt" 2>&1; then
        head -n 20 "$OUT/logs/diff-$tool.txt" >&2
        die "$tool: the restored tree differs from the source (see $OUT/logs/diff-$tool.txt)"
    fi
    local a b
    a=$(cd "$src" && find . -printf '%y %m %p\n' | sort | md5sum)
    b=$(cd "$restored" && find . -printf '%y %m %p\n' | sort | md5sum)
    [[ "$a" == "$b" ]] || die "$tool: the restored tree's types or modes differ from the source"
}

# Make DIR hold the tree FROM the way a checkout would: only files whose
# contents differ are rewritten (and get a new mtime); others stay untouched.
sync_tree() {
    local from="$1" dir="$2"
    mkdir -p "$dir"
    rsync -r -l -p --checksum --delete "$from/" "$dir/"
}

# init_logged TOOL REPO HOME NAME -- initialises TOOL's repository, its
# output in logs/NAME-init.out; the harness stops if that fails.
init_logged() {
    tool_init "$1" "$2" "$3" >"$OUT/logs/$4-init.out" 2>&1 ||
        die "$1 init failed; see $OUT/logs/$4-init.out"
}

# ---- workloads -----------------------------------------------------------

# Kernel: first backup of V1, incremental backup of V2 over it, unchanged
# re-backup, full restore of the latest snapshot (verified); each step's
# reference right after the tools.
workload_kernel() {
    local r="$1" src="$WORK/src/linux" t repo home target
    local ref_home="$WORK/kernel-r$r/reference" ref_tar="$WORK/kernel-r$r/reference/tree.tar"
    round_tools "$r"
    log "kernel round $r ($CACHE): copying linux $KERNEL_V1 to $src"
    rm -rf "$WORK/src" "$WORK/kernel-r$r"
    mkdir -p "$WORK/src" "$ref_home"
    cp -a "$CACHE_DIR/kernel-$KERNEL_V1" "$src"
    for t in "${ROUND_TOOLS[@]}"; do
        repo="$WORK/kernel-r$r/$t/repo"
        home="$WORK/kernel-r$r/$t/home"
        init_logged "$t" "$repo" "$home" "kernel-r$r-$t"
        tool_cmd_backup "$t" "$repo" "$src" first
        prepare_cache "$src" "$repo" "$home"
        measure kernel "$r" "$t" first "$repo" "$home"
    done
    reference_cmd first "$src"
    prepare_cache "$src"
    measure kernel "$r" reference first "" "$ref_home"
    log "kernel round $r ($CACHE): updating $src to linux $KERNEL_V2"
    sync_tree "$CACHE_DIR/kernel-$KERNEL_V2" "$src"
    for t in "${ROUND_TOOLS[@]}"; do
        repo="$WORK/kernel-r$r/$t/repo"
        home="$WORK/kernel-r$r/$t/home"
        tool_cmd_backup "$t" "$repo" "$src" incremental
        prepare_cache "$src" "$repo" "$home"
        measure kernel "$r" "$t" incremental "$repo" "$home"
    done
    reference_cmd incremental "$src"
    prepare_cache "$src"
    measure kernel "$r" reference incremental "" "$ref_home"
    for t in "${ROUND_TOOLS[@]}"; do
        repo="$WORK/kernel-r$r/$t/repo"
        home="$WORK/kernel-r$r/$t/home"
        tool_cmd_backup "$t" "$repo" "$src" unchanged
        prepare_cache "$src" "$repo" "$home"
        measure kernel "$r" "$t" unchanged "$repo" "$home"
    done
    reference_cmd unchanged "$src"
    prepare_cache "$src"
    measure kernel "$r" reference unchanged "" "$ref_home"
    # Every tool restores into its own fresh directory, and the restored trees
    # are deleted only when the round ends: this file system (ext4 without a
    # journal) skips inodes freed within the last minute when it allocates new
    # ones, so a restore started right after deleting 78,000 files would pay
    # for scanning past them, whichever tool runs it.
    for t in "${ROUND_TOOLS[@]}"; do
        repo="$WORK/kernel-r$r/$t/repo"
        home="$WORK/kernel-r$r/$t/home"
        target="$WORK/restore-r$r-$t"
        rm -rf "$target"
        mkdir -p "$target"
        tool_cmd_restore "$t" "$repo" "$target" unchanged "$src"
        prepare_cache "$repo" "$home"
        measure kernel "$r" "$t" restore "$repo" "$home"
        verify_restore "$src" "$target$src" "$t"
    done
    # The reference restore reads an uncompressed tar of the tree from the
    # page cache, whatever the pass.
    tar -cf "$ref_tar" -C / "${src#/}"
    target="$WORK/restore-r$r-reference"
    mkdir -p "$target"
    reference_cmd restore "$src" "$target" "$ref_tar"
    prepare_cache
    cat "$ref_tar" >/dev/null
    measure kernel "$r" reference restore "" "$ref_home"
    verify_restore "$src" "$target$src" reference
    rm -rf "$WORK/kernel-r$r" "$WORK/src" "$WORK"/restore-r"$r"-*
    sync
}

# TypeScript: TS_COUNT nightlies as TS_COUNT daily backups of one directory;
# the reference of a day is the first backup's (tar | zstd) on day 1 and the
# incremental one's (tar | wc -c) after it.
workload_ts() {
    local r="$1" src="$WORK/src/typescript" t repo home i=0 v ref_home="$WORK/ts-r$r/reference"
    round_tools "$r"
    rm -rf "$WORK/src" "$WORK/ts-r$r"
    mkdir -p "$ref_home"
    for t in "${ROUND_TOOLS[@]}"; do
        repo="$WORK/ts-r$r/$t/repo"
        home="$WORK/ts-r$r/$t/home"
        init_logged "$t" "$repo" "$home" "ts-r$r-$t"
    done
    for v in "${TS_VERSIONS[@]}"; do
        i=$((i + 1))
        log "typescript round $r: day $i ($v)"
        sync_tree "$CACHE_DIR/typescript/$v" "$src"
        for t in "${ROUND_TOOLS[@]}"; do
            repo="$WORK/ts-r$r/$t/repo"
            home="$WORK/ts-r$r/$t/home"
            tool_cmd_backup "$t" "$repo" "$src" "day$i"
            prepare_cache "$src" "$repo" "$home"
            measure ts "$r" "$t" "$i" "$repo" "$home"
        done
        if [[ $i == 1 ]]; then reference_cmd first "$src"; else reference_cmd incremental "$src"; fi
        prepare_cache "$src"
        measure ts "$r" reference "$i" "" "$ref_home"
    done
    local target="$WORK/restore"
    rm -rf "$target"
    mkdir -p "$target"
    # Correctness of the last day, for every tool (not measured).
    for t in "${ROUND_TOOLS[@]}"; do
        tool_cmd_restore "$t" "$WORK/ts-r$r/$t/repo" "$target" "day$i" "$src"
        tool_env "$t" "$WORK/ts-r$r/$t/home"
        env -C "$CMD_DIR" "${TOOL_ENV[@]}" "${CMD[@]}" >"$OUT/logs/ts-r$r-$t-restore.out" 2>&1 ||
            die "$t restore failed; see $OUT/logs/ts-r$r-$t-restore.out"
        verify_restore "$src" "$target$src" "$t"
        rm -rf "$target"
        mkdir -p "$target"
    done
    rm -rf "$target" "$WORK/ts-r$r" "$WORK/src"
}

# One 2 GiB file, read from a warm page cache, into an empty repository.
workload_bigfile() {
    local r="$1" t repo home
    round_tools "$r"
    rm -rf "$WORK/big-r$r"
    for t in "${ROUND_TOOLS[@]}"; do
        repo="$WORK/big-r$r/$t/repo"
        home="$WORK/big-r$r/$t/home"
        init_logged "$t" "$repo" "$home" "big-r$r-$t"
        cat "$BIGFILE" >/dev/null
        tool_cmd_backup "$t" "$repo" "$BIGFILE" big
        measure bigfile "$r" "$t" backup "$repo" "$home"
        rm -rf "$WORK/big-r$r/$t"
    done
    mkdir -p "$WORK/big-r$r/reference"
    cat "$BIGFILE" >/dev/null
    reference_cmd big "$BIGFILE"
    measure bigfile "$r" reference backup "" "$WORK/big-r$r/reference"
    rm -rf "$WORK/big-r$r"
}

# ---- main ----------------------------------------------------------------

install_tools
[[ $PREPARE_ONLY == 1 ]] || build_cairn
has_workload kernel && { fetch_kernel "$KERNEL_V1"; fetch_kernel "$KERNEL_V2"; }
has_workload ts && fetch_typescript
has_workload bigfile && fetch_bigfile
if [[ $PREPARE_ONLY == 1 ]]; then
    log "peers installed and corpora cached; nothing measured"
    rm -rf "$OUT"
    exit 0
fi

{
    echo "command: $COMMAND_LINE"
    echo "env: CAIRN_BIN=${CAIRN_BIN} CAIRN_BENCH_CACHE=$CACHE_DIR CAIRN_BENCH_WORK=$WORK"
    echo "cairn_profile: $CAIRN_BIN_PROFILE"
    echo "cairn_commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "started: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "runs: $RUNS"
    echo "workloads: $WORKLOADS"
    echo "cache: $CACHE_MODES"
    echo "cairn_zstd_level: $CAIRN_ZSTD_LEVEL"
    echo "kernel: linux-source-6.1 $KERNEL_V1 -> $KERNEL_V2"
    if has_workload kernel; then
        echo "kernel_tree: $(du -sh "$CACHE_DIR/kernel-$KERNEL_V1" | cut -f1)," \
            "$(find "$CACHE_DIR/kernel-$KERNEL_V1" -type f | wc -l) files"
    fi
    if has_workload ts; then
        echo "typescript: ${#TS_VERSIONS[@]} nightlies, ${TS_VERSIONS[0]} .. ${TS_VERSIONS[-1]}"
    fi
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')," \
        "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)," \
        "$(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
    echo "disk: $(df -h --output=source,fstype "$WORK" | tail -n 1 | tr -s ' ')"
    echo "load_before: $(cut -d' ' -f1-3 /proc/loadavg)"
    for t in "${TOOL_LIST[@]}"; do
        echo "version_$t: $(tool_version "$t")"
        echo "settings_$t: $(tool_settings "$t")"
    done
} >"$META"

for CACHE in "${CACHE_LIST[@]}"; do
    for ((r = 1; r <= RUNS; r++)); do
        has_workload kernel && workload_kernel "$r"
        has_workload ts && workload_ts "$r"
    done
done
# The 2 GiB file is read from a warm page cache in every round.
CACHE=warm
for ((r = 1; r <= RUNS; r++)); do
    has_workload bigfile && workload_bigfile "$r"
done

{
    echo "caches_dropped: $CACHES_DROPPED"
    echo "load_after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "finished: $(date -u '+%Y-%m-%d %H:%M UTC')"
} >>"$META"

log "done: $RESULTS"
if [[ $REPORT == 1 ]]; then
    mkdir -p "$ROOT/docs"
    python3 "$HERE/report.py" "$OUT" ${CAIRN_BENCH_NOTES:+"$CAIRN_BENCH_NOTES"} \
        >"$ROOT/docs/BENCHMARKS.md.tmp"
    mv "$ROOT/docs/BENCHMARKS.md.tmp" "$ROOT/docs/BENCHMARKS.md"
    cp "$OUT/table.csv" "$ROOT/docs/BENCHMARKS.csv"
    log "wrote docs/BENCHMARKS.md and docs/BENCHMARKS.csv"
fi
