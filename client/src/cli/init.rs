//! `cairn init`.

use anyhow::{Result, bail};
use cairn_chunk_store::Repository;
use cairn_chunk_store::chunker::CutRule;
use cairn_chunk_store::config::SizeProtection;
use cairn_chunk_store::crypto::Cipher;
use cairn_chunk_store::fingerprint::HashAlgo;
use cairn_chunk_store::pack::Padding;
use cairn_chunk_store::repository::InitOptions;
use cairn_chunk_store::store::{LockMode, ObjectLock};
use cairn_client::context::{hostname, kdf_params, source_password, username};
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::render::print_json;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Fingerprint algorithm: blake3 (keyed BLAKE3) or sha256 (HMAC-SHA256).
    #[arg(long, default_value = "blake3")]
    hash: HashAlgo,
    /// Cipher of the repository's objects: aes-256-gcm (fastest wherever
    /// the processor has AES instructions) or xchacha20-poly1305 (for
    /// processors without them; with `--chunker fastcdc --padding none
    /// --index-lengths clear`, also readable by clients that know only
    /// config version 1).
    #[arg(long, default_value = "aes-256-gcm")]
    cipher: Cipher,
    /// Cut data exactly as this repository does (its chunker bounds and
    /// seed), so that `cairn copy` from it moves chunks without cutting
    /// files again.
    #[arg(long, value_name = "SRC")]
    copy_chunker_params_from: Option<String>,
    /// Read that repository's password from this file (or set CAIRN_FROM_PASSWORD).
    #[arg(long, env = "CAIRN_FROM_PASSWORD_FILE", value_name = "FILE")]
    from_password_file: Option<std::path::PathBuf>,
    /// S3 only: write every object with an S3 Object Lock retention of N
    /// days (the bucket must have Object Lock enabled); prune never deletes
    /// an object before its date.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=36500))]
    object_lock_days: Option<u32>,
    /// The object lock mode: governance (an identity with
    /// s3:BypassGovernanceRetention may delete early) or compliance (nobody may).
    #[arg(
        long,
        value_name = "MODE",
        default_value = "governance",
        requires = "object_lock_days"
    )]
    object_lock_mode: LockModeArg,
    /// How chunks are cut: prf (every cut chosen by a keyed PRF, so chunk
    /// sizes cannot reveal the chunker key) or fastcdc (keyed FastCDC, as
    /// repositories before config version 5).
    #[arg(
        long,
        value_name = "RULE",
        default_value = "prf",
        conflicts_with = "copy_chunker_params_from"
    )]
    chunker: ChunkerArg,
    /// Padding of stored chunks: padme (sizes the store sees are rounded,
    /// at most 11 % and about 1 % on source trees) or none.
    #[arg(long, value_name = "PADDING", default_value = "padme")]
    padding: PaddingArg,
    /// Chunk lengths the index holds: sealed (XORed with a keyed PRF of the
    /// chunk id the index cannot compute) or clear.
    #[arg(long, value_name = "MODE", default_value = "sealed")]
    index_lengths: IndexLengthsArg,
}

/// `--chunker`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ChunkerArg {
    Prf,
    Fastcdc,
}

/// `--padding`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PaddingArg {
    Padme,
    None,
}

/// `--index-lengths`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum IndexLengthsArg {
    Sealed,
    Clear,
}

/// `--object-lock-mode`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LockModeArg {
    Governance,
    Compliance,
}

pub fn run(rt: &Runtime, g: &Globals, a: InitArgs) -> Result<u8> {
    let store = rt.block_on(g.repo.store())?;
    let object_lock = a.object_lock_days.map(|days| ObjectLock {
        days,
        mode: match a.object_lock_mode {
            LockModeArg::Governance => LockMode::Governance,
            LockModeArg::Compliance => LockMode::Compliance,
        },
    });
    if let Some(lock) = object_lock {
        // Refused before anything is written (a local directory cannot lock).
        store.set_object_lock(lock)?;
    }
    if rt.block_on(store.exists("config"))? {
        bail!("a repository already exists at {}", store.location());
    }
    let chunker = match &a.copy_chunker_params_from {
        Some(src) => {
            let password = source_password(a.from_password_file.as_deref())?;
            Some(
                rt.block_on(g.repo.open_other(src, &password))?
                    .chunker_params(),
            )
        }
        None => None,
    };
    let password = g.repo.password(true)?;
    let repo = rt.block_on(Repository::init(
        store,
        password.as_bytes(),
        InitOptions {
            hash: a.hash,
            cipher: a.cipher,
            kdf: kdf_params(),
            host: hostname(),
            user: username(),
            chunker,
            object_lock,
            sizes: SizeProtection {
                rule: match a.chunker {
                    ChunkerArg::Prf => CutRule::Prf,
                    ChunkerArg::Fastcdc => CutRule::FastCdc,
                },
                padding: match a.padding {
                    PaddingArg::Padme => Padding::Padme,
                    PaddingArg::None => Padding::None,
                },
                sealed_lengths: matches!(a.index_lengths, IndexLengthsArg::Sealed),
            },
        },
    ))?;
    if g.json {
        print_json(&json!({
            "repo_id": repo.config().repo_id,
            "location": repo.location(),
            "cipher": repo.config().cipher.name(),
            "chunker": repo.config().chunker.rule.name(),
            "padding": repo.config().padding.name(),
            "index_lengths": if repo.config().sealed_lengths { "sealed" } else { "clear" },
        }));
    } else {
        println!(
            "created repository {} at {}",
            repo.config().repo_id.short(),
            repo.location()
        );
    }
    Ok(0)
}
