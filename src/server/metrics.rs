//! Prometheus metrics of the server (`GET /metrics`, OpenMetrics text):
//! the build, requests by operation and status, errors by operation and
//! EBS or EC2 error class, latency and maintenance runs for everyone; block
//! bytes in and out and the store's pending snapshots, chunks and stored
//! bytes only on the operator's listener (see `router_with_metrics`).

use super::Maintenance;
use crate::engine::Engine;
use crate::ids::BLOCK_SIZE;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// See the module documentation.
pub(crate) struct Metrics {
    /// Request counts and latencies.
    registry: Registry,
    /// What tells about the store's content and traffic.
    store_registry: Registry,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    block_bytes: Family<Labels, Counter>,
    pending_snapshots: Gauge,
    chunks: Gauge,
    stored_bytes: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("blocksnap");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "EBS API requests by operation and HTTP status",
            requests.clone(),
        );
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            "errors",
            "Requests answered with an error, by operation and EBS or EC2 error class",
            errors.clone(),
        );
        registry.register(
            "build",
            "The server's build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
        );
        let latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request to response, by operation",
            latency.clone(),
        );
        let mut store_registry = Registry::with_prefix("blocksnap");
        let block_bytes = Family::<Labels, Counter>::default();
        store_registry.register(
            "block_bytes",
            "Block bytes received (in) and sent (out)",
            block_bytes.clone(),
        );
        let pending_snapshots = Gauge::default();
        store_registry.register(
            "pending_snapshots",
            "Snapshots pending, all owners",
            pending_snapshots.clone(),
        );
        let chunks = Gauge::default();
        store_registry.register("chunks", "Chunks stored in packs", chunks.clone());
        let stored_bytes = Gauge::default();
        store_registry.register(
            "stored_bytes",
            "Bytes of records in packs",
            stored_bytes.clone(),
        );
        Metrics {
            registry,
            store_registry,
            requests,
            errors,
            latency,
            block_bytes,
            pending_snapshots,
            chunks,
            stored_bytes,
        }
    }

    /// Counts one finished request, and its error class if it failed.
    pub(crate) fn observe(
        &self,
        operation: &'static str,
        status: u16,
        error_class: Option<&str>,
        seconds: f64,
    ) {
        self.requests
            .get_or_create(&vec![
                ("operation", operation.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
        if let Some(class) = error_class {
            self.errors
                .get_or_create(&vec![
                    ("operation", operation.to_string()),
                    ("class", class.to_string()),
                ])
                .inc();
        }
        self.latency
            .get_or_create(&vec![("operation", operation.to_string())])
            .observe(seconds);
        let direction = match (operation, status) {
            ("PutSnapshotBlock", 201) => "in",
            ("GetSnapshotBlock", 200) => "out",
            _ => return,
        };
        self.block_bytes
            .get_or_create(&vec![("direction", direction.to_string())])
            .inc_by(BLOCK_SIZE as u64);
    }

    /// The metrics in the OpenMetrics text format: the request metrics,
    /// maintenance's, and with `store`, the store's too (gauges
    /// refreshed).
    pub(crate) fn render(
        &self,
        store: Option<&Engine>,
        maintenance: Option<&Maintenance>,
    ) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut text, &self.registry);
        if let Some(maintenance) = maintenance {
            maintenance.encode_metrics(&mut text);
        }
        if let Some(engine) = store {
            let stats = engine.chunk_stats();
            self.pending_snapshots
                .set(i64::try_from(engine.pending_snapshot_count()).unwrap_or(i64::MAX));
            self.chunks
                .set(i64::try_from(stats.chunks).unwrap_or(i64::MAX));
            self.stored_bytes
                .set(i64::try_from(stats.stored_bytes).unwrap_or(i64::MAX));
            let _ = encode_registry(&mut text, &self.store_registry);
        }
        let _ = encode_eof(&mut text);
        text
    }
}
