//! Reads what the failover decision needs, all from the shared caches: the protected workload's
//! status and the other Failovers of the namespace.

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::Failover;
use crate::api::conditions::find;
use crate::api::reasons::ConditionType;
use crate::api::workload::PointRef;
use crate::controllers::Context;

#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSummary {
    pub protected: bool,
    pub latest_crash_consistent: Option<PointRef>,
    pub latest_app_consistent: Option<PointRef>,
    pub source_zone: Option<String>,
    pub target_zone: Option<String>,
}

/// Another Failover of the same workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Sibling {
    pub name: String,
    pub created: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub workload: Option<Result<WorkloadSummary, String>>,
    pub siblings: Vec<Sibling>,
}

pub fn observe(ctx: &Context, failover: &Failover) -> Observed {
    let namespace = failover.namespace().unwrap_or_default();
    let workload = ctx
        .stores
        .workloads
        .get(&ObjectRef::new(&failover.spec.workload_name).within(&namespace))
        .map(|guard| match &guard.0 {
            Ok(w) => {
                let status = w.status.clone().unwrap_or_default();
                Ok(WorkloadSummary {
                    protected: find(&status.conditions, ConditionType::Protected.as_str())
                        .is_some_and(|c| c.is_true()),
                    latest_crash_consistent: status
                        .latest_crash_consistent_point
                        .or(status.latest_point),
                    latest_app_consistent: status.latest_app_consistent_point,
                    source_zone: status.source_zone,
                    target_zone: status.target_zone,
                })
            }
            Err(e) => Err(e.to_string()),
        });
    let siblings = ctx
        .stores
        .failovers
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|f| {
            f.namespace().as_deref() == Some(namespace.as_str())
                && f.name_any() != failover.name_any()
                && f.spec.workload_name == failover.spec.workload_name
                && f.metadata.deletion_timestamp.is_none()
        })
        .map(|f| Sibling {
            name: f.name_any(),
            created: f.metadata.creation_timestamp.as_ref().map(|t| t.0),
        })
        .collect();
    Observed { workload, siblings }
}
