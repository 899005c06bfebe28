//! Connections to the index nodes: gRPC endpoints (TLS when the URL says
//! https, with `CAIRN_INDEX_CA` for a private authority), the bearer token on
//! every request, and a circuit breaker per node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::v1::index_client::IndexClient;
use tonic::transport::{Channel, Endpoint};

/// How long a node that failed is skipped.
const BREAKER_OPEN: Duration = Duration::from_secs(10);
/// Failures in a row that open a breaker.
const BREAKER_THRESHOLD: u32 = 2;

pub(super) struct Breaker {
    pub(super) failures: u32,
    pub(super) open_until: Option<Instant>,
}

pub(super) struct NodeConn {
    pub(super) id: String,
    pub(super) client: IndexClient<Channel>,
    pub(super) breaker: Mutex<Breaker>,
    /// The newest layout epoch any node refused a call with (shared by
    /// every connection of one client).
    pub(super) newer_epoch: Arc<AtomicU64>,
}

impl NodeConn {
    pub(super) fn available(&self) -> bool {
        let b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.open_until.is_none_or(|t| Instant::now() >= t)
    }

    pub(super) fn succeeded(&self) {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.failures = 0;
        b.open_until = None;
    }

    pub(super) fn failed(&self, what: &str, status: &tonic::Status) {
        if let Some(epoch) = newer_layout(status) {
            // The node is fine: this client routes by an old layout.
            self.newer_epoch.fetch_max(epoch, Ordering::Relaxed);
            return;
        }
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.failures += 1;
        tracing::debug!("index node {} failed {what}: {status}", self.id);
        if b.failures >= BREAKER_THRESHOLD {
            b.open_until = Some(Instant::now() + BREAKER_OPEN);
        }
    }
}

/// An endpoint for `url`. `https://` URLs use TLS, trusting the PEM file
/// named by `CAIRN_INDEX_CA` when set, else the public web PKI roots.
pub(super) fn endpoint(url: &str, timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    let mut e = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        match std::env::var_os("CAIRN_INDEX_CA").map(std::fs::read) {
            Some(Ok(pem)) => tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            Some(Err(err)) => {
                tracing::warn!("CAIRN_INDEX_CA unreadable ({err}); using the public roots")
            }
            None => tls = tls.with_webpki_roots(),
        }
        e = e.tls_config(tls)?;
    }
    Ok(e)
}

/// The layout epoch a node refused a call with (ABORTED with
/// `cairn-layout-epoch`): the cluster's layout changed.
pub(super) fn newer_layout(status: &tonic::Status) -> Option<u64> {
    if status.code() != tonic::Code::Aborted {
        return None;
    }
    status
        .metadata()
        .get(EPOCH_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Metadata key of the layout epoch a call routes by.
pub(super) const EPOCH_HEADER: &str = "cairn-layout-epoch";

/// A request with the bearer token and, in a cluster with a layout, the
/// epoch of the routing table it was routed by (0: none sent).
pub(super) fn authed<T>(msg: T, token: &str, epoch: u64) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    if epoch > 0
        && let Ok(v) = epoch.to_string().parse()
    {
        r.metadata_mut().insert(EPOCH_HEADER, v);
    }
    r
}
