//! The agent registration: one coordination.k8s.io Lease per node, in the operator's
//! namespace, renewed by the agent on that node (the seed's "agent registers the machine").
//! The Lease carries the node's zone, region and the agent's version; a Lease that is not
//! renewed within its duration means the agent is lost.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;

/// Label selecting agent registrations among the namespace's Leases.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const COMPONENT_VALUE: &str = "agent-registration";
/// Label (and annotation-free key) naming the node a registration is for.
pub const NODE_LABEL: &str = "siterecovery.io/node";
pub const ZONE_ANNOTATION: &str = "siterecovery.io/zone";
pub const REGION_ANNOTATION: &str = "siterecovery.io/region";
pub const VERSION_ANNOTATION: &str = "siterecovery.io/agent-version";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// Name of the registration Lease of a node.
pub fn lease_name(node: &str) -> String {
    format!("site-recovery-agent-{node}")
}

/// The label selector that finds every registration.
pub fn selector() -> String {
    format!("{COMPONENT_LABEL}={COMPONENT_VALUE}")
}

/// A node's registration as the operator reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRegistration {
    pub node: String,
    pub zone: Option<String>,
    pub region: Option<String>,
    pub version: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration_seconds: i64,
    /// The agent's reports on points in flight.
    pub work: Vec<super::work::AgentWork>,
    /// The points it found work for and has not started (see [`super::work::QUEUED_ANNOTATION`]).
    pub queued: std::collections::BTreeSet<String>,
}

impl AgentRegistration {
    /// Reads a registration Lease; `None` when the Lease is not one.
    pub fn from_lease(lease: &Lease) -> Option<Self> {
        let labels = lease.metadata.labels.as_ref()?;
        if labels.get(COMPONENT_LABEL).map(String::as_str) != Some(COMPONENT_VALUE) {
            return None;
        }
        let node = labels.get(NODE_LABEL)?.clone();
        // A registration speaks for the node its name gives (the chart's admission policy lets an
        // agent write only that one): a Lease labelled with another node's name is not one.
        if lease.metadata.name.as_deref() != Some(lease_name(&node).as_str()) {
            return None;
        }
        let empty = BTreeMap::new();
        let annotations = lease.metadata.annotations.as_ref().unwrap_or(&empty);
        let spec = lease.spec.as_ref();
        Some(Self {
            node,
            zone: annotations.get(ZONE_ANNOTATION).cloned(),
            region: annotations.get(REGION_ANNOTATION).cloned(),
            version: annotations.get(VERSION_ANNOTATION).cloned(),
            renewed: spec
                .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
                .map(|t| t.0),
            duration_seconds: spec
                .and_then(|s| s.lease_duration_seconds)
                .unwrap_or(30)
                .into(),
            work: super::work::parse_reports(annotations.get(super::work::WORK_ANNOTATION)),
            queued: super::work::decode_queued(annotations.get(super::work::QUEUED_ANNOTATION)),
        })
    }

    /// When the registration lapses without a renewal. A renewal so near the end of time that
    /// the lapse is past it reads as lapsing at the end of time (the Lease is input: no panic).
    pub fn expires(&self) -> Option<Timestamp> {
        self.renewed.map(|t| {
            t.checked_add(jiff::SignedDuration::from_secs(self.duration_seconds))
                .unwrap_or(if self.duration_seconds < 0 {
                    Timestamp::MIN
                } else {
                    Timestamp::MAX
                })
        })
    }

    pub fn is_alive(&self, now: Timestamp) -> bool {
        self.expires().is_some_and(|e| e > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    #[test]
    fn registration_lapses_after_its_duration() {
        let renewed: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(lease_name("n1")),
                labels: Some(BTreeMap::from([
                    (COMPONENT_LABEL.into(), COMPONENT_VALUE.into()),
                    (NODE_LABEL.into(), "n1".into()),
                ])),
                annotations: Some(BTreeMap::from([(ZONE_ANNOTATION.into(), "zone-a".into())])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(20),
                ..Default::default()
            }),
        };
        let reg = AgentRegistration::from_lease(&lease).expect("a registration");
        assert_eq!(reg.zone.as_deref(), Some("zone-a"));
        assert!(reg.is_alive(renewed + jiff::SignedDuration::from_secs(19)));
        assert!(!reg.is_alive(renewed + jiff::SignedDuration::from_secs(20)));
        // A Lease that claims another node than its name says is no registration.
        let mut forged = lease.clone();
        forged.metadata.name = Some(lease_name("n2"));
        assert!(AgentRegistration::from_lease(&forged).is_none());
    }

    #[test]
    fn a_renewal_at_the_end_of_time_does_not_panic() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": lease_name("n1"), "labels": {COMPONENT_LABEL: COMPONENT_VALUE, NODE_LABEL: "n1"}},
            "spec": {"renewTime": "9999-12-30T21:59:59.999999Z", "leaseDurationSeconds": 2147483647},
        }))
        .unwrap();
        let reg = AgentRegistration::from_lease(&lease).expect("a registration");
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(reg.expires(), Some(Timestamp::MAX));
        assert!(reg.is_alive(now));
        let mut negative = reg.clone();
        negative.renewed = Some(Timestamp::MIN);
        negative.duration_seconds = -30;
        assert!(!negative.is_alive(now));
    }
}
