# shellcheck shell=bash
# The newest Debian linux-source-6.1 tree, unpacked once into a cache;
# sourced by the benchmark scripts, never run.
#
#   kernel_tree CACHE    prints the tree's path (downloads and unpacks it
#                        into CACHE/kernel-VERSION the first time)

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
