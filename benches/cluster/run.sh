#!/usr/bin/env bash
# The index cluster at scale, scaled down to this machine: the figures
# docs/SCALING.md extrapolates from.
#
#   benches/cluster/run.sh [--records N] [--missed M]
#
#  1. batched lookups per second (4096 fingerprints a call) through one node
#     (no etcd) and through three nodes (R = 2), N records registered;
#  2. bytes per chunk record on disk (RocksDB, after a flush), per replica;
#  3. a fourth node joins: time until the cluster is healthy again, records
#     it streamed, records/s and MB/s;
#  4. anti-entropy: one node stopped, M more records registered, the node
#     started again: time until it has repaired what it missed.
#
# Defaults: N = 10,000,000, M = 1,000,000. Everything on 127.0.0.1, in a
# scratch directory removed at the end. Prints a Markdown table and writes
# it, with the raw JSON lines, next to the scratch directory.
#
# Environment: CAIRN_INDEX_BIN, CAIRN_LOAD_BIN (default: the release builds
# in /work/.cache/cairn-release, built if missing); CAIRN_BENCH_WORK
# (default /var/tmp/cairn-cluster-bench).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"
# shellcheck source=scripts/s3-servers.sh
source "$CAIRN_ROOT/scripts/s3-servers.sh"

RECORDS=10000000
MISSED=1000000
while (($#)); do
    case $1 in
        --records) RECORDS=$2; shift 2 ;;
        --missed) MISSED=$2; shift 2 ;;
        *) echo "usage: $0 [--records N] [--missed M]" >&2; exit 2 ;;
    esac
done

log() { printf 'cluster-bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

RELEASE=${CAIRN_RELEASE_DIR:-/work/.cache/cairn-release}
CAIRN_INDEX_BIN=${CAIRN_INDEX_BIN:-$RELEASE/release/cairn-index}
CAIRN_LOAD_BIN=${CAIRN_LOAD_BIN:-$RELEASE/release/index-load}
if [[ ! -x $CAIRN_INDEX_BIN || ! -x $CAIRN_LOAD_BIN ]]; then
    log "building the release binaries"
    (cd "$CAIRN_ROOT" && CARGO_TARGET_DIR=$RELEASE cargo build --release --locked \
        -p cairn-index-server --bin cairn-index -p cairn-benches --bin index-load)
fi

WORK=${CAIRN_BENCH_WORK:-/var/tmp/cairn-cluster-bench}
rm -rf "$WORK" && mkdir -p "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

ETCD_PORT=$(free_port)
ETCD_PEER=$(free_port)
ETCD="http://127.0.0.1:$ETCD_PORT"
etcd --data-dir "$WORK/etcd" --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER" > "$WORK/etcd.log" 2>&1 &
PIDS+=($!)
wait_for 30 etcd port_open "$ETCD_PORT"

REPO=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
TOKEN=$("$CAIRN_INDEX_BIN" token add --tokens "$WORK/tokens.toml" --repository "$REPO" --role admin)
RESULTS="$WORK.jsonl"
: > "$RESULTS"

declare -A NODE_PID NODE_ADDR NODE_METRICS
# start_node ID [etcd flags...]: a node on free ports; waits until it listens.
start_node() {
    local id=$1 port metrics
    shift
    port=$(free_port)
    metrics=$(free_port)
    "$CAIRN_INDEX_BIN" serve --node-id "$id" --listen "127.0.0.1:$port" \
        --metrics-listen "127.0.0.1:$metrics" --data-dir "$WORK/$id" \
        --tokens "$WORK/tokens.toml" "$@" > "$WORK/$id.log" 2>&1 &
    NODE_PID[$id]=$!
    PIDS+=($!)
    NODE_ADDR[$id]="http://127.0.0.1:$port"
    NODE_METRICS[$id]=$metrics
    wait_for 30 "node $id" port_open "$port"
}
stop_node() {
    kill "${NODE_PID[$1]}"
    wait "${NODE_PID[$1]}" 2>/dev/null || true
}
metric() {
    python3 - "$1" "$2" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.startswith(sys.argv[2] + " ") or l.startswith(sys.argv[2] + "{"))))
EOF
}
load() {
    "$CAIRN_LOAD_BIN" "$@" --token "$TOKEN" --repo "$REPO" | tee -a "$RESULTS"
}
field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])[sys.argv[1]])' "$1"; }
# Sizes of the nodes' databases after a flush (SIGTERM flushes).
db_bytes() { du -sb "$WORK/$1/repos" | cut -f1; }

# --- 1. one node, no etcd -------------------------------------------------
ONE_N=$((RECORDS / 10))
log "one node: registering $ONE_N records"
start_node solo
load register --index "${NODE_ADDR[solo]}" --records "$ONE_N" --seed 1 > /dev/null
LOOKUP_N=$((ONE_N < 2000000 ? ONE_N : 2000000))
ONE_LOOKUPS=$(load lookup --index "${NODE_ADDR[solo]}" --records "$LOOKUP_N" --seed 1 | field per_second)
stop_node solo
SOLO_BYTES=$(db_bytes solo)

