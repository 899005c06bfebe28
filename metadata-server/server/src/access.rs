//! Who may call what: repository tokens, their roles, and the role each RPC
//! needs.
//!
//! A token is bound to one repository and has one role. Roles are ordered,
//! each allowing everything the one before it does:
//!
//! | role | may |
//! |---|---|
//! | `restore` | locate chunks, download the filter, read the cluster map and commit times |
//! | `backup` | also: ask which chunks are unknown, register packs, begin, renew, commit and end sessions |
//! | `prune` | also: list sessions, condemn chunks, record pack states, relocate chunks, clear the index |
//! | `admin` | everything (the role for operators' tools) |
//!
//! A `backup` token can add data and snapshots and nothing else: it cannot
//! condemn a chunk, mark a pack dead or clear the index, so a compromised
//! client cannot make garbage collection remove what other backups need.
//! Tokens written before roles existed have none and keep working as
//! `prune`, which is what they could do then.
//!
//! The token file (TOML, `[[token]]`) keeps only the BLAKE3 hash of each
//! token. A revoked token stays in the file, marked with the time of its
//! revocation, so that `token list` and the audit log can still name it.
//! Nodes re-read the file when it changes, so an added or revoked token
//! takes effect on every node that reads the file at its next request.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use cairn_chunk_store::RepoId;

/// What a token may do (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: restore.
    Restore,
    /// Append-only: backups.
    Backup,
    /// Backups and garbage collection.
    Prune,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::Restore, Role::Backup, Role::Prune, Role::Admin];

    /// The role's name as written in token files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Restore => "restore",
            Role::Backup => "backup",
            Role::Prune => "prune",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role {s:?}; use restore, backup, prune or admin"))
    }
}

/// Every RPC of the index service, for the tests that walk them all.
pub const METHODS: [&str; 15] = [
    "UnknownChunks",
    "RegisterPack",
    "RelocatePack",
    "Locate",
    "GetFilter",
    "ClearRepository",
    "BeginSession",
    "RenewSession",
    "CommitManifest",
    "EndSession",
    "ListSessions",
    "Condemn",
    "PackStates",
    "ClusterMap",
    "CommitTimes",
];

/// The weakest role that may call `method`. Unknown methods need `admin`
/// (a method added without a line here is closed, not open).
pub fn required_role(method: &str) -> Role {
    match method {
        "Locate" | "GetFilter" | "ClusterMap" | "CommitTimes" => Role::Restore,
        "UnknownChunks" | "RegisterPack" | "BeginSession" | "RenewSession" | "CommitManifest"
        | "EndSession" => Role::Backup,
        "RelocatePack" | "ClearRepository" | "ListSessions" | "Condemn" | "PackStates" => {
            Role::Prune
        }
        _ => Role::Admin,
    }
}

/// A token as stored: only its BLAKE3 hash is kept on disk.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Hex BLAKE3 hash of the bearer token.
    pub hash: String,
    /// Repository id (64 hex) the token is bound to.
    pub repository: String,
    /// Its role; absent in files written before roles (then `prune`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// A name for people (`laptop-anna`, `prune-cron`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When it was made (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// When it stops working (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// When it was revoked (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<i64>,
}

impl TokenEntry {
    /// The short id `token list` shows and `token revoke` takes: the first
    /// 12 hex digits of the hash (not enough to find the token).
    pub fn id(&self) -> &str {
        self.hash.get(..12).unwrap_or(&self.hash)
    }

    /// The role it has (`prune` when the file records none).
    pub fn role(&self) -> Result<Role, String> {
        match &self.role {
            None => Ok(Role::Prune),
            Some(r) => r.parse(),
        }
    }

    /// Its label, or its id when it has none (for messages and the audit log).
    pub fn name(&self) -> String {
        self.label.clone().unwrap_or_else(|| self.id().to_string())
    }
}

