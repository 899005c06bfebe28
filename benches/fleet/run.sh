#!/usr/bin/env bash
# The fleet path against the local one: the same tree backed up with the
# embedded index and through three `cairn-index` nodes (R = 2), and an
# unchanged re-backup through the cluster with latency added to every index
# round trip.
#
#   benches/fleet/run.sh [--runs N] [--delays "0 1 5 20"] [--s3-delay MS] [--source DIR]
#
# Everything runs inside a network namespace this script creates and
# removes (cairn-fleet-PID): the nodes listen on its loopback and the client
# runs in it. Every index connection (client to node and node to node) goes
# through `delay_proxy.py`, which delivers each chunk half of the added round
# trip late in each direction. (`tc netem` on the namespace's loopback would
# do the same, but this machine's kernel has no netem; the proxy needs
# nothing from the kernel.) The repository is a local directory in both
# modes, so the index is the only difference.
#
# Workloads, per round and mode (fresh repository each round):
#   first       backup of the source tree, with the CPU seconds of the
#               client and of the servers it ran beside (index or Garage
#               nodes)
#   unchanged   the same tree again
#   incremental after appending a line to every 100th file
#   restore     of the latest snapshot
# and, in cluster mode, the unchanged re-backup at each added delay, with
# the number of index requests it made (the nodes' own counters), by the
# client that made the backups and by one with an empty cache.
#
# Then the same tree in a repository on a three-node Garage cluster (started
# in the namespace from the binaries scripts/s3-servers.sh builds), embedded
# index: the first backup, and the unchanged re-backup with --s3-delay
# milliseconds (default 20) added to every S3 request by a second proxy.
#
# Output: a TSV file and a Markdown table (medians over the rounds, ratios
# of cluster to embedded from the same run) on stdout.
#
# Environment:
#   CAIRN_BIN, CAIRN_INDEX_BIN  binaries (default: the release build in the
#                               target directory, built if missing)
#   CAIRN_BENCH_CACHE           corpora cache (default /work/.cache/cairn-corpora)
#   CAIRN_BENCH_WORK            scratch space (default /var/tmp/cairn-fleet)
#   CAIRN_BENCH_TOOLS           where the -O3 Garage is built once (default
#                               /work/.cache/cairn-tools/release)
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

RUNS=3
DELAYS="0 1 5 20"
S3_DELAY=20
SOURCE=""
while (($#)); do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --delays) DELAYS=$2; shift 2 ;;
        --s3-delay) S3_DELAY=$2; shift 2 ;;
        --source) SOURCE=$2; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--delays \"0 1 5 20\"] [--s3-delay MS] [--source DIR]" >&2; exit 2 ;;
    esac
