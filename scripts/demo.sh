#!/usr/bin/env bash
# A first run of Cairn on this machine's default repository: builds the
# client, creates the repository if there is none, backs up a sample
# directory, lists the snapshots, restores the latest one and checks that the
# restored copy is identical. Safe to run again: later runs reuse the
# repository (and deduplicate against it).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$CAIRN_ROOT"

bash scripts/setup.sh
cargo build --release --locked -p cairn-client
cairn="$CARGO_TARGET_DIR/release/cairn"

step() { printf '\n==> %s\n' "$*"; }

# Password: the user's own if one is configured; otherwise a random one,
# made once and kept (readable by the owner only) beside Cairn's config.
if [[ -z "${CAIRN_PASSWORD:-}" && -z "${CAIRN_PASSWORD_FILE:-}" ]]; then
    password_file="${XDG_CONFIG_HOME:-$HOME/.config}/cairn/password"
    if [[ ! -s "$password_file" ]]; then
        if [[ ! -d "$(dirname "$password_file")" ]]; then
            mkdir -p "$(dirname "$(dirname "$password_file")")"
            mkdir -m 700 "$(dirname "$password_file")"
        fi
        (
            umask 077
            head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$password_file.tmp"
        )
        mv "$password_file.tmp" "$password_file"
        echo "created a random password in $password_file (keep it: without it the backups cannot be read)"
    fi
    chmod 600 "$password_file"
    export CAIRN_PASSWORD_FILE="$password_file"
fi

# The repository cairn uses when --repo is not given (see README).
data_home="$HOME/.local/share"
if [[ "${XDG_DATA_HOME:-}" == /* ]]; then
    data_home="$XDG_DATA_HOME"
fi
repo="${CAIRN_REPO:-$data_home/cairn/repo}"
if [[ "$repo" == *://* ]]; then
    # Not a directory (an object store): create it only if it does not open.
    "$cairn" snapshots >/dev/null 2>&1 || { step "cairn init"; "$cairn" init; }
elif [[ ! -f "$repo/config" ]]; then
    step "cairn init"
    "$cairn" init
else
    echo "using the existing repository at $repo"
fi

# A sample to back up: a copy of this workspace's sources plus a few kinds of
# entry a backup must get right (a multi-chunk file, a hard link, a symlink,
# an empty file, an empty directory, unusual modes and names).
work="$(mktemp -d "${TMPDIR:-/tmp}/cairn-demo.XXXXXX")"
trap 'rm -rf "$work"' EXIT
sample="$work/sample"
mkdir -p "$sample/cairn" "$sample/extras/empty-dir"
for entry in Cargo.toml Cargo.lock README.md chunk-store proto metadata-server client benches tests scripts; do
    if [[ -e "$entry" ]]; then
        cp -a "$entry" "$sample/cairn/"
    fi
done
seq 1 3000000 >"$sample/extras/numbers.txt" # about 20 MiB: several chunks
ln "$sample/extras/numbers.txt" "$sample/extras/numbers-hardlink.txt"
ln -s numbers.txt "$sample/extras/numbers-symlink"
: >"$sample/extras/empty"
printf 'private\n' >"$sample/extras/private key"
chmod 600 "$sample/extras/private key"
touch -d '2001-02-03 04:05:06.123456789' "$sample/extras/empty"

step "cairn backup $sample"
"$cairn" backup "$sample" --tag demo

step "cairn snapshots"
"$cairn" snapshots

step "cairn restore latest --target $work/restore"
"$cairn" restore latest --target "$work/restore"

step "cairn check"
"$cairn" check

# Restore recreates absolute paths under the target.
restored="$work/restore$sample"
step "comparing $restored with $sample"
diff -r --no-dereference "$sample" "$restored"
# Directory sizes depend on the file system's history, so they are left out.
listing() {
    (
        cd "$1"
        find . ! -type d -printf '%p %y mode=%m size=%s links=%n mtime=%T@ target=%l\n'
        find . -type d -printf '%p %y mode=%m mtime=%T@\n'
    ) | LC_ALL=C sort
}
if ! diff <(listing "$sample") <(listing "$restored"); then
    echo "demo failed: the restored copy differs in names, kinds, modes, sizes, times or link targets" >&2
    exit 1
fi

files=$(find "$sample" -type f | wc -l)
echo
echo "demo ok: backed up, restored and verified $files files (contents, modes, times, links) in the repository at $repo"
