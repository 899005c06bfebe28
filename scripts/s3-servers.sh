# shellcheck shell=bash
# S3 servers for the tests, on 127.0.0.1 only; sourced, never run.
#
#   install_s3_servers   builds garage and s3s-fs once into $CAIRN_TOOLS
#                        (cached: a second run finds them and builds nothing)
#   start_s3_servers DIR starts a three-node Garage cluster (replication
#                        factor 3) and one s3s-fs under DIR, waits until each
#                        answers, creates the key and the bucket, and exports
#                        the CAIRN_TEST_* variables the tests read. Pids go
#                        to DIR/*.pid; stop_s3_servers DIR stops them.
#
# Ports are picked free by the kernel just before the servers start.

CAIRN_TOOLS="${CAIRN_TOOLS:-/work/.cache/cairn-tools}"
if ! mkdir -p "$CAIRN_TOOLS" 2>/dev/null; then
    CAIRN_TOOLS="$HOME/.cache/cairn-tools"
    mkdir -p "$CAIRN_TOOLS"
fi
export CAIRN_TOOLS

GARAGE_VERSION=2.5.0
S3S_FS_VERSION=0.14.1

s3_log() { printf 's3-servers: %s\n' "$*" >&2; }

# install_one NAME VERSION [cargo install flags...]
install_one() {
    local name=$1 version=$2
    shift 2
    # The stamp names the flags too: a build with other features is another build.
    local opt_level=${CAIRN_S3_OPT_LEVEL:-1} flags stamp
    flags=$(printf '%s ' "$opt_level" "$@" | cksum | cut -d' ' -f1)
    stamp="$CAIRN_TOOLS/.installed-$name-$version-$flags"
    if [[ -x "$CAIRN_TOOLS/bin/$name" && -f "$stamp" ]]; then
        return
    fi
    s3_log "building $name $version (once; cached in $CAIRN_TOOLS)"
    # Test servers handle megabytes: -O1 builds in far less time than -O3
    # and serves them as fast as the tests need. A benchmark that measures
    # the servers' share sets CAIRN_S3_OPT_LEVEL=3 and a CAIRN_TOOLS of its own.
    CARGO_TARGET_DIR="$CAIRN_TOOLS/target" CARGO_PROFILE_RELEASE_OPT_LEVEL=$opt_level \
        cargo install "$name@$version" --locked --root "$CAIRN_TOOLS" "$@" >&2
    touch "$stamp"
}

install_s3_servers() {
    install_one s3s-fs "$S3S_FS_VERSION" --features binary
    # Only what the tests use (the LMDB engine, the S3 API), on the system's
    # libsodium and zstd: no SQLite, K2V, metrics, nor bundled C libraries.
    install_one garage "$GARAGE_VERSION" --no-default-features --features lmdb,system-libs
    # The build directories are only needed to build.
    rm -rf "$CAIRN_TOOLS/target"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            s3_log "$what did not come up within the deadline"
            return 1
        fi
        sleep 0.2
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_s3_servers() {
    local dir=$1
    local garage="$CAIRN_TOOLS/bin/garage" s3s="$CAIRN_TOOLS/bin/s3s-fs"
    mkdir -p "$dir"
    local secret
    secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

    # --- Garage: three nodes, replication factor 3 -----------------------
    local i rpc s3 ids=()
    for i in 1 2 3; do
        rpc=$(free_port)
        s3=$(free_port)
        mkdir -p "$dir/garage$i"
        cat >"$dir/garage$i/garage.toml" <<EOF
metadata_dir = "$dir/garage$i/meta"
data_dir = "$dir/garage$i/data"
db_engine = "lmdb"
replication_factor = 3
# Packs are compressed and encrypted already: compressing again only costs CPU.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
EOF
        echo "$s3" >"$dir/garage$i/s3.port"
        "$garage" -c "$dir/garage$i/garage.toml" server >"$dir/garage$i/log" 2>&1 &
        disown
        echo $! >"$dir/garage$i.pid"
    done
    for i in 1 2 3; do
        wait_for 60 "garage node $i" port_open "$(cat "$dir/garage$i/s3.port")"
        wait_for 30 "garage node $i id" "$garage" -c "$dir/garage$i/garage.toml" node id -q
        ids+=("$("$garage" -c "$dir/garage$i/garage.toml" node id -q)")
    done
    local g=("$garage" -c "$dir/garage1/garage.toml")
    for i in 1 2; do
        "${g[@]}" node connect "${ids[$i]}" >/dev/null
    done
    for i in 0 1 2; do
        "${g[@]}" layout assign -z dc1 -c 1G "${ids[$i]%@*}" >/dev/null
    done
    "${g[@]}" layout apply --version 1 >/dev/null
    local key_id secret_key
    key_id="GK$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
    secret_key=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    wait_for 60 "garage key import" "${g[@]}" key import --yes -n cairn "$key_id" "$secret_key"
    "${g[@]}" bucket create cairn >/dev/null
    "${g[@]}" bucket allow --read --write --owner cairn --key cairn >/dev/null

    export CAIRN_TEST_GARAGE_ENDPOINT="http://127.0.0.1:$(cat "$dir/garage1/s3.port")"
    # Credentials reach clients through the standard AWS chain only.
    export AWS_ACCESS_KEY_ID="$key_id"
    export AWS_SECRET_ACCESS_KEY="$secret_key"
    export CAIRN_TEST_GARAGE_REGION=garage
    export CAIRN_TEST_GARAGE_BUCKET=cairn
    # For the test that stops a node during a backup (never node 1, which
    # the clients talk to) and starts it again.
    export CAIRN_TEST_GARAGE_BIN="$garage"
    export CAIRN_TEST_GARAGE_NODE3_CONFIG="$dir/garage3/garage.toml"
    export CAIRN_TEST_GARAGE_NODE3_PIDFILE="$dir/garage3.pid"
    # For the test that kills a node whose S3 endpoint a client uses, among
    # several (node 2; the client lists nodes 2 and 1).
    export CAIRN_TEST_GARAGE_NODE2_CONFIG="$dir/garage2/garage.toml"
    export CAIRN_TEST_GARAGE_NODE2_PIDFILE="$dir/garage2.pid"
    export CAIRN_TEST_GARAGE_ENDPOINT2="http://127.0.0.1:$(cat "$dir/garage2/s3.port")"

    # --- s3s-fs -------------------------------------------------------------
    # The same key as Garage's, so that one set of standard AWS variables
    # serves both servers.
    local port
    port=$(free_port)
    mkdir -p "$dir/s3s/cairn"
    "$s3s" --host 127.0.0.1 --port "$port" --access-key "$key_id" --secret-key "$secret_key" \
        "$dir/s3s" >"$dir/s3s.log" 2>&1 &
    echo $! >"$dir/s3s.pid"
    wait_for 30 "s3s-fs" port_open "$port"
    export CAIRN_TEST_S3S_ENDPOINT="http://127.0.0.1:$port"
    export CAIRN_TEST_S3S_BUCKET=cairn
    s3_log "garage at $CAIRN_TEST_GARAGE_ENDPOINT (3 nodes), s3s-fs at $CAIRN_TEST_S3S_ENDPOINT"
}

stop_s3_servers() {
    local dir=$1 pidfile pid
    for pidfile in "$dir"/*.pid; do
        [[ -f "$pidfile" ]] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
    done
    for pidfile in "$dir"/*.pid; do
        [[ -f "$pidfile" ]] || continue
        pid=$(cat "$pidfile")
        # Not our child when a test restarted it: poll until it is gone.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
}
