//! Where the repository is, how to unlock it, and opening it with its index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::sealed_lengths::{seal_dedup_index, seal_index};
use anyhow::{Context, Result, anyhow, bail};
use cairn_chunk_store::Repository;
use cairn_chunk_store::keys::KdfParams;
use cairn_chunk_store::store::{LocalStore, ObjectStore, S3Options, S3Store};
use cairn_index::{DedupIndex, Engine, EngineOptions, Index, IndexError, LockWait};

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
    pub index_token: Option<Password>,
    /// How to reach an `s3://` repository.
    pub s3: S3Settings,
}

/// Path-style or virtual-hosted-style S3 requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum S3Addressing {
    /// Path style with `--s3-endpoint` (what self-hosted servers need), else virtual-hosted.
    #[default]
    Auto,
    /// `ENDPOINT/BUCKET/KEY`.
    Path,
    /// `BUCKET.ENDPOINT/KEY`.
    Virtual,
}

/// S3 settings, from flags or `CAIRN_S3_*` variables: the one definition of
/// their names, variables and defaults (the defaults are the store's own,
/// [`S3Options`]). Credentials are not here: they come from the standard
/// AWS chain only.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Settings {
    /// S3 endpoint URL of a self-hosted server (MinIO, Garage, Ceph…); AWS S3 if unset.
    /// A comma list names several endpoints of one service (the S3 API of every
    /// Garage node): requests are spread over them, and one that fails is
    /// skipped until it answers again.
    #[arg(
        long = "s3-endpoint",
        env = "CAIRN_S3_ENDPOINT",
        global = true,
        value_name = "URL"
    )]
    pub endpoint: Option<String>,
    /// S3 region (default: the AWS chain, e.g. AWS_REGION, else us-east-1).
    #[arg(
        long = "s3-region",
        env = "CAIRN_S3_REGION",
        global = true,
        value_name = "S3_REGION"
    )]
    pub region: Option<String>,
    /// S3 addressing: auto is path style with --s3-endpoint, virtual-hosted on AWS.
    #[arg(
        long = "s3-addressing",
        env = "CAIRN_S3_ADDRESSING",
        global = true,
        default_value = "auto",
        value_name = "S3_ADDRESSING"
    )]
    pub addressing: S3Addressing,
    /// S3 requests in flight at most.
    #[arg(
        long = "s3-connections",
        env = "CAIRN_S3_CONNECTIONS",
        global = true,
        default_value_t = S3Options::DEFAULT_CONNECTIONS,
        value_name = "S3_CONNECTIONS"
    )]
    pub connections: usize,
    /// Seconds one S3 request attempt may take.
    #[arg(
        long = "s3-timeout",
        env = "CAIRN_S3_TIMEOUT",
        global = true,
        default_value_t = S3Options::DEFAULT_ATTEMPT_TIMEOUT.as_secs(),
        value_name = "S3_TIMEOUT"
    )]
    pub timeout_secs: u64,
    /// Seconds one S3 call may take, retries included; then the command fails.
    #[arg(
        long = "s3-deadline",
        env = "CAIRN_S3_DEADLINE",
        global = true,
        default_value_t = S3Options::DEFAULT_DEADLINE.as_secs(),
        value_name = "S3_DEADLINE"
    )]
    pub deadline_secs: u64,
}

/// Only the S3 settings, parsed from the environment (for the agent, whose
/// jobs have no command line).
#[derive(Debug, clap::Parser)]
struct S3FromEnv {
    #[command(flatten)]
    s3: S3Settings,
}

impl S3Settings {
    /// The defaults overridden by `CAIRN_S3_*` variables, parsed exactly as
    /// the flags are.
    pub fn from_env() -> Result<Self> {
        use clap::Parser;
        S3FromEnv::try_parse_from(["cairn"])
            .map(|p| p.s3)
            .map_err(|e| anyhow!("{}", e.to_string().trim_end()))
    }

    fn options(&self, url: &str) -> Result<S3Options> {
        let mut o = S3Options::from_url(url).map_err(|e| anyhow!(e))?;
        o.endpoints = self
            .endpoint
            .iter()
            .flat_map(|e| e.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        o.region = self.region.clone().filter(|r| !r.is_empty());
        o.path_style = match self.addressing {
            S3Addressing::Auto => !o.endpoints.is_empty(),
            S3Addressing::Path => true,
            S3Addressing::Virtual => false,
        };
        o.connections = self.connections.max(1);
        o.attempt_timeout = Duration::from_secs(self.timeout_secs);
        o.deadline = Duration::from_secs(self.deadline_secs);
        Ok(o)
    }
}

impl RepoArgs {
    /// `CAIRN_INDEX_TOKEN`: the bearer token for the index cluster (a
    /// secret, so never a flag that would show in the process list).
    pub fn index_token_from_env() -> Option<Password> {
        std::env::var("CAIRN_INDEX_TOKEN").ok().map(Password::new)
    }

