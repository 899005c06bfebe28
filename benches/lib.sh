# shellcheck shell=bash
# What the benchmark scripts share; sourced, never run.
#
#   kernel_tree CACHE    prints the path of the newest Debian linux-source-6.1
#                        tree (downloads and unpacks it into
#                        CACHE/kernel-VERSION the first time)
#   timed CMD...         runs CMD (stdout discarded) and prints its wall time
#                        in seconds

kernel_tree() {
    local cache=$1 tree deb v
    tree=$(find "$cache" -maxdepth 1 -type d -name 'kernel-*' ! -name '*.partial' 2>/dev/null | sort | tail -1)
    if [[ -n $tree ]]; then
        echo "$tree"
        return
    fi
    mkdir -p "$cache/debs"
    echo "downloading linux-source-6.1" >&2
    (cd "$cache/debs" && apt-get download linux-source-6.1 >&2) ||
        { apt-get update -q >/dev/null && (cd "$cache/debs" && apt-get download linux-source-6.1 >&2); }
    deb=$(ls "$cache"/debs/linux-source-6.1_*_all.deb | sort | tail -1)
    v=${deb##*/linux-source-6.1_}
    v=${v%_all.deb}
    rm -rf "$cache/kernel-$v.partial"
    mkdir -p "$cache/kernel-$v.partial"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/src/linux-source-6.1.tar.xz |
        xz -dc | tar -x -C "$cache/kernel-$v.partial" --strip-components=1
    mv "$cache/kernel-$v.partial" "$cache/kernel-$v"
    echo "$cache/kernel-$v"
}

# Dirty pages of the step before are written out first: a step timed while
# the previous one's gigabytes are still being flushed measures the disk's
# writeback, not the step.
timed() {
    sync
    local start=$EPOCHREALTIME
    "$@" >/dev/null
    awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'
}
