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
    /// 1 for each condition an object of ours has now (the alerts are written against it),
    /// filled from `objects` at each scrape.
    pub conditions: Family<ConditionLabels, Gauge>,
    /// Each Failover's RTO (created → workload Ready in the target zone), filled from
    /// `objects` at each scrape.
    pub failover_rto: Family<FailoverLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The operator's caches, set once when its controllers start.
    pub objects: std::sync::OnceLock<ObjectSource>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub namespace: String,
    pub failover: String,
}

/// One condition of one object: `kind` (RecoveryVault, ReplicatedWorkload, Failover), the
/// object, and the condition's type, status and reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub r#type: String,
    pub status: &'static str,
    pub reason: String,
}

/// One cached object's conditions: its kind (RecoveryVault, ReplicatedWorkload, Failover),
/// namespace and name, and the RTO of a Failover that reached its workload.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectState {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub conditions: Vec<crate::api::conditions::Condition>,
    pub rto_seconds: Option<f64>,
}

/// What the condition and RTO gauges are filled from at each scrape: every object the
/// operator knows now (its caches), so that no deleted object's series lingers.
pub type ObjectSource = Box<dyn Fn() -> Vec<ObjectState> + Send + Sync>;

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
    /// The RPO the workload is held to (twice its crash-consistent frequency).
    pub rpo_target: Family<WorkloadLabels, Gauge>,
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
            rpo_target: Family::default(),
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
            "rpo_target_seconds",
            "The RPO a workload is held to: twice its crash-consistent frequency",
            m.rpo_target.clone(),
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
        let conditions = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "condition",
            "1 for each condition a vault, workload or failover has (kind, namespace, name, type, status, reason)",
            conditions.clone(),
        );
        let failover_rto =
            Family::<FailoverLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "failover_rto_seconds",
            "Seconds from a Failover's creation until its workload was Ready in the target zone",
            failover_rto.clone(),
        );
        Self {
            failover_rto,
            conditions,
            objects: std::sync::OnceLock::new(),
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
        if let Some(source) = self.objects.get() {
            self.conditions.clear();
            self.failover_rto.clear();
            for object in source() {
                for c in object.conditions {
                    let labels = ConditionLabels {
                        kind: object.kind,
                        namespace: object.namespace.clone(),
                        name: object.name.clone(),
                        r#type: c.r#type,
                        status: c.status.as_str(),
                        reason: c.reason,
                    };
                    self.conditions.get_or_create(&labels).set(1);
                }
                if let Some(rto) = object.rto_seconds {
                    self.failover_rto
                        .get_or_create(&FailoverLabels {
                            namespace: object.namespace,
                            failover: object.name,
                        })
                        .set(rto);
                }
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing metrics to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{Condition, ConditionStatus};
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_condition_gauge_shows_what_the_caches_hold_now_and_nothing_older() {
        let m = Metrics::default();
        let held: Arc<Mutex<Vec<Condition>>> = Arc::new(Mutex::new(vec![Condition::new(
            "Registered",
            ConditionStatus::False,
            "AgentLost",
            "node n1",
        )]));
        let source = held.clone();
        let _ = m.objects.set(Box::new(move || {
            vec![
                ObjectState {
                    kind: "ReplicatedWorkload",
                    namespace: "apps".into(),
                    name: "db".into(),
                    conditions: source.lock().unwrap().clone(),
                    rto_seconds: None,
                },
                ObjectState {
                    kind: "Failover",
                    namespace: "apps".into(),
                    name: "db-failover".into(),
                    conditions: Vec::new(),
                    rto_seconds: Some(2.5),
                },
            ]
        }));
        let line = r#"site_recovery_condition{kind="ReplicatedWorkload",namespace="apps",name="db",type="Registered",status="False",reason="AgentLost"} 1"#;
        assert!(m.encode().contains(line), "{}", m.encode());
        let rto =
            r#"site_recovery_failover_rto_seconds{namespace="apps",failover="db-failover"} 2.5"#;
        assert!(m.encode().contains(rto), "{}", m.encode());
        // The agent is back: the old series goes with the condition it stood for.
        *held.lock().unwrap() = vec![Condition::new(
            "Registered",
            ConditionStatus::True,
            "AgentsRegistered",
            "",
        )];
        let text = m.encode();
        assert!(!text.contains("AgentLost"), "{text}");
        assert!(
            text.contains(r#"status="True",reason="AgentsRegistered"} 1"#),
            "{text}"
        );
    }
}
