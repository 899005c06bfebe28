//! Where the repository is, how to unlock it, and opening it with its index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use cairn_chunk_store::Repository;
use cairn_chunk_store::keys::KdfParams;
use cairn_chunk_store::store::{LocalStore, ObjectStore};
use cairn_index::{Engine, EngineOptions, Index, IndexError, LockWait};

/// How the user pointed at a repository and proved they may open it.
#[derive(Debug, Clone)]
pub struct RepoArgs {
    /// `--repo` / `CAIRN_REPO`; `None` means the default location.
    pub repo: Option<String>,
    /// `--password-file` / `CAIRN_PASSWORD_FILE`.
    pub password_file: Option<PathBuf>,
    /// Seconds to wait for another process holding the index.
    pub lock_wait: u64,
    /// `--index` / `CAIRN_INDEX`: comma-separated gRPC URLs of the index
    /// cluster; `None` uses the embedded index at `REPO/index`.
    pub index: Option<String>,
    /// `CAIRN_INDEX_TOKEN`: bearer token for the cluster.
    pub index_token: Option<String>,
}

/// The default repository: `$XDG_DATA_HOME/cairn/repo`, else `~/.local/share/cairn/repo`.
pub fn default_repo_path() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| Path::new(d).is_absolute()) {
        return Ok(PathBuf::from(dir).join("cairn/repo"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("HOME is not set; pass --repo or set CAIRN_REPO"))?;
    Ok(PathBuf::from(home).join(".local/share/cairn/repo"))
}

impl RepoArgs {
    /// The repository directory (local mode).
    pub fn local_path(&self) -> Result<PathBuf> {
        match &self.repo {
            Some(r) if r.contains("://") => {
                bail!("repository {r}: only local directories are supported by this build")
            }
            Some(r) => Ok(std::path::absolute(r).with_context(|| format!("repository path {r}"))?),
            None => default_repo_path(),
        }
    }

    /// The object store.
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(LocalStore::new(self.local_path()?)))
    }

    /// The password, from the environment, a file, or a prompt on a TTY.
    pub fn password(&self, confirm: bool) -> Result<String> {
        if let Some(p) = std::env::var_os("CAIRN_PASSWORD") {
            return p
                .into_string()
                .map_err(|_| anyhow!("CAIRN_PASSWORD is not valid UTF-8"));
        }
        if let Some(file) = &self.password_file {
            return read_password_file(file);
        }
        prompt("enter password for repository: ", confirm)
    }

    /// Opens the repository.
    pub async fn open(&self) -> Result<Repository> {
        let store = self.store()?;
        let password = self.password(false)?;
        Ok(Repository::open(store, password.as_bytes()).await?)
    }

    /// The index directory of a local repository.
    pub fn index_path(&self) -> Result<PathBuf> {
        Ok(self.local_path()?.join("index"))
    }

    /// Opens the index a backup writes to: the cluster when `--index` is
    /// given (with a fresh filter), else the embedded index.
    pub async fn open_index(&self, repo: &Repository) -> Result<Arc<dyn Index>> {
        match self.open_remote(repo).await {
            Ok(Some(remote)) => {
                if let Err(e) = remote.refresh_filter().await {
                    tracing::warn!("filter not refreshed: {e}");
                }
                Ok(remote)
            }
            Ok(None) => self.open_embedded(),
            // A cluster that is down costs uploads, never the backup.
            Err(e)
                if e.downcast_ref::<IndexError>()
                    .is_some_and(|e| matches!(e, IndexError::Unavailable(_))) =>
            {
                eprintln!("warning: {e:#}; every chunk is treated as new and uploaded");
                Ok(Arc::new(crate::remote::NoIndex))
            }
            Err(e) => Err(e),
        }
    }

    /// The index cluster when `--index` is given (no filter download).
    pub async fn open_remote(
        &self,
        repo: &Repository,
    ) -> Result<Option<Arc<crate::remote::RemoteIndex>>> {
        let Some(urls) = &self.index else {
            return Ok(None);
        };
        let seeds: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        let token = self.index_token.clone().ok_or_else(|| {
            anyhow!("CAIRN_INDEX_TOKEN is not set; the index cluster needs a repository token")
        })?;
        let remote = crate::remote::RemoteIndex::connect(
            &seeds,
            &token,
            repo.config().repo_id,
            Duration::from_secs(5),
            crate::remote::cache_dir().map(|d| d.join("filters")),
        )
        .await?;
        Ok(Some(Arc::new(remote)))
    }

    /// Opens the embedded index for writing (creating it if needed).
    pub fn open_embedded(&self) -> Result<Arc<dyn Index>> {
        let path = self.index_path()?;
        let engine = Engine::open(
            &path,
            EngineOptions {
                lock_wait: LockWait(Duration::from_secs(self.lock_wait)),
            },
            &|msg| eprintln!("{msg}"),
        )?;
        Ok(Arc::new(engine))
    }

    /// Opens the index for reading if it exists and is free; readers fall
    /// back to pack trailers otherwise, so they never wait for a backup.
    pub async fn open_index_for_reading(&self, repo: &Repository) -> Option<Arc<dyn Index>> {
        if self.index.is_some() {
            // Restore must work with every node down: then trailers answer.
            return match self.open_remote(repo).await {
                Ok(r) => r.map(|r| r as Arc<dyn Index>),
                Err(e) => {
                    eprintln!(
                        "warning: index cluster unavailable ({e:#}); reading pack trailers instead"
                    );
                    None
                }
            };
        }
        let path = self.index_path().ok()?;
        if !path.join("CURRENT").exists() {
            return None;
        }
        match Engine::open(&path, EngineOptions::default(), &|_| {}) {
            Ok(engine) => Some(Arc::new(engine)),
            Err(IndexError::Locked { .. }) => None,
            Err(e) => {
                tracing::warn!("index unavailable, reading pack trailers instead: {e}");
                None
            }
        }
    }
}

/// Reads a password file (first line, without the line ending).
pub fn read_password_file(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("password file {}", file.display()))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// A new password for `key add`/`key passwd`.
pub fn new_password(file: Option<&Path>) -> Result<String> {
    if let Some(p) = std::env::var_os("CAIRN_NEW_PASSWORD") {
        return p
            .into_string()
            .map_err(|_| anyhow!("CAIRN_NEW_PASSWORD is not valid UTF-8"));
    }
    if let Some(f) = file {
        return read_password_file(f);
    }
    prompt("enter new password: ", true)
}

fn prompt(text: &str, confirm: bool) -> Result<String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password given: set CAIRN_PASSWORD or CAIRN_PASSWORD_FILE, or pass --password-file"
        );
    }
    let first = rpassword::prompt_password(text).context("reading password")?;
    if confirm {
        let again = rpassword::prompt_password("enter it again: ").context("reading password")?;
        if first != again {
            bail!("the passwords do not match");
        }
    }
    if first.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(first)
}

/// Argon2id cost for new key files (`CAIRN_KDF_MEMORY_KIB` lowers it for tests).
pub fn kdf_params() -> KdfParams {
    let mut p = KdfParams::DEFAULT;
    if let Some(kib) = std::env::var("CAIRN_KDF_MEMORY_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        p.memory_kib = kib;
        p.iterations = 1;
    }
    p
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The current user's name.
pub fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}
