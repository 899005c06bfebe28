#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, fixture and integration
# tests, with the services the integration tests need.
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$CAIRN_ROOT"

bash scripts/setup.sh

# --- services -----------------------------------------------------------
# Every service started here records its pid in service_pids and is stopped
# on exit, whether the tests pass, fail or are interrupted. Tests find a
# service through the environment variables exported next to its start.
service_pids=()
# shellcheck source=scripts/s3-servers.sh
source scripts/s3-servers.sh
# shellcheck source=scripts/etcd.sh
source scripts/etcd.sh
s3_dir="$(mktemp -d)"

stop_services() {
    local pid
    for pid in "${service_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${service_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    stop_s3_servers "$s3_dir"
    stop_etcd "$s3_dir"
    rm -rf "$s3_dir"
}
trap stop_services EXIT

# Every phase says when it starts, in seconds since the run began.
phase() { echo "==> [${SECONDS}s] $*"; }

# Building the S3 servers (once; cached) and building the tests both take
# minutes from cold: they build side by side, each filling the other's
# single-threaded stretches.
phase "building the S3 servers and the tests"
install_log="$s3_dir/install.log"
install_s3_servers >"$install_log" 2>&1 &
install_pid=$!
log="$(mktemp)"
trap 'rm -f "$log"; stop_services' EXIT
# RocksDB's C++ first: it is the longest single stretch of a cold build,
# and started late it would be the last thing the tests wait for.
if ! cargo build --locked -p librocksdb-sys || ! cargo test --workspace --locked --no-run; then
    wait "$install_pid" || true
    exit 1
fi
if ! wait "$install_pid"; then
    cat "$install_log" >&2
    echo "building the S3 servers failed (above)" >&2
    exit 1
fi

# S3: a three-node Garage cluster and s3s-fs on 127.0.0.1; a three-member
# etcd cluster, the control plane of the index clusters the tests start
# (their nodes on port 0, each cluster under its own key prefix).
phase "starting Garage, s3s-fs and etcd"
start_s3_servers "$s3_dir"
start_etcd "$s3_dir"

# --- tests --------------------------------------------------------------
# The integration tests run the real binaries (`cairn`, `cairn-index`);
# both packages have integration tests, so `cargo test` builds both.
# Every service is up: a test that finds one missing fails instead of
# skipping (a plain `cargo test` skips those tests and says so).
# The fuzz targets build meanwhile at the lowest priority, on what the
# tests leave of the CPU (they wait on servers much of the time).
fuzz_log="$s3_dir/fuzz-build.log"
nice -n 19 bash scripts/fuzz.sh --build-only >"$fuzz_log" 2>&1 &
fuzz_pid=$!
phase "tests"
export CAIRN_TEST_REQUIRE_SERVICES=1
tests_passed=true
cargo test --workspace --locked 2>&1 | tee "$log" || tests_passed=false
if ! wait "$fuzz_pid"; then
    cat "$fuzz_log" >&2
    echo "building the fuzz targets failed (above)" >&2
    exit 1
fi
$tests_passed || exit 1

# --- fuzzing ------------------------------------------------------------
# Every decoder's fuzz target, briefly, from the committed seed corpora; a
# crash fails the run. (A long run: bash scripts/fuzz.sh --seconds 1800.)
phase "fuzzing"
bash scripts/fuzz.sh --seconds "${CAIRN_FUZZ_SECONDS:-10}"
phase "done"

# One closing line for the whole run (cargo prints one per test binary).
summary=$(awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped", p, f, i }' "$log")
echo "$summary"
if [[ -n "${CAIRN_TEST_SUMMARY:-}" ]]; then
    echo "$summary" >"$CAIRN_TEST_SUMMARY"
fi