done

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { echo "fleet: error: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (network namespaces)"
command -v ip >/dev/null || die "needs ip (iproute2)"

CACHE=${CAIRN_BENCH_CACHE:-/work/.cache/cairn-corpora}
WORK=${CAIRN_BENCH_WORK:-/var/tmp/cairn-fleet}
CAIRN_BIN=${CAIRN_BIN:-$CARGO_TARGET_DIR/release/cairn}
CAIRN_INDEX_BIN=${CAIRN_INDEX_BIN:-$CARGO_TARGET_DIR/release/cairn-index}
if [[ ! -x $CAIRN_BIN || ! -x $CAIRN_INDEX_BIN ]]; then
    log "building the release binaries"
    (cd "$CAIRN_ROOT" && cargo build --release --locked -p cairn-client -p cairn-index-server)
fi

# The source tree: given, else the newest Debian linux-source-6.1 (cached).
# shellcheck source=benches/lib.sh
source "$CAIRN_ROOT/benches/lib.sh"
[[ -n $SOURCE ]] || SOURCE=$(kernel_tree "$CACHE")
[[ -d $SOURCE ]] || die "no source tree at $SOURCE"

NS="cairn-fleet-$$"
PORTS=(7421 7422 7423)
PROXIES=(8421 8422 8423)
METRICS=(9421 9422 9423)
NODE_PIDS=()
PROXY_PID=""
ETCD_PID=""
ETCD_URL="http://127.0.0.1:2379"
rm -rf "$WORK" && mkdir -p "$WORK"
# Scratch space in memory: on a disk mounted with online discard, the TRIMs
# that follow deleting one step's 1.5 GB slow the next step 2-4x, which
# then measures the disk, not Cairn (a restore timed after another one:
# 6.8 s, then 26 s, whatever the index).
mount -t tmpfs -o size=16g cairn-bench "$WORK"
SRC="$WORK/src"
S3_PROXY_PID=""
cleanup() {
    local pid
    for pid in "${NODE_PIDS[@]}" $PROXY_PID $S3_PROXY_PID $ETCD_PID; do kill "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}" $PROXY_PID $S3_PROXY_PID $ETCD_PID; do wait "$pid" 2>/dev/null || true; done
    [[ -d $WORK/s3 ]] && stop_s3_servers "$WORK/s3"
    ip netns del "$NS" 2>/dev/null || true
    umount "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
in_ns() { ip netns exec "$NS" "$@"; }

# Daemons start with `ip netns exec` directly, not through in_ns, so that
# $! is the daemon itself and cleanup can stop it.
# The round-trip time added to every index connection, in milliseconds.
DELAY_FILE="$WORK/delay-ms"
set_delay() { echo "$1" > "$DELAY_FILE"; }
set_delay 0
ip netns exec "$NS" python3 "$(dirname "${BASH_SOURCE[0]}")/delay_proxy.py" "$DELAY_FILE" \
    "${PROXIES[0]}:${PORTS[0]}" "${PROXIES[1]}:${PORTS[1]}" "${PROXIES[2]}:${PORTS[2]}" &
PROXY_PID=$!

# etcd, the index cluster's control plane, in the namespace (one member).
ip netns exec "$NS" etcd --data-dir "$WORK/etcd" --listen-client-urls "$ETCD_URL" \
    --advertise-client-urls "$ETCD_URL" --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 > "$WORK/etcd.log" 2>&1 &
ETCD_PID=$!

# Garage in the namespace, behind its own delay proxy. Its share of the
# machine is part of what is measured, so it is built as it would be
# deployed (-O3, cached apart from the tests' -O1 build).
export CAIRN_S3_OPT_LEVEL=3 CAIRN_TOOLS="${CAIRN_BENCH_TOOLS:-/work/.cache/cairn-tools/release}"
# shellcheck source=scripts/s3-servers.sh
source "$CAIRN_ROOT/scripts/s3-servers.sh"
install_s3_servers
in_ns bash -c 'source "$1/scripts/s3-servers.sh" && start_s3_servers "$2/s3" &&
    declare -p CAIRN_TEST_GARAGE_ENDPOINT AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY > "$2/s3/env"' \
    _ "$CAIRN_ROOT" "$WORK" 2> "$WORK/s3-servers.log" || die "Garage did not start: $(cat "$WORK/s3-servers.log")"
# shellcheck disable=SC1091
source "$WORK/s3/env"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
S3_PROXY_PORT=8500
S3_DELAY_FILE="$WORK/s3-delay-ms"
echo 0 > "$S3_DELAY_FILE"
ip netns exec "$NS" python3 "$(dirname "${BASH_SOURCE[0]}")/delay_proxy.py" "$S3_DELAY_FILE" \
    "$S3_PROXY_PORT:${CAIRN_TEST_GARAGE_ENDPOINT##*:}" &
S3_PROXY_PID=$!

# The client's cache (filters, tree packs) lives in the scratch space.
export XDG_CACHE_HOME="$WORK/cache"
export CAIRN_PASSWORD="fleet benchmark" CAIRN_KDF_MEMORY_KIB=65536
cairn() { in_ns env CAIRN_REPO="$REPO" "$CAIRN_BIN" "$@"; }

index_requests() {
    local total=0 n i
    for i in 0 1 2; do
        n=$(in_ns python3 -c '
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.startswith("cairn_index_requests_total"))))
' "${METRICS[i]}")
        total=$((total + n))
    done
    echo "$total"
}

start_cluster() {
    local i deadline
    # A fresh cluster each round: its own key prefix in etcd. Clients and
    # peers reach each node through its delay proxy.
    local etcd=(--etcd "$ETCD_URL" --etcd-prefix "/fleet-$round-$mode/")
    NODE_PIDS=()
    for i in 1 2 3; do
        ip netns exec "$NS" "$CAIRN_INDEX_BIN" serve --node-id "n$i" --listen "127.0.0.1:${PORTS[i-1]}" \
            --metrics-listen "127.0.0.1:${METRICS[i-1]}" --data-dir "$WORK/node$i" \
            --tokens "$WORK/tokens.toml" --advertise "http://127.0.0.1:${PROXIES[i-1]}" "${etcd[@]}" \
            > "$WORK/node$i.log" 2>&1 &
        NODE_PIDS+=($!)
    done
    deadline=$((SECONDS + 60))
    until in_ns "$CAIRN_INDEX_BIN" layout add n1 n2 n3 --replication 2 "${etcd[@]}" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "the nodes did not register: $(cat "$WORK"/node?.log)"
        sleep 0.2
    done
    in_ns "$CAIRN_INDEX_BIN" layout apply "${etcd[@]}" >/dev/null
    until in_ns "$CAIRN_INDEX_BIN" status "${etcd[@]}" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "the cluster did not become healthy"
        sleep 0.2
    done
}

