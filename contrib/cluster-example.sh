#!/usr/bin/env bash
# A three-node index cluster on this machine with its control plane in
# etcd, a repository token, a backup and restore through the cluster, and
# one node replaced by another while the cluster serves.
set -euo pipefail
WORK=${WORK:-$(mktemp -d)}
read -r -a PORTS <<< "${CAIRN_EXAMPLE_PORTS:-7421 7422 7423 7424 2379 2380}"
export CAIRN_REPO="$WORK/repo" CAIRN_PASSWORD="${CAIRN_PASSWORD:-change me}"
# Every cairn-index command finds etcd here (or give --etcd URL,...).
export CAIRN_INDEX_ETCD="http://127.0.0.1:${PORTS[4]}"
wait_until() { for _ in $(seq 600); do "$@" >/dev/null 2>&1 && return; sleep 0.2; done; return 1; }

# 1. etcd, the cluster's control plane (one member here; three or five in production).
etcd --data-dir "$WORK/etcd" --listen-client-urls "$CAIRN_INDEX_ETCD" \
  --advertise-client-urls "$CAIRN_INDEX_ETCD" \
  --listen-peer-urls "http://127.0.0.1:${PORTS[5]}" \
  --initial-advertise-peer-urls "http://127.0.0.1:${PORTS[5]}" \
  --initial-cluster "default=http://127.0.0.1:${PORTS[5]}" > "$WORK/etcd.log" 2>&1 &
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# 2. A repository, and a token for it on the index cluster.
REPO_ID=$(cairn init --json | sed -n 's/.*"repo_id":"\([0-9a-f]*\)".*/\1/p')
TOKEN=$(cairn-index token add --tokens "$WORK/tokens.toml" --repository "$REPO_ID" \
  --role backup --label example-client)

# 3. Three nodes register in etcd; the first layout puts every partition on two of them.
declare -A PID
serve() {
  cairn-index serve --node-id "n$1" --listen "127.0.0.1:${PORTS[$1-1]}" \
    --data-dir "$WORK/node$1" --tokens "$WORK/tokens.toml" > "$WORK/node$1.log" 2>&1 &
  PID[$1]=$!
}
for i in 1 2 3; do serve "$i"; done
wait_until cairn-index layout add n1 n2 n3 --replication 2
cairn-index layout apply
wait_until cairn-index status

# 4. Back up and restore through the cluster.
export CAIRN_INDEX="http://127.0.0.1:${PORTS[1]},http://127.0.0.1:${PORTS[2]}"
export CAIRN_INDEX_TOKEN="$TOKEN"
mkdir -p "$WORK/data" && echo "hello, cluster" > "$WORK/data/hello.txt"
cairn backup "$WORK/data"
cairn restore latest --target "$WORK/restore"
diff -r "$WORK/data" "$WORK/restore$WORK/data"

# 5. Replace n1 by n4: n4 streams its partitions, n1 drains; then n1 can stop.
serve 4
wait_until cairn-index layout add n4
cairn-index layout remove n1
cairn-index layout apply
wait_until cairn-index status
kill "${PID[1]}"
cairn-index status
cairn backup "$WORK/data" --host another-client
echo "cluster example: backup, restore and node replacement OK"
