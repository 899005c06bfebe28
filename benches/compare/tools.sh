# shellcheck shell=bash disable=SC2034  # CMD, CMD_DIR and TOOL_ENV are read by run.sh
# Per-tool adapters for the comparison harness; sourced by run.sh, never run.
#
# Every tool gets comparable settings:
#   - encryption on, with the tool's own default key derivation;
#   - compression on: Cairn's default (zstd), restic's default ("auto", which
#     needs repository format 2), rustic's default (zstd level 3), bupstash's
#     default (zstd level 3), Borg 1.2 and 1.4 zstd,3 (Borg compresses with
#     lz4 unless told otherwise);
#   - a local repository under the same work directory (same disk);
#   - its own HOME, so caches and config of one tool or run never leak into
#     another (restic's and rustic's caches, Borg's security and chunk
#     caches); the caches stay in place between the backups of one run, as
#     they would on a real machine.
#
# Functions take the tool name first. Commands that are measured are
# printed by tool_cmd_* into the array CMD (and CMD_DIR for the working
# directory) so run.sh can wrap them in /usr/bin/time.

BENCH_PASSWORD="cairn-bench-password-0123456789"

# The environment every tool runs with: its own HOME and password variable.
tool_env() {
    local tool="$1" home="$2"
    TOOL_ENV=(
        "HOME=$home"
        "XDG_CACHE_HOME=$home/.cache"
        "XDG_CONFIG_HOME=$home/.config"
        "XDG_DATA_HOME=$home/.local/share"
    )
    case "$tool" in
        cairn) TOOL_ENV+=("CAIRN_PASSWORD=$BENCH_PASSWORD") ;;
        restic) TOOL_ENV+=("RESTIC_PASSWORD=$BENCH_PASSWORD") ;;
        rustic) TOOL_ENV+=("RUSTIC_PASSWORD=$BENCH_PASSWORD") ;;
        # A key file instead of a password (tool_init writes it).
        bupstash) TOOL_ENV+=("BUPSTASH_KEY=$home/bupstash.key") ;;
        borg | borg14)
            TOOL_ENV+=(
                "BORG_PASSPHRASE=$BENCH_PASSWORD"
                "BORG_BASE_DIR=$home"
                "BORG_RELOCATED_REPO_ACCESS_IS_OK=yes"
            )
            ;;
        *) die "unknown tool $tool" ;;
    esac
}

# Create an empty repository (not measured).
tool_init() {
    local tool="$1" repo="$2" home="$3"
    mkdir -p "$home"
    tool_env "$tool" "$home"
    case "$tool" in
        cairn) env "${TOOL_ENV[@]}" "$CAIRN_BIN" --repo "$repo" init ;;
        restic) env "${TOOL_ENV[@]}" restic -r "$repo" init --repository-version 2 ;;
        rustic) env "${TOOL_ENV[@]}" "$RUSTIC_BIN" -r "$repo" init ;;
        bupstash)
            env "${TOOL_ENV[@]}" "$BUPSTASH_BIN" new-key -o "$home/bupstash.key" &&
                env "${TOOL_ENV[@]}" "$BUPSTASH_BIN" init --repository "$repo"
            ;;
        borg | borg14) env "${TOOL_ENV[@]}" "$(borg_bin "$tool")" init --encryption "$BORG_ENCRYPTION" "$repo" ;;
    esac
}

# The Borg of TOOL: 1.2 from apt (borg) or 1.4 from PyPI (borg14).
borg_bin() {
    case "$1" in
        borg) echo borg ;;
        borg14) echo "$BORG14_BIN" ;;
    esac
}

