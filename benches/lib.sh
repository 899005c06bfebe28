# shellcheck shell=bash
# What the benchmark scripts share; sourced, never run.
#
#   kernel_tree CACHE    prints the path of the newest Debian linux-source-6.1
#                        tree (downloads and unpacks it into
#                        CACHE/kernel-VERSION the first time)
#   typescript_nightlies CACHE LAST COUNT
#                        prints the paths of the COUNT consecutive TypeScript
#                        nightlies ending at LAST, oldest first (each fetched
#                        with `npm pack` into CACHE/typescript/VERSION once)
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

typescript_nightlies() {
    local cache=$1 last=$2 count=$3 list="$1/typescript/versions.txt" v versions
    mkdir -p "$cache/typescript/tgz"
    if [[ ! -s "$list" ]]; then
        echo "listing TypeScript versions on npm" >&2
        npm view typescript versions --json | tr -d ' ",[]' | grep -- '-dev\.' |
            sort -t. -k1,1n -k2,2n -k3,3n -k5,5n >"$list.tmp"
        mv "$list.tmp" "$list"
    fi
    if ! grep -qx -- "$last" "$list"; then
        echo "TypeScript $last is not a known nightly" >&2
        return 1
    fi
    mapfile -t versions < <(sed "/^${last//./\\.}\$/q" "$list" | tail -n "$count")
    if [[ ${#versions[@]} != "$count" ]]; then
        echo "only ${#versions[@]} nightlies up to $last" >&2
        return 1
    fi
    for v in "${versions[@]}"; do
        if [[ ! -d "$cache/typescript/$v" ]]; then
            echo "fetching typescript@$v" >&2
            (cd "$cache/typescript/tgz" && npm pack --silent "typescript@$v" >/dev/null) || return 1
            rm -rf "$cache/typescript/$v.partial"
            mkdir -p "$cache/typescript/$v.partial"
            tar -xzf "$cache/typescript/tgz/typescript-$v.tgz" -C "$cache/typescript/$v.partial" \
                --strip-components=1 --no-same-owner
            mv "$cache/typescript/$v.partial" "$cache/typescript/$v"
        fi
        echo "$cache/typescript/$v"
    done
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
