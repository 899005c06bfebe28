//! Prometheus metrics of a node: rate, errors, latency, saturation.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// RPC method.
    pub method: String,
    /// gRPC status code name (`Ok`, `Unauthenticated`, ...).
    pub code: String,
}

/// Labels by method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// RPC method.
    pub method: String,
}

/// Labels of a refused call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Why (`role`, `revoked`, `expired`, `wrong_repository`, `unknown_token`, `no_token`).
    pub reason: String,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Latency by method, seconds.
    pub latency: HistogramFamily,
    /// Requests being handled.
    pub in_flight: Gauge,
    /// Requests refused because the node was saturated.
    pub shed: Counter,
    /// Calls refused for their credentials, by reason.
    pub refused: Family<RefusedLabels, Counter>,
    /// Fingerprints asked about through UnknownChunks.
    pub fingerprints_queried: Counter,
    /// Bytes of filters sent.
    pub filter_bytes: Counter,
    /// Partitions this node owns.
    pub partitions_owned: Gauge,
    /// Bytes on disk under the data directory.
    pub disk_bytes: Gauge,
    /// This node's view of the cluster, set on each scrape.
    pub cluster: ClusterGauges,
}

/// The cluster as one node sees it (gauges set from its counters on each
/// scrape).
#[derive(Default)]
pub struct ClusterGauges {
    /// The newest layout version applied.
    pub layout_version: Gauge,
    /// Partitions this node still has to stream in.
    pub moves_in_flight: Gauge,
    /// Partitions this node has streamed in, ever.
    pub moves_done: Gauge,
    /// Records copied by moves.
    pub records_copied: Gauge,
    /// Partitions dropped after they moved away.
    pub partitions_dropped: Gauge,
    /// Partitions with fewer caught-up replicas on up nodes than R.
    pub under_replicated: Gauge,
    /// Anti-entropy rounds completed since start.
    pub antientropy_rounds: Gauge,
    /// Records repaired by anti-entropy since start.
    pub antientropy_repairs: Gauge,
}

impl ClusterGauges {
    fn register(&self, registry: &mut Registry) {
        let gauges: [(&str, &str, &Gauge); 8] = [
            (
                "layout_version",
                "the newest cluster layout version applied",
                &self.layout_version,
            ),
            (
                "moves_in_flight",
                "partitions this node still streams in",
                &self.moves_in_flight,
            ),
            (
                "moves_done",
                "partitions this node has streamed in",
                &self.moves_done,
            ),
            (
                "records_copied",
                "records copied by partition moves",
                &self.records_copied,
            ),
            (
                "partitions_dropped",
                "partition copies dropped after moving away",
                &self.partitions_dropped,
            ),
            (
                "under_replicated_partitions",
                "partitions with fewer caught-up replicas on up nodes than R",
                &self.under_replicated,
            ),
            (
                "antientropy_rounds",
                "anti-entropy rounds since start",
                &self.antientropy_rounds,
            ),
            (
                "antientropy_repairs",
                "records repaired by anti-entropy since start",
                &self.antientropy_repairs,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cairn_index");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let in_flight = Gauge::default();
        let shed = Counter::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        let fingerprints_queried = Counter::default();
        let filter_bytes = Counter::default();
        let partitions_owned = Gauge::default();
        let disk_bytes = Gauge::default();
        registry.register(
            "requests",
            "gRPC requests by method and status",
            requests.clone(),
        );
        registry.register("request_seconds", "gRPC request latency", latency.clone());
        registry.register(
            "in_flight_requests",
            "requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "shed_requests",
            "requests refused while saturated",
            shed.clone(),
        );
        registry.register(
            "refused_requests",
            "calls refused for their credentials, by reason",
            refused.clone(),
        );
        registry.register(
            "fingerprints_queried",
            "fingerprints asked about through UnknownChunks",
            fingerprints_queried.clone(),
        );
        registry.register(
            "filter_bytes",
            "bytes of filters sent",
            filter_bytes.clone(),
        );
        registry.register(
            "partitions_owned",
            "partitions this node owns",
            partitions_owned.clone(),
        );
        registry.register(
            "disk_bytes",
            "bytes of RocksDB data on disk",
            disk_bytes.clone(),
        );
        let cluster = ClusterGauges::default();
        cluster.register(&mut registry);
        Self {
            registry,
            cluster,
            requests,
            latency,
            in_flight,
            shed,
            refused,
            fingerprints_queried,
            filter_bytes,
            partitions_owned,
            disk_bytes,
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
