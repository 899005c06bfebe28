//! `cairn-index`: a node of the Cairn index cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use cairn_index_server::access::{self, NewToken, Role, TokensFile};
use cairn_index_server::node::{Node, NodeConfig};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

/// A node of the Cairn index cluster.
#[derive(Parser, Debug)]
#[command(name = "cairn-index", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size difference between variants is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the index.
    Serve(ServeArgs),
    /// Manage repository tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Show the node's audit trail.
    Audit(AuditArgs),
    /// Print the shell completion script (e.g. `source <(cairn-index completions bash)`).
    Completions {
        /// The shell: bash, zsh, fish, powershell or elvish.
        shell: clap_complete::Shell,
    },
    /// Write the manual page cairn-index.1 into DIR (created if missing).
    Man {
        /// Directory to write the page to.
        dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Node configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// This node's id in the membership file.
    #[arg(long)]
    node_id: Option<String>,
    /// Membership file.
    #[arg(long)]
    members: Option<PathBuf>,
    /// Replicas per partition.
    #[arg(long)]
    replication: Option<u32>,
    /// Token file.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Requests handled at once before RESOURCE_EXHAUSTED.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// PEM certificate chain: serve over TLS (with --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Audit log file (default: DATA_DIR/audit.log).
    #[arg(long)]
    audit_log: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token for a repository and print it (only its hash is stored).
    Add {
        /// Token file.
        #[arg(long)]
        tokens: PathBuf,
        /// Repository id (`cairn init --json` prints it as repo_id).
        #[arg(long)]
        repository: String,
        /// What it may do: restore, backup (append-only), prune or admin.
        #[arg(long)]
        role: Role,
        /// It stops working after this long (e.g. 90d, 12h).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// A name for people, shown by `token list` and in the audit log.
        #[arg(long, value_name = "TEXT")]
        label: Option<String>,
    },
    /// List the tokens: id, label, repository, role, expiry, last use (never the secret).
    List {
        /// Token file.
        #[arg(long)]
        tokens: PathBuf,
        /// One JSON object per token.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (from `token list`) or its label; every
    /// node reading the file refuses it from its next request on.
    Revoke {
        /// Token file.
        #[arg(long)]
        tokens: PathBuf,
        /// The token's id or label.
        token: String,
    },
}

#[derive(clap::Args, Debug)]
struct AuditArgs {
    /// The node's audit log (default: DATA_DIR/audit.log).
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    log: Option<PathBuf>,
    /// The node's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Only events at or after this time (RFC 3339, or a duration ago: 24h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only events about this repository (id).
    #[arg(long, value_name = "ID")]
    repository: Option<String>,
    /// Print the events as JSON lines.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn node_config(a: ServeArgs) -> Result<NodeConfig> {
    let mut config = match &a.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            toml::from_str::<NodeConfig>(&text).with_context(|| format!("{}", path.display()))?
        }
        None => NodeConfig {
            node_id: a
                .node_id
                .clone()
                .ok_or_else(|| anyhow!("--node-id is required without --config"))?,
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            metrics_listen: None,
            data_dir: a
                .data_dir
                .clone()
                .ok_or_else(|| anyhow!("--data-dir is required without --config"))?,
            members: None,
            replication: 1,
            tokens: a
                .tokens
                .clone()
                .ok_or_else(|| anyhow!("--tokens is required without --config"))?,
            max_in_flight: 256,
            request_timeout_secs: 30,
            tls_cert: None,
            tls_key: None,
            audit_log: None,
            audit_max_bytes: 64 << 20,
        },
    };
    if let Some(v) = a.listen {
        config.listen = v;
    }
    if let Some(v) = a.metrics_listen {
        config.metrics_listen = Some(v);
    }
    if let Some(v) = a.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = a.node_id {
        config.node_id = v;
    }
    if let Some(v) = a.members {
        config.members = Some(v);
    }
    if let Some(v) = a.replication {
        config.replication = v;
    }
    if let Some(v) = a.tokens {
        config.tokens = v;
    }
    if let Some(v) = a.max_in_flight {
        config.max_in_flight = v;
    }
    if let Some(v) = a.tls_cert {
        config.tls_cert = Some(v);
    }
    if let Some(v) = a.tls_key {
        config.tls_key = Some(v);
    }
    if let Some(v) = a.audit_log {
        config.audit_log = Some(v);
    }
    Ok(config)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "cairn-index", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("cairn-index.1");
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page)?;
            std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
            Ok(())
        }
        Command::Token { command } => token(command),
        Command::Audit(args) => audit(args),
        Command::Serve(args) => {
            let config = node_config(args)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.listen))?;
                let metrics = match config.metrics_listen {
                    Some(addr) => Some(
                        TcpListener::bind(addr)
                            .await
                            .with_context(|| format!("cannot listen on {addr}"))?,
                    ),
                    None => None,
                };
                let node_id = config.node_id.clone();
                let node = Arc::new(Node::new(config).map_err(|e| anyhow!(e))?);
                // Tests and scripts read these lines to find port-0 listeners.
                println!(
                    "cairn-index {node_id} listening on {}",
                    listener.local_addr()?
                );
                if let Some(m) = &metrics {
                    println!("cairn-index {node_id} metrics on {}", m.local_addr()?);
                }
                use std::io::Write;
                std::io::stdout().flush()?;
                let shutdown = async {
                    use tokio::signal::unix::{SignalKind, signal};
                    match (
                        signal(SignalKind::terminate()),
                        signal(SignalKind::interrupt()),
                    ) {
                        (Ok(mut t), Ok(mut i)) => {
                            tokio::select! {
                                _ = t.recv() => {}
                                _ = i.recv() => {}
                            }
                        }
                        _ => std::future::pending::<()>().await,
                    }
                    tracing::info!("shutting down: draining requests and flushing");
                };
                cairn_index_server::server::serve(node, listener, metrics, shutdown).await
            })
        }
    }
}

fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Add {
            tokens,
            repository,
            role,
            expires,
            label,
        } => {
            let expires_in = match expires {
                Some(text) => Some(
                    cairn_chunk_store::duration::parse_secs(&text)
                        .map_err(|e| anyhow!("--expires {text}: {e}"))?,
                ),
                None => None,
            };
            let new = NewToken {
                repository: repository.parse().context("repository id")?,
                role,
                expires_in,
                label,
            };
            let token = access::add(&tokens, &new).map_err(|e| anyhow!(e))?;
            println!("{token}");
            Ok(())
        }
        TokenCommand::List { tokens, json } => {
            let file = TokensFile::load(&tokens).map_err(|e| anyhow!(e))?;
            let last_use = access::read_last_use(&tokens);
            let now = cairn_chunk_store::now_unix_nanos() / 1_000_000_000;
            let time = |t: Option<i64>| {
                t.and_then(|t| jiff::Timestamp::from_second(t).ok())
                    .map(|t| t.to_string())
            };
            if !json {
                println!(
                    "{:<12}  {:<16}  {:<12}  {:<22}  {:<20}  {:<20}  {:<20}",
                    "ID", "LABEL", "REPOSITORY", "ROLE", "EXPIRES", "LAST USE", "STATE"
                );
            }
            for t in &file.token {
                let role = match (&t.role, t.role()) {
                    (None, _) => "prune (no role recorded)".to_string(),
                    (Some(_), Ok(r)) => r.to_string(),
                    (Some(r), Err(_)) => format!("{r}?"),
                };
                let state = match (t.revoked, t.expires) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= now => "expired",
                    _ => "active",
                };
                let used = last_use.get(t.id()).copied();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": t.id(),
                            "label": t.label,
                            "repository": t.repository,
                            "role": t.role().map(|r| r.name()).unwrap_or("?"),
                            "role_recorded": t.role.is_some(),
                            "created": time(t.created),
                            "expires": time(t.expires),
                            "revoked": time(t.revoked),
                            "last_use": time(used),
                            "state": state,
                        })
                    );
                } else {
                    println!(
                        "{:<12}  {:<16}  {:<12}  {:<22}  {:<20}  {:<20}  {:<20}",
                        t.id(),
                        t.label.as_deref().unwrap_or("-"),
                        t.repository.get(..12).unwrap_or(&t.repository),
                        role,
                        time(t.expires).unwrap_or_else(|| "never".into()),
                        time(used).unwrap_or_else(|| "never".into()),
                        match t.revoked {
                            Some(r) => format!("revoked {}", time(Some(r)).unwrap_or_default()),
                            None => state.to_string(),
                        },
                    );
                }
            }
            Ok(())
        }
        TokenCommand::Revoke { tokens, token } => {
            for t in access::revoke(&tokens, &token).map_err(|e| anyhow!(e))? {
                println!("revoked token {} ({})", t.id(), t.name());
            }
            Ok(())
        }
    }
}

fn audit(a: AuditArgs) -> Result<()> {
    let path = match (a.log, a.data_dir) {
        (Some(log), _) => log,
        (None, Some(dir)) => dir.join("audit.log"),
        (None, None) => return Err(anyhow!("give --data-dir DIR or --log FILE")),
    };
    let since = match a.since.as_deref() {
        None => None,
        Some(text) => Some(match text.parse::<jiff::Timestamp>() {
            Ok(t) => t.as_second(),
            Err(_) => {
                let ago = cairn_chunk_store::duration::parse_secs(text).map_err(|e| {
                    anyhow!("--since {text}: neither an RFC 3339 time nor a duration ({e})")
                })?;
                cairn_chunk_store::now_unix_nanos() / 1_000_000_000 - ago
            }
        }),
    };
    let events = cairn_index_server::audit::read(&path).map_err(|e| anyhow!(e))?;
    for e in events {
        if since.is_some_and(|s| e["unix"].as_i64().unwrap_or(0) < s) {
            continue;
        }
        if let Some(r) = &a.repository
            && e["repository"].as_str() != Some(r.as_str())
        {
            continue;
        }
        if a.json {
            println!("{e}");
            continue;
        }
        let mut details: Vec<String> = Vec::new();
        if let serde_json::Value::Object(map) = &e {
            for (k, v) in map {
                if matches!(k.as_str(), "time" | "unix" | "node" | "event") || v.is_null() {
                    continue;
                }
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                details.push(format!("{k}={v}"));
            }
        }
        println!(
            "{}  {}  {}  {}",
            e["time"].as_str().unwrap_or(""),
            e["node"].as_str().unwrap_or(""),
            e["event"].as_str().unwrap_or(""),
            details.join(" ")
        );
    }
    Ok(())
}