# CMD := the backup command for PATH; NAME names the snapshot (a Borg
# archive, a bupstash tag).
tool_cmd_backup() {
    local tool="$1" repo="$2" path="$3" name="$4"
    CMD_DIR=/
    case "$tool" in
        cairn) CMD=("$CAIRN_BIN" --repo "$repo" backup "$path" --quiet) ;;
        restic) CMD=(restic -r "$repo" backup "$path" --quiet) ;;
        rustic) CMD=("$RUSTIC_BIN" -r "$repo" backup "$path" --no-progress) ;;
        bupstash) CMD=("$BUPSTASH_BIN" put --quiet --repository "$repo" "step=$name" "$path") ;;
        borg | borg14) CMD=("$(borg_bin "$tool")" create --compression "$BORG_COMPRESSION" "$repo::$name" "$path") ;;
    esac
}

# CMD := the command restoring the snapshot NAME (the latest one) so that
# the backed-up absolute path SRC reappears as TARGET/SRC.
tool_cmd_restore() {
    local tool="$1" repo="$2" target="$3" name="$4" src="$5"
    CMD_DIR=/
    case "$tool" in
        cairn) CMD=("$CAIRN_BIN" --repo "$repo" restore latest --target "$target" --quiet) ;;
        restic) CMD=(restic -r "$repo" restore latest --target "$target" --quiet) ;;
        rustic) CMD=("$RUSTIC_BIN" -r "$repo" restore latest "$target" --no-progress) ;;
        # bupstash stores a directory's contents, without the path above it.
        bupstash)
            mkdir -p "$target$src"
            CMD=("$BUPSTASH_BIN" restore --repository "$repo" --into "$target$src" "step=$name")
            ;;
        # Borg extracts into the working directory, paths without the leading /.
        borg | borg14) CMD=("$(borg_bin "$tool")" extract "$repo::$name"); CMD_DIR="$target" ;;
    esac
}

# One line: the tool's version.
tool_version() {
    local tool="$1"
    case "$tool" in
        cairn) "$CAIRN_BIN" --version | head -n 1 ;;
        restic) restic version | head -n 1 ;;
        rustic) "$RUSTIC_BIN" --version | head -n 1 ;;
        bupstash) "$BUPSTASH_BIN" version 2>&1 | head -n 1 ;;
        borg | borg14) "$(borg_bin "$tool")" --version | head -n 1 ;;
    esac
}

# One line: the settings the tool runs with.
tool_settings() {
    local tool="$1"
    case "$tool" in
        cairn) echo "defaults (PRF cut rule, Padmé padding, sealed index lengths, zstd level $CAIRN_ZSTD_LEVEL, AES-256-GCM, Argon2id defaults)" ;;
        restic) echo "repository format 2, compression auto (default), scrypt defaults" ;;
        rustic) echo "defaults (repository format 2, zstd level 3)" ;;
        bupstash) echo "defaults (zstd level 3, a key file: no key derivation)" ;;
        borg | borg14) echo "borg init --encryption $BORG_ENCRYPTION, borg create --compression $BORG_COMPRESSION" ;;
    esac
}

# The physical reference of a step: what the disk and the CPU cost without
# any backup tool. CMD := the command for STEP on the tree SRC:
#   first        tar -c | zstd at Cairn's level on every core (read and compress all)
#   incremental  tar -c | wc -c (read every file once)
#   unchanged    a stat walk: find -printf of size, mtime, ctime and inode
#   restore      tar -x of an uncompressed tar of the tree (TAR, read from page cache)
#                into TARGET
#   big          zstd at Cairn's level on every core of the one file SRC
reference_cmd() {
    local step="$1" src="$2" target="${3:-}" tar="${4:-}"
    CMD_DIR=/
    case "$step" in
        first) CMD=(bash -c "tar -cf - -C / '${src#/}' | zstd -q -$CAIRN_ZSTD_LEVEL -T0 >/dev/null") ;;
        incremental) CMD=(bash -c "tar -cf - -C / '${src#/}' | wc -c >/dev/null") ;;
        unchanged) CMD=(find "$src" -printf '%s %T@ %C@ %i\n') ;;
        restore) CMD=(tar -xf "$tar" -C "$target") ;;
        big) CMD=(bash -c "zstd -q -$CAIRN_ZSTD_LEVEL -T0 -c '$src' >/dev/null") ;;
        *) die "no reference for step $step" ;;
    esac
}