/// The token file.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Every token, revoked ones included.
    #[serde(default)]
    pub token: Vec<TokenEntry>,
}

impl TokensFile {
    /// Reads `file` (an empty list if it does not exist).
    pub fn load(file: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(file) {
            Ok(text) => Self::parse(&text).map_err(|e| format!("{}: {e}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", file.display())),
        }
    }

    /// Parses and checks a token file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        for t in &file.token {
            blake3::Hash::from_hex(&t.hash)
                .map_err(|_| format!("token {}: hash is not 64 hex digits", t.id()))?;
            t.repository
                .parse::<RepoId>()
                .map_err(|e| format!("token {}: repository {}: {e}", t.id(), t.repository))?;
            t.role().map_err(|e| format!("token {}: {e}", t.id()))?;
        }
        Ok(file)
    }

    /// Writes the file whole, through a temporary file and a rename, so a
    /// node never reads half of it.
    pub fn save(&self, file: &Path) -> Result<(), String> {
        let text = toml::to_string(self).map_err(|e| e.to_string())?;
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(|e| format!("{}: {e}", file.display()))
    }
}

/// Hash under which a token is stored.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// What `token add` is asked for.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The repository.
    pub repository: RepoId,
    /// Its role.
    pub role: Role,
    /// Lifetime in seconds, if it expires.
    pub expires_in: Option<i64>,
    /// A name for people.
    pub label: Option<String>,
}

/// Appends a new random token to the token file; returns the token (the
/// only time it exists outside the client that receives it).
pub fn add(file: &Path, new: &NewToken) -> Result<String, String> {
    let mut tokens = TokensFile::load(file)?;
    let token = format!(
        "cairn_{}",
        hex::encode(cairn_chunk_store::crypto::random_bytes::<24>())
    );
    let now = now_secs();
    tokens.token.push(TokenEntry {
        hash: token_hash(&token),
        repository: new.repository.to_hex(),
        role: Some(new.role.name().to_string()),
        label: new.label.clone(),
        created: Some(now),
        expires: new.expires_in.map(|d| now.saturating_add(d)),
        revoked: None,
    });
    tokens.save(file)?;
    Ok(token)
}

/// Appends a `prune` token for `repo` without label or expiry (what
/// tokens were before roles; for tests and scripts).
pub fn add_token(file: &Path, repo: &RepoId) -> Result<String, String> {
    add(
        file,
        &NewToken {
            repository: *repo,
            role: Role::Prune,
            expires_in: None,
            label: None,
        },
    )
}

/// Marks the tokens whose id or label is `which` revoked; returns them.
/// A label shared by several tokens revokes none of them: the id says which.
pub fn revoke(file: &Path, which: &str) -> Result<Vec<TokenEntry>, String> {
    let mut tokens = TokensFile::load(file)?;
    let by_id: Vec<usize> = (0..tokens.token.len())
        .filter(|&i| tokens.token[i].id() == which)
        .collect();
    let matches = if by_id.is_empty() {
        (0..tokens.token.len())
            .filter(|&i| tokens.token[i].label.as_deref() == Some(which))
            .collect()
    } else {
        by_id
    };
    match matches.len() {
        0 => return Err(format!("no token has the id or label {which:?}")),
        1 => {}
        n => {
            return Err(format!(
                "{n} tokens have the label {which:?}; revoke one by its id (`token list`)"
            ));
        }
    }
    let now = now_secs();
    let mut out = Vec::new();
    for i in matches {
        let t = &mut tokens.token[i];
        if t.revoked.is_none() {
            t.revoked = Some(now);
        }
        out.push(t.clone());
    }
    tokens.save(file)?;
    Ok(out)
}

/// Where the nodes reading `tokens` record when each token was last used.
pub fn last_use_path(tokens: &Path) -> PathBuf {
    let mut name = tokens.as_os_str().to_owned();
    name.push(".last-use");
    PathBuf::from(name)
}