stop_cluster() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    NODE_PIDS=()
    rm -rf "$WORK"/node?
}

# CPU seconds (user and system) the given processes have used so far.
cpu_seconds() {
    local ticks=0 pid
    for pid; do ticks=$((ticks + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", t / hz }'
}

# The first backup of MODE, timed like every step, with the CPU seconds of
# the client and of the servers (given by pid) it ran beside: on one
# machine their work and the client's share the same cores.
first_backup() {
    local mode=$1 t before
    shift
    before=$(cpu_seconds "$@")
    t=$(timed in_ns /usr/bin/time -f '%U %S' -o "$WORK/client-cpu" env CAIRN_REPO="$REPO" "$CAIRN_BIN" backup -q "$SRC")
    record "$round" "$mode" first 0 "$t" -
    record "$round" "$mode" first_cpu_client 0 "$(awk '{ printf "%.2f\n", $1 + $2 }' "$WORK/client-cpu")" -
    record "$round" "$mode" first_cpu_servers 0 "$(awk -v a="$before" -v b="$(cpu_seconds "$@")" 'BEGIN { printf "%.2f\n", b - a }')" -
    log "round $round $mode: first $t s"
}

RESULTS="$WORK/../cairn-fleet-results.tsv"
printf 'round\tmode\tworkload\tdelay_ms\tseconds\tindex_requests\n' > "$RESULTS"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; }

log "source: $SOURCE ($(find "$SOURCE" -type d | wc -l) directories, $(find "$SOURCE" -type f | wc -l) files)"
for round in $(seq 1 "$RUNS"); do
    for mode in embedded cluster; do
        rm -rf "$SRC" "$WORK/repo" "$WORK/restore" "$WORK/tokens.toml"
        cp -a "$SOURCE" "$SRC"
        REPO="$WORK/repo"
        unset CAIRN_INDEX CAIRN_INDEX_TOKEN
        repo_id=$(cairn init --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["repo_id"])')
        if [[ $mode == cluster ]]; then
            export CAIRN_INDEX_TOKEN
            CAIRN_INDEX_TOKEN=$(in_ns "$CAIRN_INDEX_BIN" token add --tokens "$WORK/tokens.toml" --repository "$repo_id" --role backup)
            start_cluster
            export CAIRN_INDEX="http://127.0.0.1:${PROXIES[0]},http://127.0.0.1:${PROXIES[1]},http://127.0.0.1:${PROXIES[2]}"
        fi
        set_delay 0
        first_backup "$mode" "${NODE_PIDS[@]}"
        t=$(timed cairn backup -q "$SRC"); record "$round" "$mode" unchanged 0 "$t" -
        if [[ $mode == cluster ]]; then
            for d in $DELAYS; do
                set_delay "$d"
                before=$(index_requests)
                t=$(timed cairn backup -q "$SRC")
                record "$round" "$mode" unchanged_delay "$d" "$t" "$(($(index_requests) - before))"
                # A client with an empty cache (a new machine): no tree
                # packs of its own, no filter.
                before=$(index_requests)
                t_cold=$(XDG_CACHE_HOME="$WORK/cold-$d" timed cairn backup -q "$SRC")
                record "$round" "$mode" unchanged_cold "$d" "$t_cold" "$(($(index_requests) - before))"
                rm -rf "$WORK/cold-$d"
                log "round $round cluster: unchanged with +$d ms: $t s (empty client cache: $t_cold s)"
            done
            set_delay 0
        fi
        find "$SRC" -type f | awk 'NR % 100 == 0' | while read -r f; do echo "// fleet" >> "$f"; done
        t=$(timed cairn backup -q "$SRC"); record "$round" "$mode" incremental 0 "$t" -
        t=$(timed cairn restore -q latest --target "$WORK/restore"); record "$round" "$mode" restore 0 "$t" -
        [[ $mode == cluster ]] && stop_cluster
    done

    # The repository on Garage, embedded index.
    rm -rf "$SRC" && cp -a "$SOURCE" "$SRC"
    REPO="s3://cairn/fleet-$round"
    unset CAIRN_INDEX CAIRN_INDEX_TOKEN
    # Straight to Garage; through the delay proxy only when latency is added
    # (the proxy relays every byte in Python, which a first backup's
    # 300 MB would make part of the measurement).
    export CAIRN_S3_ENDPOINT=$CAIRN_TEST_GARAGE_ENDPOINT CAIRN_S3_REGION=garage
    cairn init >/dev/null
    first_backup s3 $(cat "$WORK"/s3/garage?.pid)
    t=$(timed cairn backup -q "$SRC"); record "$round" s3 unchanged 0 "$t" -
    export CAIRN_S3_ENDPOINT="http://127.0.0.1:$S3_PROXY_PORT"
    echo "$S3_DELAY" > "$S3_DELAY_FILE"
    t=$(timed cairn backup -q "$SRC"); record "$round" s3 unchanged_delay "$S3_DELAY" "$t" -
    log "round $round Garage: unchanged with +$S3_DELAY ms per S3 request: $t s"
    echo 0 > "$S3_DELAY_FILE"
    unset CAIRN_S3_ENDPOINT CAIRN_S3_REGION
done

python3 - "$RESULTS" "$RUNS" "$(git -C "$CAIRN_ROOT" rev-parse --short HEAD)" "$(nproc)" "$SOURCE" "$DELAYS" "$S3_DELAY" <<'EOF' | tee "$CAIRN_ROOT/docs/BENCHMARKS-fleet.md"
import csv, datetime, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
runs, commit, cores, source, delays, s3_delay = sys.argv[2:8]
print("# The fleet path against the local one\n")
print(f"`bash benches/fleet/run.sh --runs {runs}` on {datetime.date.today()}, commit {commit}, "
      f"{cores} cores; source tree {source.rstrip('/').split('/')[-1]}; medians of {runs} rounds, "
      "ratios from the same run. Latency is added per index connection (delays "
      f"{delays} ms) and per S3 request ({s3_delay} ms) by `benches/fleet/delay_proxy.py`.\n")
def med(mode, workload, delay="0"):
    v = [float(r["seconds"]) for r in rows if r["mode"] == mode and r["workload"] == workload and r["delay_ms"] == delay]
    return statistics.median(v) if v else None
print("| workload | embedded | 3 nodes, R = 2 | ratio |")
print("|---|---|---|---|")
for w in ["first", "incremental", "unchanged", "restore"]:
    e, c = med("embedded", w), med("cluster", w)
    print(f"| {w} | {e:.2f} s | {c:.2f} s | {c / e:.2f}x |")
print()
print("| added index round trip | unchanged re-backup | / embedded | index requests | empty client cache | / embedded | index requests |")
print("|---|---|---|---|---|---|---|")
e = med("embedded", "unchanged")
def reqs(workload, d):
    v = [int(r["index_requests"]) for r in rows if r["mode"] == "cluster" and r["workload"] == workload and r["delay_ms"] == d]
    return statistics.median(v)
for d in sorted({r["delay_ms"] for r in rows if r["workload"] == "unchanged_delay" and r["mode"] == "cluster"}, key=float):
    c, k = med("cluster", "unchanged_delay", d), med("cluster", "unchanged_cold", d)
    print(f"| {d} ms | {c:.2f} s | {c / e:.2f}x | {reqs('unchanged_delay', d):.0f} | {k:.2f} s | {k / e:.2f}x | {reqs('unchanged_cold', d):.0f} |")
print()
print("| repository on Garage (embedded index) | seconds | / local repository |")
print("|---|---|---|")
for w, d in [("first", "0"), ("unchanged", "0")] + sorted({("unchanged_delay", r["delay_ms"]) for r in rows if r["mode"] == "s3" and r["workload"] == "unchanged_delay"}):
    c = med("s3", w, d)
    local = med("embedded", "unchanged" if w.startswith("unchanged") else w)
    label = w if d == "0" else f"unchanged, +{d} ms per S3 request"
    print(f"| {label} | {c:.2f} s | {c / local:.2f}x |")
print()
print("| first backup | wall | client CPU | servers' CPU | all CPU / wall |")
print("|---|---|---|---|---|")
for mode, label in [("embedded", "embedded index, local repository"), ("cluster", "3 index nodes, local repository"), ("s3", "embedded index, repository on 3 Garage nodes")]:
    w, c, v = med(mode, "first"), med(mode, "first_cpu_client"), med(mode, "first_cpu_servers")
    if c is not None:
        print(f"| {label} | {w:.2f} s | {c:.2f} s | {v:.2f} s | {(c + v) / w:.2f} |")
EOF
log "results: $RESULTS"
