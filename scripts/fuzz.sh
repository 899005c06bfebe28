#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for --seconds each (default 60), starting
# from the committed seed corpora (fuzz/corpus/<target>/), with cargo-fuzz
# on the nightly toolchain and AddressSanitizer; without a nightly
# toolchain, on stable without a sanitizer. A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the run.
#
#   bash scripts/fuzz.sh [--seconds N] [--jobs J] [--build-only] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

seconds=60
jobs=1
build_only=false
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --build-only) build_only=true; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
    sanitizer=address
else
    # Stable takes cargo-fuzz's coverage flags; the few unstable ones it
    # may pass are allowed for this build only.
    toolchain=()
    sanitizer=none
    export RUSTC_BOOTSTRAP=1
fi
target_dir=${CAIRN_FUZZ_TARGET_DIR:-$(dirname "$CARGO_TARGET_DIR")/cairn-fuzz-target}

# RocksDB's C++ is not what is fuzzed, and compiling it again, instrumented
# by the sanitizer, takes most of an hour on two cores: link the archive the
# test build made, the newest of the version fuzz/Cargo.lock pins.
rocksdb_version=$(awk '/^name = "librocksdb-sys"/ { getline; gsub(/version = |"/, ""); print }' fuzz/Cargo.lock)
# shellcheck disable=SC2012 # build directory names are hex
for out in $(ls -td "$CARGO_TARGET_DIR"/debug/build/librocksdb-sys-*/out 2>/dev/null); do
    if [[ -f "$out/librocksdb.a" ]] &&
        grep -qs "librocksdb-sys-$rocksdb_version\$" "$(dirname "$out")/output"; then
        # A copy under the build's own name: a new test build is a new path.
        lib_dir="$target_dir/rocksdb/$(basename "$(dirname "$out")")"
        mkdir -p "$lib_dir"
        cmp -s "$out/librocksdb.a" "$lib_dir/librocksdb.a" || cp "$out/librocksdb.a" "$lib_dir/"
        export ROCKSDB_LIB_DIR="$lib_dir" ROCKSDB_STATIC=1
        echo "==> linking RocksDB $rocksdb_version from the test build ($out)"
        break
    fi
done

cd fuzz
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi
echo "==> building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
cargo "${toolchain[@]}" fuzz build -O --sanitizer "$sanitizer" --target-dir "$target_dir"
if $build_only; then
    exit 0
fi
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    # New inputs go to a scratch corpus: the committed seeds stay as they are.
    scratch=$(mktemp -d)
    echo "==> $t for ${seconds}s"
    if ! cargo "${toolchain[@]}" fuzz run -O --sanitizer "$sanitizer" --target-dir "$target_dir" \
        "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$seconds" -jobs="$jobs" -workers="$jobs" \
        -rss_limit_mb=3072 -malloc_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        2>&1 | tail -n 25; then
        failed+=("$t")
    fi
    rm -rf "$scratch"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (inputs under fuzz/artifacts/)"
    exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${seconds}s each, no crash"