    /// The `s3://` URL of the repository, if it is in S3.
    fn s3_url(&self) -> Option<&str> {
        self.repo.as_deref().filter(|r| r.starts_with("s3://"))
    }

    /// The repository directory (local mode).
    pub fn local_path(&self) -> Result<PathBuf> {
        Self::local_path_of(self.repo.as_deref())
    }

    /// The directory of a local repository given as `--repo` would be.
    pub fn local_path_of(repo: Option<&str>) -> Result<PathBuf> {
        match repo {
            Some(r) if r.contains("://") => {
                bail!("repository {r}: not a local directory")
            }
            Some(r) => Ok(std::path::absolute(r).with_context(|| format!("repository path {r}"))?),
            None => crate::paths::default_repo(),
        }
    }

    /// The object store. An S3 store is checked first (endpoint reachable,
    /// bucket present, credentials accepted), so a mistake there is one line
    /// saying which.
    pub async fn store(&self) -> Result<Arc<dyn ObjectStore>> {
        let Some(url) = self.s3_url() else {
            if let Some(r) = self.repo.as_deref().filter(|r| r.contains("://")) {
                bail!("repository {r}: unknown scheme; use a directory or s3://BUCKET/PREFIX");
            }
            return Ok(Arc::new(LocalStore::new(self.local_path()?)));
        };
        let store = S3Store::new(self.s3.options(url)?).await;
        store.check_access().await?;
        Ok(Arc::new(store))
    }

    /// The password, from the environment, a file, or a prompt on a TTY.
    pub fn password(&self, confirm: bool) -> Result<Password> {
        if let Some(p) = std::env::var_os("CAIRN_PASSWORD") {
            return p
                .into_string()
                .map(Password::new)
                .map_err(|_| anyhow!("CAIRN_PASSWORD is not valid UTF-8"));
        }
        if let Some(file) = &self.password_file {
            return read_password_file(file);
        }
        prompt("enter password for repository: ", confirm)
    }

    /// Opens another repository at `location` (a directory or an `s3://`
    /// URL, reached with the same S3 settings) with `password`.
    pub async fn open_other(&self, location: &str, password: &str) -> Result<Repository> {
        let other = RepoArgs {
            repo: Some(location.to_string()),
            password_file: None,
            lock_wait: self.lock_wait,
            index: None,
            index_token: None,
            s3: self.s3.clone(),
        };
        let store = other.store().await?;
        Repository::open(store, password.as_bytes())
            .await
            .with_context(|| format!("source repository {location}"))
    }

    /// Opens the repository.
    pub async fn open(&self) -> Result<Repository> {
        let store = self.store().await?;
        let password = self.password(false)?;
        Ok(Repository::open(store, password.as_bytes()).await?)
    }

    /// The embedded index: `REPO/index` for a directory; for an S3
    /// repository, a directory in this machine's cache named after the
    /// repository's location (the store itself holds no index).
    pub fn index_path(&self) -> Result<PathBuf> {
        if let Some(url) = self.s3_url() {
            let cache = crate::paths::cache_dir()
                .ok_or_else(|| anyhow!("HOME is not set; no place for the index cache"))?;
            let name = format!(
                "{} {}",
                self.s3.endpoint.as_deref().unwrap_or("aws"),
                url.trim_end_matches('/')
            );
            let digest = blake3::hash(name.as_bytes()).to_hex();
            return Ok(cache.join("index").join(&digest.as_str()[..32]));
        }
        Ok(self.local_path()?.join("index"))
    }

