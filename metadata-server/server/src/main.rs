//! `cairn-index`: a node of the Cairn index cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use cairn_chunk_store::RepoId;
use cairn_index_server::node::{Node, NodeConfig, add_token};
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
    },
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
        Command::Token {
            command: TokenCommand::Add { tokens, repository },
        } => {
            let repo: RepoId = repository.parse().context("repository id")?;
            let token = add_token(&tokens, &repo).map_err(|e| anyhow!(e))?;
            println!("{token}");
            Ok(())
        }
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