# --- 2. three nodes, R = 2 -------------------------------------------------
# Anti-entropy waits while lookups and moves are measured (the repair
# step restarts n1 with a short interval).
FLAGS=(--etcd "$ETCD" --etcd-prefix /bench/ --antientropy-secs 3600)
for id in n1 n2 n3; do start_node "$id" "${FLAGS[@]}"; done
deadline=$((SECONDS + 60))
CTL=(--etcd "$ETCD" --etcd-prefix /bench/)
until "$CAIRN_INDEX_BIN" layout add n1 n2 n3 --replication 2 "${CTL[@]}" > /dev/null 2>&1; do
    ((SECONDS < deadline)) || die "nodes did not register"
    sleep 0.2
done
"$CAIRN_INDEX_BIN" layout apply "${CTL[@]}" > /dev/null
until "$CAIRN_INDEX_BIN" status "${CTL[@]}" > /dev/null 2>&1; do sleep 0.2; done
log "three nodes: registering $RECORDS records (R = 2)"
REG=$(load register --index "${NODE_ADDR[n1]}" --records "$RECORDS" --seed 2)
REG_RATE=$(echo "$REG" | field per_second)
THREE_LOOKUPS=$(load lookup --index "${NODE_ADDR[n1]}" --records "$LOOKUP_N" --seed 2 | field per_second)

# --- 3. a fourth node joins --------------------------------------------------
start_node n4 "${FLAGS[@]}"
until "$CAIRN_INDEX_BIN" layout add n4 "${CTL[@]}" > /dev/null 2>&1; do sleep 0.2; done
log "a fourth node joins"
MOVE_START=$(date +%s.%N)
"$CAIRN_INDEX_BIN" layout apply "${CTL[@]}" > /dev/null
until "$CAIRN_INDEX_BIN" status "${CTL[@]}" > /dev/null 2>&1; do sleep 0.2; done
MOVE_SECS=$(python3 -c "import time; print(round(time.time() - $MOVE_START, 1))")
MOVED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["records_copied"])' "$WORK/n4/sync.json")
MOVED_PARTS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["moves_done"])' "$WORK/n4/sync.json")

# --- 4. anti-entropy after missed writes ------------------------------------
log "n1 stopped; $MISSED records registered without it"
stop_node n1
# The layout still names n1: writes to it fail and the others take them.
load register --index "${NODE_ADDR[n2]}" --records "$MISSED" --seed 3 > /dev/null
REPAIR_START=$(date +%s.%N)
start_node n1 --etcd "$ETCD" --etcd-prefix /bench/ --antientropy-secs 2
# Repaired: the repair count stops growing for ten seconds (two rounds).
last=-1
stable=0
while ((stable < 10)); do
    sleep 1
    now=$(metric "${NODE_METRICS[n1]}" cairn_index_antientropy_repairs 2> /dev/null || echo 0)
    if ((now == last && now > 0)); then stable=$((stable + 1)); else stable=0; fi
    last=$now
done
REPAIR_SECS=$(python3 -c "import time; print(round(time.time() - $REPAIR_START - 10, 1))")
REPAIRED=$last

for id in n2 n3 n4; do stop_node "$id"; done
stop_node n1
THREE_BYTES=0
for id in n1 n2 n3 n4; do THREE_BYTES=$((THREE_BYTES + $(db_bytes "$id"))); done

python3 - "$RECORDS" "$ONE_N" "$SOLO_BYTES" "$THREE_BYTES" "$ONE_LOOKUPS" "$THREE_LOOKUPS" \
    "$REG_RATE" "$MOVE_SECS" "$MOVED" "$MOVED_PARTS" "$MISSED" "$REPAIRED" "$REPAIR_SECS" <<'EOF' | tee "$WORK.md"
import sys
(records, one_n, solo_bytes, all_bytes, one_l, three_l, reg, move_s, moved, parts,
 missed, repaired, repair_s) = sys.argv[1:]
records, one_n, moved, missed, repaired = map(int, (records, one_n, moved, missed, repaired))
solo_bytes, all_bytes = int(solo_bytes), int(all_bytes)
move_s, repair_s = float(move_s), float(repair_s)
# Replicas held at the end: R = 2 of the first N, and of the M missed.
replicas = 2 * (records + missed)
print("| measure | value |")
print("|---|---|")
print(f"| batched lookups/s, 1 node ({one_n:,} records) | {float(one_l):,.0f} |")
print(f"| batched lookups/s, 3 nodes, R = 2 ({records:,} records) | {float(three_l):,.0f} |")
print(f"| registrations/s, 3 nodes, R = 2 | {float(reg):,.0f} |")
print(f"| bytes on disk per record replica, 1 node | {solo_bytes / one_n:.0f} |")
print(f"| bytes on disk per record replica, 4 nodes | {all_bytes / replicas:.0f} |")
print(f"| a 4th node joins: records streamed | {moved:,} ({parts} partitions) |")
print(f"| a 4th node joins: until healthy | {move_s:.1f} s |")
# A record on the wire: a 32-byte key and its 68-byte value.
print(f"| streaming rate | {moved / move_s:,.0f} records/s, {moved * 100 / move_s / 1e6:.1f} MB/s |")
print(f"| anti-entropy: records repaired after {missed:,} missed | {repaired:,} |")
print(f"| anti-entropy: time to repair | {repair_s:.1f} s ({repaired / max(repair_s, 0.1):,.0f} records/s) |")
EOF