/// Token id → last use (Unix seconds), as the nodes recorded it.
pub fn read_last_use(tokens: &Path) -> HashMap<String, i64> {
    std::fs::read_to_string(last_use_path(tokens))
        .ok()
        .and_then(|t| toml::from_str::<HashMap<String, i64>>(&t).ok())
        .unwrap_or_default()
}

/// Merges `uses` into the last-use file (keeping the later time of each).
pub fn write_last_use(tokens: &Path, uses: &HashMap<String, i64>) -> Result<(), String> {
    let mut all = read_last_use(tokens);
    for (id, t) in uses {
        let e = all.entry(id.clone()).or_insert(*t);
        *e = (*e).max(*t);
    }
    let path = last_use_path(tokens);
    let text = toml::to_string(&all).map_err(|e| e.to_string())?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn now_secs() -> i64 {
    cairn_chunk_store::now_unix_nanos() / 1_000_000_000
}

/// Why a call was refused (the label of the refusals counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization` header, or not `Bearer`.
    NoToken,
    /// A token no file lists.
    UnknownToken,
    /// A revoked token.
    Revoked,
    /// An expired token.
    Expired,
    /// A token of another repository.
    WrongRepository,
    /// A role too weak for the call.
    Role,
}

impl Refusal {
    /// The label value.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::UnknownToken => "unknown_token",
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
            Refusal::WrongRepository => "wrong_repository",
            Refusal::Role => "role",
        }
    }
}

/// A caller whose token was accepted.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The repository its token is bound to.
    pub repo: RepoId,
    /// Its role.
    pub role: Role,
    /// Its label (or id).
    pub name: String,
    /// Its peer address, when known.
    pub peer: Option<std::net::SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_every_method_has_one() {
        assert!(Role::Restore < Role::Backup && Role::Backup < Role::Prune);
        assert!(Role::Prune < Role::Admin);
        let backup_may: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|m| required_role(m) <= Role::Backup)
            .collect();
        assert_eq!(
            backup_may,
            [
                "UnknownChunks",
                "RegisterPack",
                "Locate",
                "GetFilter",
                "BeginSession",
                "RenewSession",
                "CommitManifest",
                "EndSession",
                "ClusterMap",
                "CommitTimes"
            ]
        );
        assert_eq!(required_role("SomethingNew"), Role::Admin);
    }

    #[test]
    fn token_files_without_roles_still_load_as_prune() {
        let old = format!(
            "[[token]]\nhash = \"{}\"\nrepository = \"{}\"\n",
            "ab".repeat(32),
            "00".repeat(32)
        );
        let file = TokensFile::parse(&old).unwrap();
        assert!(TokensFile::parse(&old.replace(&"ab".repeat(32), "ab12")).is_err());
        assert_eq!(file.token[0].role().unwrap(), Role::Prune);
        assert!(TokensFile::parse(&old.replace("\"\n", "\"\nrole = \"root\"\n")).is_err());
    }

    #[test]
    fn revoke_by_id_or_unique_label() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        let repo = RepoId::random();
        let new = |label: &str| NewToken {
            repository: repo,
            role: Role::Backup,
            expires_in: None,
            label: Some(label.into()),
        };
        add(&file, &new("a")).unwrap();
        add(&file, &new("b")).unwrap();
        add(&file, &new("b")).unwrap();
        assert!(revoke(&file, "b").unwrap_err().contains("2 tokens"));
        assert_eq!(revoke(&file, "a").unwrap().len(), 1);
        let id = TokensFile::load(&file).unwrap().token[2].id().to_string();
        assert_eq!(revoke(&file, &id).unwrap()[0].id(), id);
        let after = TokensFile::load(&file).unwrap();
        let revoked: Vec<bool> = after.token.iter().map(|t| t.revoked.is_some()).collect();
        assert_eq!(revoked, [true, false, true]);
        assert!(revoke(&file, "nobody").is_err());
    }
}
