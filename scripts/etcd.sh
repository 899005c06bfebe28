# shellcheck shell=bash
# A three-member etcd cluster for the tests, on 127.0.0.1 only; sourced,
# never run (needs free_port and wait_for from s3-servers.sh).
#
#   start_etcd DIR   starts three etcd members under DIR (etcd-server from
#                    apt), waits until the cluster answers, and exports
#                    CAIRN_TEST_ETCD (the comma list of client URLs). Pids
#                    go to DIR/etcd*.pid; stop_etcd DIR stops them.
#
# Each test keeps its cluster under its own key prefix, so one etcd serves
# every test of the run.

etcd_log() { printf 'etcd: %s\n' "$*" >&2; }

start_etcd() {
    local dir=$1 i
    local -a client peer
    for i in 1 2 3; do
        client[i]=$(free_port)
        peer[i]=$(free_port)
    done
    local initial="e1=http://127.0.0.1:${peer[1]},e2=http://127.0.0.1:${peer[2]},e3=http://127.0.0.1:${peer[3]}"
    for i in 1 2 3; do
        mkdir -p "$dir/etcd$i"
        etcd --name "e$i" --data-dir "$dir/etcd$i/data" \
            --listen-client-urls "http://127.0.0.1:${client[i]}" \
            --advertise-client-urls "http://127.0.0.1:${client[i]}" \
            --listen-peer-urls "http://127.0.0.1:${peer[i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${peer[i]}" \
            --initial-cluster "$initial" --initial-cluster-token cairn-test \
            --initial-cluster-state new >"$dir/etcd$i/log" 2>&1 &
        echo $! >"$dir/etcd$i.pid"
    done
    CAIRN_TEST_ETCD="http://127.0.0.1:${client[1]},http://127.0.0.1:${client[2]},http://127.0.0.1:${client[3]}"
    wait_for 60 "etcd cluster" env ETCDCTL_API=3 etcdctl --endpoints "$CAIRN_TEST_ETCD" \
        --command-timeout=2s endpoint health
    export CAIRN_TEST_ETCD
    etcd_log "three members at $CAIRN_TEST_ETCD"
}

stop_etcd() {
    local dir=$1 f
    for f in "$dir"/etcd*.pid; do
        [[ -f "$f" ]] && kill "$(cat "$f")" 2>/dev/null || true
    done
    for f in "$dir"/etcd*.pid; do
        [[ -f "$f" ]] || continue
        while kill -0 "$(cat "$f")" 2>/dev/null; do sleep 0.1; done
        rm -f "$f"
    done
}
