//! Where Cairn keeps things on this machine unless told otherwise: the XDG
//! base directories (`$XDG_DATA_HOME`, `$XDG_CONFIG_HOME`, `$XDG_STATE_HOME`,
//! `$XDG_CACHE_HOME`, each used only when it is an absolute path, else the
//! usual directory under `$HOME`), looked up here and nowhere else.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};

/// One of the XDG base directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseDir {
    /// `$XDG_DATA_HOME`, else `~/.local/share`: repositories.
    Data,
    /// `$XDG_CONFIG_HOME`, else `~/.config`: the agent's config, user units.
    Config,
    /// `$XDG_STATE_HOME`, else `~/.local/state`: the agent's state.
    State,
    /// `$XDG_CACHE_HOME`, else `~/.cache`: filters and pack tables.
    Cache,
}

impl BaseDir {
    fn variable(self) -> &'static str {
        match self {
            BaseDir::Data => "XDG_DATA_HOME",
            BaseDir::Config => "XDG_CONFIG_HOME",
            BaseDir::State => "XDG_STATE_HOME",
            BaseDir::Cache => "XDG_CACHE_HOME",
        }
    }

    fn under_home(self) -> &'static str {
        match self {
            BaseDir::Data => ".local/share",
            BaseDir::Config => ".config",
            BaseDir::State => ".local/state",
            BaseDir::Cache => ".cache",
        }
    }

    /// `BASE/rel`; `None` when neither the variable nor `HOME` is set.
    pub fn join(self, rel: &str) -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(self.variable()).filter(|d| Path::new(d).is_absolute())
        {
            return Some(PathBuf::from(dir).join(rel));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(self.under_home()).join(rel))
    }

    /// `BASE/rel`, or an error that names the flag to pass instead.
    fn join_or(self, rel: &str, instead: &str) -> Result<PathBuf> {
        self.join(rel)
            .ok_or_else(|| anyhow!("HOME is not set; {instead}"))
    }
}

/// The default repository: `$XDG_DATA_HOME/cairn/repo`, else `~/.local/share/cairn/repo`.
pub fn default_repo() -> Result<PathBuf> {
    BaseDir::Data.join_or("cairn/repo", "pass --repo or set CAIRN_REPO")
}

/// The agent's config file: `$XDG_CONFIG_HOME/cairn/cairn.toml`, else
/// `~/.config/cairn/cairn.toml`.
pub fn default_config() -> Result<PathBuf> {
    BaseDir::Config.join_or("cairn/cairn.toml", "pass --config")
}

/// The agent's state: `$XDG_STATE_HOME/cairn`, else `~/.local/state/cairn`.
pub fn default_state_dir() -> Result<PathBuf> {
    BaseDir::State.join_or("cairn", "pass --state-dir")
}

/// systemd user units: `$XDG_CONFIG_HOME/systemd/user`, else `~/.config/systemd/user`.
pub fn user_unit_dir() -> Result<PathBuf> {
    BaseDir::Config.join_or("systemd/user", "pass --unit-dir")
}

/// The client's cache: `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`.
pub fn cache_dir() -> Option<PathBuf> {
    BaseDir::Cache.join("cairn")
}
