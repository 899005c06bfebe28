//! Running a node: the gRPC service, health, and `/metrics`, on listeners
//! the caller bound (tests bind `127.0.0.1:0`), until `shutdown` resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::v1::index_server::IndexServer;
use cairn_proto::v1::peer_server::PeerServer;
use tokio::net::TcpListener;

use crate::cluster::peer::PeerService;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::service::IndexService;

/// Largest request or response message.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Serves until `shutdown` resolves, then stops accepting, drains the calls
/// in flight, and flushes every database.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let metrics_task = metrics_listener.map(|l| {
        let (node, metrics) = (node.clone(), metrics.clone());
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let (node, metrics) = (node.clone(), metrics.clone());
                async move {
                    let n = node.clone();
                    let (owned, disk) =
                        tokio::task::spawn_blocking(move || (n.partitions_owned(), n.disk_bytes()))
                            .await
                            .unwrap_or((0, 0));
                    metrics.partitions_owned.set(owned as i64);
                    metrics.disk_bytes.set(disk as i64);
                    node.cluster.report(&metrics.cluster, &node.progress);
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        );
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app)
                .with_graceful_shutdown(stopped(rx))
                .await
            {
                tracing::error!("metrics server: {e}");
            }
        })
    });

    let cluster_tasks = if node.cluster.clustered() {
        let advertise = match &node.config.advertise {
            Some(a) => a.clone(),
            None => {
                let scheme = if node.config.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", listener.local_addr()?)
            }
        };
        vec![
            tokio::spawn(crate::cluster::run(
                node.clone(),
                advertise,
                stop_rx.clone(),
            )),
            tokio::spawn(crate::cluster::mover::run(node.clone(), stop_rx.clone())),
            tokio::spawn(crate::cluster::antientropy::run(
                node.clone(),
                stop_rx.clone(),
            )),
        ]
    } else {
        Vec::new()
    };

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<IndexServer<IndexService>>().await;
    let service = IndexServer::new(IndexService::new(node.clone(), metrics))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let mut builder = tonic::transport::Server::builder();
    match (&node.config.tls_cert, &node.config.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &std::path::PathBuf| {
                std::fs::read(p).map_err(|e| anyhow::anyhow!("TLS file {}: {e}", p.display()))
            };
            let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
            builder =
                builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
        }
        (None, None) => {}
        _ => anyhow::bail!("TLS needs both a certificate and a key (tls_cert and tls_key)"),
    }
    // Answers go out at once: with Nagle's algorithm on, a reply that
    // follows a small write waits for the client's delayed ACK (40 ms on
    // Linux), once per call a client makes in turn.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    builder
        .timeout(Duration::from_secs(node.config.request_timeout_secs))
        .add_service(health)
        .add_service(service)
        .add_service(
            PeerServer::new(PeerService::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx))
        .await?;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    for t in cluster_tasks {
        let _ = t.await;
    }
    let n = node.clone();
    let _ = tokio::task::spawn_blocking(move || n.flush_all()).await;
    Ok(())
}