    /// Opens the index a backup writes to: the cluster when `--index` is
    /// given (with a fresh filter), else the embedded index. `job` (for
    /// messages) needs an index token of role `role` or stronger.
    pub async fn open_index(
        &self,
        repo: &Repository,
        role: &str,
        job: &str,
    ) -> Result<Arc<dyn Index>> {
        match self.open_remote(repo).await {
            Ok(Some(remote)) => {
                remote.require_role(role, job)?;
                if let Err(e) = remote.refresh_filter().await {
                    tracing::warn!("filter not refreshed: {e}");
                }
                Ok(seal_index(repo, remote))
            }
            Ok(None) => Ok(seal_index(repo, self.open_embedded()?)),
            // A cluster that is down costs uploads, never the backup.
            Err(e)
                if e.downcast_ref::<IndexError>()
                    .is_some_and(|e| matches!(e, IndexError::Unavailable(_))) =>
            {
                crate::notify::warning(format!(
                    "{e:#}; every chunk is treated as new and uploaded"
                ));
                Ok(Arc::new(crate::remote::NoIndex))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the repository and the index a backup writes to. For a local
    /// repository with the embedded index, the index opens on a blocking
    /// thread while the key derivation of the password runs (only once the
    /// repository's config is there, since opening creates the index).
    pub async fn open_for_backup(&self) -> Result<(Repository, Arc<dyn Index>)> {
        let local = self.index.is_none()
            && self.s3_url().is_none()
            && self.local_path().is_ok_and(|p| p.join("config").is_file());
        if !local {
            let repo = self.open().await?;
            let index = self.open_index(&repo, "backup", "a backup").await?;
            return Ok((repo, index));
        }
        let args = self.clone();
        let index = tokio::task::spawn_blocking(move || args.open_embedded());
        // The repository's errors (wrong password, ...) come first.
        let repo = self.open().await;
        let index = index.await.map_err(|e| anyhow!("opening the index: {e}"));
        let repo = repo?;
        let index = seal_index(&repo, index??);
        Ok((repo, index))
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
            crate::paths::cache_dir().map(|d| d.join("filters")),
        )
        .await?;
        Ok(Some(Arc::new(remote)))
    }

    /// Opens the embedded index for writing (creating it if needed), as
    /// it stores records: give it to a repository through
    /// [`seal_index`] before use.
    pub fn open_embedded(&self) -> Result<Arc<dyn Index>> {
        let path = self.index_path()?;
        let engine = Engine::open(
            &path,
            EngineOptions {
                lock_wait: LockWait(Duration::from_secs(self.lock_wait)),
            },
            &|msg| crate::notify::notice(msg),
        )?;
        Ok(Arc::new(engine))
    }

    /// Opens the index for reading if it exists and is free; readers fall
    /// back to pack trailers otherwise, so they never wait for a backup.
    pub async fn open_index_for_reading(&self, repo: &Repository) -> Option<Arc<dyn DedupIndex>> {
        if self.index.is_some() {
            // Restore must work with every node down: then trailers answer.
            return match self.open_remote(repo).await {
                Ok(r) => r.map(|r| seal_dedup_index(repo, r)),
                Err(e) => {
                    crate::notify::warning(format!(
                        "index cluster unavailable ({e:#}); reading pack trailers instead"
                    ));
                    None
                }
            };
        }
        let path = self.index_path().ok()?;
        if !path.join("CURRENT").exists() {
            return None;
        }
        match Engine::open(&path, EngineOptions::default(), &|_| {}) {
            Ok(engine) => Some(seal_dedup_index(repo, Arc::new(engine))),
            Err(IndexError::Locked { .. }) => None,
            Err(e) => {
                tracing::warn!("index unavailable, reading pack trailers instead: {e}");
                None
            }
        }
    }
}

/// A password: its memory is zeroed when dropped.
pub type Password = zeroize::Zeroizing<String>;

/// Reads a password file (first line, without the line ending).
pub fn read_password_file(file: &Path) -> Result<Password> {
    let text = Password::new(
        std::fs::read_to_string(file)
            .with_context(|| format!("password file {}", file.display()))?,
    );
    Ok(Password::new(text.lines().next().unwrap_or("").to_string()))
}

/// The password of the other repository of `copy --from-repo` and `init
/// --copy-chunker-params-from`: `CAIRN_FROM_PASSWORD`, else the file
/// (`--from-password-file`), else a prompt on a terminal. Never the
/// target's password: the two repositories may have different ones.
pub fn source_password(file: Option<&Path>) -> Result<Password> {
    if let Some(given) = password_given("CAIRN_FROM_PASSWORD", file) {
        return given;
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password for the source repository: set CAIRN_FROM_PASSWORD or pass --from-password-file"
        );
    }
    prompt("enter password for the source repository: ", false)
}

/// A new password for `key add`/`key passwd`.
pub fn new_password(file: Option<&Path>) -> Result<Password> {
    if let Some(given) = password_given("CAIRN_NEW_PASSWORD", file) {
        return given;
    }
    prompt("enter new password: ", true)
}

/// A password from the environment variable `var`, else from `file`;
/// `None` if neither gives one.
fn password_given(var: &str, file: Option<&Path>) -> Option<Result<Password>> {
    if let Some(p) = std::env::var_os(var) {
        return Some(
            p.into_string()
                .map(Password::new)
                .map_err(|_| anyhow!("{var} is not valid UTF-8")),
        );
    }
    file.map(read_password_file)
}

fn prompt(text: &str, confirm: bool) -> Result<Password> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password given: set CAIRN_PASSWORD or CAIRN_PASSWORD_FILE, or pass --password-file"
        );
    }
    let first = Password::new(rpassword::prompt_password(text).context("reading password")?);
    if confirm {
        let again = Password::new(
            rpassword::prompt_password("enter it again: ").context("reading password")?,
        );
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
