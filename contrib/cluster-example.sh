#!/usr/bin/env bash
# A three-node index cluster on this machine, a repository token, and a
# backup and restore through the cluster.
set -euo pipefail
WORK=${WORK:-$(mktemp -d)}
read -r -a PORTS <<< "${CAIRN_EXAMPLE_PORTS:-7421 7422 7423}"
export CAIRN_REPO="$WORK/repo" CAIRN_PASSWORD="${CAIRN_PASSWORD:-change me}"

# 1. A repository, and a token for it on the index cluster.
REPO_ID=$(cairn init --json | sed -n 's/.*"repo_id":"\([0-9a-f]*\)".*/\1/p')
TOKEN=$(cairn-index token add --tokens "$WORK/tokens.toml" --repository "$REPO_ID" \
  --role backup --label example-client)

# 2. Three nodes; every partition lives on two of them.
for i in 1 2 3; do
  printf '[[node]]\nid = "n%s"\naddress = "http://127.0.0.1:%s"\n\n' "$i" "${PORTS[i-1]}" >> "$WORK/members.toml"
done
for i in 1 2 3; do
  cairn-index serve --node-id "n$i" --listen "127.0.0.1:${PORTS[i-1]}" \
    --data-dir "$WORK/node$i" --tokens "$WORK/tokens.toml" \
    --members "$WORK/members.toml" --replication 2 > "$WORK/node$i.log" 2>&1 &
done
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
for i in 1 2 3; do
  until grep -q "listening on" "$WORK/node$i.log"; do sleep 0.1; done
done

# 3. Back up and restore through the cluster.
export CAIRN_INDEX="http://127.0.0.1:${PORTS[0]},http://127.0.0.1:${PORTS[1]}"
export CAIRN_INDEX_TOKEN="$TOKEN"
mkdir -p "$WORK/data" && echo "hello, cluster" > "$WORK/data/hello.txt"
cairn backup "$WORK/data"
cairn restore latest --target "$WORK/restore"
diff -r "$WORK/data" "$WORK/restore$WORK/data"
echo "cluster example: backup and restore OK"
