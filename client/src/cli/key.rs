//! `cairn key`: the passwords of a repository.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_chunk_store::KeyId;
use cairn_client::context::{hostname, kdf_params, new_password, username};
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::render::{format_time, print_json};

#[derive(clap::Subcommand, Debug)]
pub enum KeyCommand {
    /// List key files.
    List,
    /// Add a password.
    Add {
        /// Read the new password from this file (or set CAIRN_NEW_PASSWORD).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a key file.
    Remove {
        /// Key id (from `key list`).
        id: String,
    },
    /// Change the password of the key in use.
    Passwd {
        /// Read the new password from this file (or set CAIRN_NEW_PASSWORD).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
}

pub fn run(rt: &Runtime, g: &Globals, command: KeyCommand) -> Result<u8> {
    let repo = rt.block_on(g.repo.open())?;
    match command {
        KeyCommand::List => {
            let keys = rt.block_on(repo.list_keys())?;
            if g.json {
                let list: Vec<_> = keys
                    .iter()
                    .map(|k| json!({"id": k.id, "current": k.current, "host": k.host, "user": k.user, "created": format_time(k.created_unix * 1_000_000_000, true)}))
                    .collect();
                print_json(&serde_json::Value::Array(list));
            } else {
                for k in &keys {
                    println!(
                        "{} {} {}@{} {}",
                        if k.current { "*" } else { " " },
                        k.id,
                        k.user,
                        k.host,
                        format_time(k.created_unix * 1_000_000_000, false)
                    );
                }
            }
        }
        KeyCommand::Add { new_password_file } => {
            let password = new_password(new_password_file.as_deref())?;
            let id = rt.block_on(repo.add_key(
                password.as_bytes(),
                kdf_params(),
                &hostname(),
                &username(),
            ))?;
            println!("added key {id}");
        }
        KeyCommand::Remove { id } => {
            let id: KeyId = id.parse().context("key id")?;
            rt.block_on(repo.remove_key(&id))?;
            println!("removed key {id}");
        }
        KeyCommand::Passwd { new_password_file } => {
            let password = new_password(new_password_file.as_deref())?;
            let id = rt.block_on(repo.change_password(
                password.as_bytes(),
                kdf_params(),
                &hostname(),
                &username(),
            ))?;
            println!("password changed (new key {id})");
        }
    }
    Ok(0)
}
