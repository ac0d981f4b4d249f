//! Prometheus metrics of the operator, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub status_writes: Family<ControllerLabels, Counter>,
    pub leader: Gauge,
    pub replication: ReplicationMetrics,
}

/// Labels naming one protected workload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub namespace: String,
    pub workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsistencyLabels {
    pub consistency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocationLabels {
    /// `cache` or `target`.
    pub location: String,
}

/// Why the operator read a vault's Secrets: `check` (metadata, to see whether they changed),
/// `resolve` (the key and credentials, to open the repositories).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurposeLabels {
    pub purpose: &'static str,
}

/// The replication pipeline's metrics.
#[derive(Clone)]
pub struct ReplicationMetrics {
    pub rpo_seconds: Family<WorkloadLabels, Gauge>,
    pub recovery_points: Family<ConsistencyLabels, Counter>,
    pub bytes_transferred: Family<LocationLabels, Counter>,
    pub replication_duration: Family<WorkloadLabels, Histogram, fn() -> Histogram>,
    pub missed_intervals: Family<WorkloadLabels, Counter>,
    pub last_success: Family<WorkloadLabels, Gauge>,
    pub repository_opens: Family<LocationLabels, Counter>,
    pub secret_reads: Family<PurposeLabels, Counter>,
}

fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

impl ReplicationMetrics {
    fn new(registry: &mut Registry) -> Self {
        let m = Self {
            rpo_seconds: Family::default(),
            recovery_points: Family::default(),
            bytes_transferred: Family::default(),
            replication_duration: Family::new_with_constructor(duration_buckets),
            missed_intervals: Family::default(),
            last_success: Family::default(),
            repository_opens: Family::default(),
            secret_reads: Family::default(),
        };
        registry.register(
            "repository_opens",
            "Repositories opened by the operator (config read, key unwrapped), by location",
            m.repository_opens.clone(),
        );
        registry.register(
            "vault_secret_reads",
            "Reads of vaults' Secrets by the operator's controllers, by purpose",
            m.secret_reads.clone(),
        );
        registry.register(
            "rpo_seconds",
            "Seconds since the newest recovery point durable in the target location",
            m.rpo_seconds.clone(),
        );
        registry.register(
            "recovery_points",
            "Recovery points created, by the consistency they have",
            m.recovery_points.clone(),
        );
        registry.register(
            "bytes_transferred",
            "Bytes written to a location (after deduplication, compression and encryption)",
            m.bytes_transferred.clone(),
        );
        registry.register(
            "replication_duration_seconds",
            "Time from a point's capture instant until it is durable in the target",
            m.replication_duration.clone(),
        );
        registry.register(
            "missed_intervals",
            "Scheduled points that were not taken (late starts and failed points)",
            m.missed_intervals.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the newest point durable in the target",
            m.last_success.clone(),
        );
        m
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("site_recovery");
        let reconciliations = Family::<ControllerLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            });
        let status_writes = Family::<ControllerLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "reconciliations",
            "Reconciliations run",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error category",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            reconcile_duration.clone(),
        );
        registry.register(
            "status_writes",
            "Status subresource writes (writes that would change nothing are skipped)",
            status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        let replication = ReplicationMetrics::new(&mut registry);
        Self {
            replication,
            registry,
            reconciliations,
            reconcile_errors,
            reconcile_duration,
            status_writes,
            leader,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing metrics to a String cannot fail");
        out
    }
}
