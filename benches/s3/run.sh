#!/usr/bin/env bash
# Backup throughput to S3 servers on loopback, as a ratio of the throughput
# to a local-directory repository, on the same data in the same run.
#
#   bash benches/s3/run.sh [DATA_MIB] [RUNS]
#
# Starts a three-node Garage cluster (replication factor 3) and s3s-fs on
# 127.0.0.1 (scripts/s3-servers.sh), writes DATA_MIB (default 512) of
# incompressible data plus this workspace's source tree, then backs it up
# RUNS times (default 3) to each target in alternation, each run into a new
# repository with a new index, and prints the medians as a Markdown table.
# CAIRN_BENCH_PROFILE picks the cargo profile (default release).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"
cd "$CAIRN_ROOT"
bash scripts/setup.sh
# shellcheck source=scripts/s3-servers.sh
source scripts/s3-servers.sh

data_mib=${1:-512}
runs=${2:-3}
profile=${CAIRN_BENCH_PROFILE:-release}

cargo build --workspace --locked --profile "$profile" --bins >&2
profile_dir=$profile
[[ "$profile" == dev ]] && profile_dir=debug
cairn="$CARGO_TARGET_DIR/$profile_dir/cairn"

work=$(mktemp -d)
cleanup() {
    stop_s3_servers "$work/servers"
    rm -rf "$work"
}
trap cleanup EXIT
install_s3_servers
start_s3_servers "$work/servers"

data="$work/data"
mkdir -p "$data"
for i in 1 2 3 4; do
    head -c $((data_mib * 1024 * 1024 / 4)) /dev/urandom >"$data/random-$i.bin"
done
git -C "$CAIRN_ROOT" ls-files -z | (cd "$CAIRN_ROOT" && xargs -0 cp --parents -t "$data")
bytes=$(du -sb "$data" | cut -f1)

export CAIRN_PASSWORD=bench CAIRN_KDF_MEMORY_KIB=1024

# backup_once TARGET RUN: prints the seconds one backup took.
backup_once() {
    local target=$1 run=$2 repo
    local -a env=(XDG_CACHE_HOME="$work/cache-$target-$run")
    case $target in
    local) repo="$work/repo-$run" ;;
    garage)
        repo="s3://$CAIRN_TEST_GARAGE_BUCKET/bench-$run"
        env+=(CAIRN_S3_ENDPOINT="$CAIRN_TEST_GARAGE_ENDPOINT" CAIRN_S3_REGION="$CAIRN_TEST_GARAGE_REGION")
        ;;
    s3s-fs)
        repo="s3://$CAIRN_TEST_S3S_BUCKET/bench-$run"
        env+=(CAIRN_S3_ENDPOINT="$CAIRN_TEST_S3S_ENDPOINT")
        ;;
    esac
    env "${env[@]}" "$cairn" --repo "$repo" init >/dev/null
    local start end
    start=$(date +%s.%N)
    env "${env[@]}" "$cairn" --repo "$repo" backup --quiet "$data" >/dev/null
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }' 
}

targets=(local garage s3s-fs)
declare -A times
for run in $(seq "$runs"); do
    for target in "${targets[@]}"; do
        t=$(backup_once "$target" "$run")
        times[$target]+="$t "
        printf 'run %d %-7s %6.2f s\n' "$run" "$target" "$t" >&2
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

local_median=$(echo "${times[local]}" | median)
echo
echo "Backup of $((bytes / 1024 / 1024)) MiB ($data_mib MiB random + the workspace sources), median of $runs runs, profile $profile:"
echo
echo "| target | median time | throughput | ratio to local |"
echo "|---|---|---|---|"
for target in "${targets[@]}"; do
    m=$(echo "${times[$target]}" | median)
    awk -v t="$target" -v m="$m" -v b="$bytes" -v l="$local_median" \
        'BEGIN { printf "| %s | %.2f s | %.0f MiB/s | %.2f |\n", t, m, b / 1048576 / m, l / m }' 
done
