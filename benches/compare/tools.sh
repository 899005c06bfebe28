# shellcheck shell=bash disable=SC2034  # CMD, CMD_DIR and TOOL_ENV are read by run.sh
# Per-tool adapters for the comparison harness; sourced by run.sh, never run.
#
# Every tool gets comparable settings:
#   - encryption on, with the tool's own default key derivation;
#   - compression on: Cairn's default (zstd), restic's default ("auto", which
#     needs repository format 2), rustic's default (zstd level 3), Borg
#     zstd,3 (Borg 1.2 compresses with lz4 unless told otherwise);
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
        borg)
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
        borg) env "${TOOL_ENV[@]}" borg init --encryption "$BORG_ENCRYPTION" "$repo" ;;
    esac
}

# CMD := the backup command for PATH; NAME names the Borg archive.
tool_cmd_backup() {
    local tool="$1" repo="$2" path="$3" name="$4"
    CMD_DIR=/
    case "$tool" in
        cairn) CMD=("$CAIRN_BIN" --repo "$repo" backup "$path" --quiet) ;;
        restic) CMD=(restic -r "$repo" backup "$path" --quiet) ;;
        rustic) CMD=("$RUSTIC_BIN" -r "$repo" backup "$path" --no-progress) ;;
        borg) CMD=(borg create --compression "$BORG_COMPRESSION" "$repo::$name" "$path") ;;
    esac
}

# CMD := the command restoring the latest snapshot (Borg: archive NAME) so
# that the backed-up absolute path P reappears as TARGET/P.
tool_cmd_restore() {
    local tool="$1" repo="$2" target="$3" name="$4"
    CMD_DIR=/
    case "$tool" in
        cairn) CMD=("$CAIRN_BIN" --repo "$repo" restore latest --target "$target" --quiet) ;;
        restic) CMD=(restic -r "$repo" restore latest --target "$target" --quiet) ;;
        rustic) CMD=("$RUSTIC_BIN" -r "$repo" restore latest "$target" --no-progress) ;;
        # Borg extracts into the working directory, paths without the leading /.
        borg) CMD=(borg extract "$repo::$name"); CMD_DIR="$target" ;;
    esac
}

# One line: the tool's version.
tool_version() {
    local tool="$1"
    case "$tool" in
        cairn) "$CAIRN_BIN" --version | head -n 1 ;;
        restic) restic version | head -n 1 ;;
        rustic) "$RUSTIC_BIN" --version | head -n 1 ;;
        borg) borg --version | head -n 1 ;;
    esac
}

# One line: the settings the tool runs with.
tool_settings() {
    local tool="$1"
    case "$tool" in
        cairn) echo "defaults (PRF cut rule, Padmé padding, sealed index lengths, zstd, AES-256-GCM, Argon2id defaults)" ;;
        restic) echo "repository format 2, compression auto (default), scrypt defaults" ;;
        rustic) echo "defaults (repository format 2, zstd level 3)" ;;
        borg) echo "borg init --encryption $BORG_ENCRYPTION, borg create --compression $BORG_COMPRESSION" ;;
    esac
}
