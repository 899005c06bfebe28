# shellcheck shell=bash
# Shared set-up for Cairn's scripts; sourced, never run.
#
# Sets CAIRN_ROOT (the workspace), puts a rustup-installed cargo on PATH, and
# picks the cargo target directory: $CARGO_TARGET_DIR if set, otherwise one
# persistent directory shared by every checkout on this machine, so the
# RocksDB build (minutes on two cores) is paid once, not per clone.

CAIRN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CAIRN_ROOT

if [[ -d "$HOME/.cargo/bin" && ":$PATH:" != *":$HOME/.cargo/bin:"* ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

if [[ -z "${CARGO_TARGET_DIR:-}" ]]; then
    CARGO_TARGET_DIR=/work/.cache/cairn-target
    # Where that directory cannot be made, fall back to cargo's default.
    if ! mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null; then
        CARGO_TARGET_DIR="$CAIRN_ROOT/target"
    fi
fi
# Relative to the workspace, so every command agrees on it.
[[ "$CARGO_TARGET_DIR" == /* ]] || CARGO_TARGET_DIR="$CAIRN_ROOT/$CARGO_TARGET_DIR"
export CARGO_TARGET_DIR
