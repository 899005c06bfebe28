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
    /// Stage, apply and show changes to the cluster's partition layout (in etcd).
    Layout {
        #[command(subcommand)]
        command: LayoutCommand,
    },
    /// The cluster's state: layout version, nodes, under-replicated
    /// partitions, moves. Exit code 0 when healthy, 1 otherwise.
    Status {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
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
    /// This node's id in the cluster layout.
    #[arg(long)]
    node_id: Option<String>,
    /// etcd client URLs (comma-separated): run as a member of the cluster
    /// whose layout etcd holds. Without it, the node owns every partition.
    #[arg(long, value_delimiter = ',', env = "CAIRN_INDEX_ETCD")]
    etcd: Option<Vec<String>>,
    /// The cluster's key prefix in etcd.
    #[arg(long)]
    etcd_prefix: Option<String>,
    /// The URL clients and peers reach this node at (default: http:// and the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Relative weight in placement (a node of capacity 2 owns twice the partitions).
    #[arg(long)]
    capacity: Option<u32>,
    /// Seconds between anti-entropy rounds.
    #[arg(long)]
    antientropy_secs: Option<u64>,
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

#[derive(clap::Args, Debug)]
struct EtcdArgs {
    /// etcd client URLs (comma-separated).
    #[arg(long, value_delimiter = ',', env = "CAIRN_INDEX_ETCD", required = true)]
    etcd: Vec<String>,
    /// The cluster's key prefix in etcd.
    #[arg(long, default_value = "/cairn/")]
    etcd_prefix: String,
}

#[derive(Subcommand, Debug)]
enum LayoutCommand {
    /// Stage adding nodes (each must be running and registered in etcd).
    Add {
        /// Node ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Replicas per partition from the next version on.
        #[arg(long)]
        replication: Option<u32>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Stage removing nodes: once applied, their partitions move to the
    /// others, then they drop their copies and can be stopped.
    Remove {
        /// Node ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Apply the staged changes as the next layout version.
    Apply {
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Show the applied versions in use and the staged changes.
    Show {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
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
        Err(e) if e.is::<Unhealthy>() => ExitCode::from(1),
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
            etcd: Vec::new(),
            etcd_prefix: "/cairn/".to_string(),
            advertise: None,
            capacity: 1,
            antientropy_secs: 60,
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
    if let Some(v) = a.etcd {
        config.etcd = v.into_iter().filter(|u| !u.is_empty()).collect();
    }
    if let Some(v) = a.etcd_prefix {
        config.etcd_prefix = v;
    }
    if let Some(v) = a.advertise {
        config.advertise = Some(v);
    }
    if let Some(v) = a.capacity {
        config.capacity = v;
    }
    if let Some(v) = a.antientropy_secs {
        config.antientropy_secs = v;
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
        Command::Layout { command } => cluster_command(ClusterCommand::Layout(command)),
        Command::Status { etcd, json } => cluster_command(ClusterCommand::Status { etcd, json }),
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

enum ClusterCommand {
    Layout(LayoutCommand),
    Status { etcd: EtcdArgs, json: bool },
}

/// `layout ...` and `status`: talk to etcd, print, pick the exit code.
fn cluster_command(command: ClusterCommand) -> Result<()> {
    use cairn_index_server::cluster::{admin, etcd::Etcd};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let connect = |a: &EtcdArgs| {
            let (urls, prefix) = (a.etcd.clone(), a.etcd_prefix.clone());
            async move { Etcd::connect(&urls, &prefix).await }
        };
        match command {
            ClusterCommand::Layout(LayoutCommand::Add { ids, replication, etcd }) => {
                let staged = admin::stage_add(&connect(&etcd).await?, &ids, replication).await?;
                print_staged(&staged);
            }
            ClusterCommand::Layout(LayoutCommand::Remove { ids, etcd }) => {
                let staged = admin::stage_remove(&connect(&etcd).await?, &ids).await?;
                print_staged(&staged);
            }
            ClusterCommand::Layout(LayoutCommand::Apply { etcd }) => {
                let layout = admin::apply(&connect(&etcd).await?).await?;
                if let Some(v) = layout.history.last() {
                    println!(
                        "applied layout version {}: {} node(s), {} replica(s) per partition",
                        v.version,
                        v.nodes.len(),
                        v.replication
                    );
                    if layout.history.len() > 1 {
                        println!("partitions now move; `cairn-index status` shows progress");
                    }
                }
            }
            ClusterCommand::Layout(LayoutCommand::Show { etcd, json }) => {
                let (layout, staged) = admin::show(&connect(&etcd).await?).await?;
                if json {
                    let version = |v: &cairn_proto::v1::LayoutVersion| {
                        serde_json::json!({
                            "version": v.version,
                            "replication": v.replication,
                            "nodes": v.nodes.iter().map(|n| serde_json::json!({
                                "id": n.id, "address": n.address, "capacity": n.capacity,
                            })).collect::<Vec<_>>(),
                        })
                    };
                    println!(
                        "{}",
                        serde_json::json!({
                            "versions": layout.history.iter().map(version).collect::<Vec<_>>(),
                            "staged": {
                                "add": staged.add.iter().map(|n| &n.id).collect::<Vec<_>>(),
                                "remove": staged.remove,
                                "replication": (staged.replication > 0).then_some(staged.replication),
                            },
                        })
                    );
                } else {
                    if layout.history.is_empty() {
                        println!("no layout applied yet");
                    }
                    for v in &layout.history {
                        println!("version {} (R = {}):", v.version, v.replication);
                        for n in &v.nodes {
                            println!("  {}  {}  capacity {}", n.id, n.address, n.capacity);
                        }
                    }
                    print_staged(&staged);
                }
            }
            ClusterCommand::Status { etcd, json } => {
                let status = admin::cluster_status(&connect(&etcd).await?).await?;
                if json {
                    println!("{}", serde_json::to_string(&status)?);
                } else {
                    println!(
                        "layout version {} ({} in use), R = {}: {}",
                        status.layout_version,
                        status.versions_in_use,
                        status.replication,
                        if status.healthy { "healthy" } else { "NOT healthy" }
                    );
                    for n in &status.nodes {
                        println!(
                            "  {:<12} {:<8} {:<4} {:>5} partitions {:>12} bytes  {}",
                            n.id,
                            n.state,
                            if n.up { "up" } else { "DOWN" },
                            n.partitions,
                            n.bytes,
                            n.address
                        );
                    }
                    println!(
                        "under-replicated partitions: {}; moves in flight: {}; moves done: {}{}",
                        status.under_replicated,
                        status.moves_in_flight,
                        status.moves_done,
                        if status.staged { "; changes staged (cairn-index layout apply)" } else { "" }
                    );
                }
                if !status.healthy {
                    return Err(anyhow!(Unhealthy));
                }
            }
        }
        Ok(())
    })
}

/// `status` found the cluster unhealthy: exit 1 without another message.
#[derive(Debug)]
struct Unhealthy;

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the cluster is not healthy")
    }
}

fn print_staged(staged: &cairn_proto::v1::StagedLayout) {
    if staged.add.is_empty() && staged.remove.is_empty() && staged.replication == 0 {
        println!("nothing staged");
        return;
    }
    for n in &staged.add {
        println!(
            "staged: add {} ({}, capacity {})",
            n.id, n.address, n.capacity
        );
    }
    for id in &staged.remove {
        println!("staged: remove {id}");
    }
    if staged.replication > 0 {
        println!("staged: replication {}", staged.replication);
    }
    println!("apply with `cairn-index layout apply`");
}
