//! The failover decision. Pure: spec + observed + this Failover's identity.

use jiff::Timestamp;

use super::observe::{Observed, WorkloadSummary};
use crate::api::conditions::{Condition, ConditionStatus, transitioned};
use crate::api::failover::{FailoverSpec, FailoverStatus, ResolvedPoint};
use crate::api::reasons::{ConditionType as T, EventReason, FailoverReason as R};
use crate::api::workload::PointRef;
use crate::controllers::PlannedEvent;

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub conditions: Vec<Condition>,
    pub resolved_point: Option<ResolvedPoint>,
    pub source_zone: Option<String>,
    pub target_zone: Option<String>,
    pub events: Vec<PlannedEvent>,
}

/// Identity of the Failover being planned, to order it among siblings.
pub struct Me<'a> {
    pub name: &'a str,
    pub created: Option<Timestamp>,
}

/// Picks the point the selector names among the points the workload reports.
fn resolve(spec: &FailoverSpec, w: &WorkloadSummary) -> Result<ResolvedPoint, String> {
    let replicated = |p: &Option<PointRef>| p.clone().filter(|p| p.replicated);
    let crash = replicated(&w.latest_crash_consistent);
    let app = replicated(&w.latest_app_consistent);
    let as_point = |p: PointRef, consistency: &str| ResolvedPoint {
        id: p.id,
        time: p.time,
        consistency: consistency.into(),
    };
    let newest = || match (crash.clone(), app.clone()) {
        (Some(c), Some(a)) if a.time > c.time => Some(as_point(a, "AppConsistent")),
        (Some(c), _) => Some(as_point(c, "CrashConsistent")),
        (None, Some(a)) => Some(as_point(a, "AppConsistent")),
        (None, None) => None,
    };
    let selector = spec.recovery_point.clone().unwrap_or_default();
    if selector.latest_app_consistent == Some(true) {
        return app
            .map(|a| as_point(a, "AppConsistent"))
            .ok_or_else(|| "no app-consistent point is replicated yet".into());
    }
    if let Some(id) = &selector.id {
        return [
            crash.map(|c| as_point(c, "CrashConsistent")),
            app.map(|a| as_point(a, "AppConsistent")),
        ]
        .into_iter()
        .flatten()
        .find(|p| &p.id == id)
        .ok_or_else(|| format!("spec.recoveryPoint.id: no replicated point {id}"));
    }
    if let Some(time) = selector.time {
        return [
            crash.map(|c| as_point(c, "CrashConsistent")),
            app.map(|a| as_point(a, "AppConsistent")),
        ]
        .into_iter()
        .flatten()
        .filter(|p| p.time <= time)
        .max_by_key(|p| p.time)
        .ok_or_else(|| {
            format!("spec.recoveryPoint.time: no replicated point at or before {time}")
        });
    }
    newest().ok_or_else(|| "no recovery point is replicated yet".into())
}

pub fn plan(
    spec: &FailoverSpec,
    previous: Option<&FailoverStatus>,
    observed: &Observed,
    me: Me<'_>,
) -> Plan {
    let mut resolved_point = None;
    let (mut source_zone, mut target_zone) = (None, None);
    // The oldest Failover of a workload wins; ties go to the smaller name.
    let older = observed
        .siblings
        .iter()
        .filter(|s| (s.created, s.name.as_str()) < (me.created, me.name))
        .min_by_key(|s| (s.created, s.name.clone()));
    let ready = if let Some(first) = older {
        Condition::new(
            T::Ready,
            ConditionStatus::False,
            R::DuplicateFailover,
            format!(
                "Failover {} already handles workload {}; delete this one",
                first.name, spec.workload_name
            ),
        )
    } else {
        match &observed.workload {
            None => Condition::new(
                T::Ready,
                ConditionStatus::False,
                R::WorkloadNotFound,
                format!(
                    "spec.workloadName: ReplicatedWorkload {} not found in this namespace",
                    spec.workload_name
                ),
            ),
            Some(Err(e)) => Condition::new(
                T::Ready,
                ConditionStatus::False,
                R::WorkloadNotFound,
                format!(
                    "ReplicatedWorkload {} cannot be read: {e}",
                    spec.workload_name
                ),
            ),
            Some(Ok(w)) => {
                source_zone = w.source_zone.clone();
                target_zone = spec.target_zone.clone().or_else(|| w.target_zone.clone());
                if !w.protected {
                    Condition::new(
                        T::Ready,
                        ConditionStatus::False,
                        R::WorkloadNotProtected,
                        format!(
                            "ReplicatedWorkload {} has no recovery point in the target location yet",
                            spec.workload_name
                        ),
                    )
                } else {
                    match resolve(spec, w) {
                        Ok(p) => {
                            let message = format!(
                                "recovery point {} ({}, {}) selected",
                                p.id, p.consistency, p.time
                            );
                            resolved_point = Some(p);
                            Condition::new(
                                T::Ready,
                                ConditionStatus::True,
                                R::FailoverReady,
                                message,
                            )
                        }
                        Err(message) => Condition::new(
                            T::Ready,
                            ConditionStatus::False,
                            R::InvalidSpec,
                            message,
                        ),
                    }
                }
            }
        }
    };
    let failed_over = Condition::new(
        T::FailedOver,
        ConditionStatus::False,
        R::NotStarted,
        "the workload has not been started in the target zone",
    );
    let committed = Condition::new(
        T::Committed,
        ConditionStatus::False,
        R::NotCommitted,
        "set spec.commit to true to commit the failover",
    );
    let events = events(previous, &ready);
    Plan {
        conditions: vec![ready, failed_over, committed],
        resolved_point,
        source_zone,
        target_zone,
        events,
    }
}

fn events(previous: Option<&FailoverStatus>, ready: &Condition) -> Vec<PlannedEvent> {
    if !transitioned(previous.map(|p| p.conditions.as_slice()), ready) {
        return vec![];
    }
    let note = format!("{}: {}", ready.reason, ready.message);
    vec![if ready.is_true() {
        PlannedEvent::normal(EventReason::FailoverReady, "Resolve", note)
    } else {
        PlannedEvent::warning(EventReason::FailoverNotReady, "Resolve", note)
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::find;
    use crate::controllers::failover::observe::Sibling;
    use serde_json::json;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn spec(v: serde_json::Value) -> FailoverSpec {
        let mut base = json!({"workloadName": "db"});
        json_patch::merge(&mut base, &v);
        serde_json::from_value(base).unwrap()
    }

    fn protected() -> WorkloadSummary {
        WorkloadSummary {
            protected: true,
            latest_crash_consistent: Some(PointRef {
                id: "c2".into(),
                time: t("2026-06-01T12:05:00Z"),
                replicated: true,
                consistency: String::new(),
            }),
            latest_app_consistent: Some(PointRef {
                id: "a1".into(),
                time: t("2026-06-01T12:00:00Z"),
                replicated: true,
                consistency: String::new(),
            }),
            source_zone: Some("zone-a".into()),
            target_zone: Some("zone-b".into()),
        }
    }

    fn me() -> Me<'static> {
        Me {
            name: "fo",
            created: Some(t("2026-06-01T13:00:00Z")),
        }
    }

    fn ready(p: &Plan) -> (&str, &str) {
        let c = find(&p.conditions, "Ready").unwrap();
        (c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn table_of_failover_decisions() {
        let cases = [
            (
                "latest by default",
                json!({}),
                Some(Ok(protected())),
                "FailoverReady",
                Some("c2"),
            ),
            (
                "latest app-consistent",
                json!({"recoveryPoint": {"latestAppConsistent": true}}),
                Some(Ok(protected())),
                "FailoverReady",
                Some("a1"),
            ),
            (
                "by id",
                json!({"recoveryPoint": {"id": "a1"}}),
                Some(Ok(protected())),
                "FailoverReady",
                Some("a1"),
            ),
            (
                "by time",
                json!({"recoveryPoint": {"time": "2026-06-01T12:03:00Z"}}),
                Some(Ok(protected())),
                "FailoverReady",
                Some("a1"),
            ),
            (
                "time before every point",
                json!({"recoveryPoint": {"time": "2026-06-01T11:00:00Z"}}),
                Some(Ok(protected())),
                "InvalidSpec",
                None,
            ),
            (
                "unknown id",
                json!({"recoveryPoint": {"id": "nope"}}),
                Some(Ok(protected())),
                "InvalidSpec",
                None,
            ),
            (
                "workload missing",
                json!({}),
                None,
                "WorkloadNotFound",
                None,
            ),
            (
                "not protected",
                json!({}),
                Some(Ok(WorkloadSummary {
                    protected: false,
                    ..protected()
                })),
                "WorkloadNotProtected",
                None,
            ),
        ];
        for (name, s, workload, reason, point) in cases {
            let observed = Observed {
                workload,
                siblings: vec![],
            };
            let p = plan(&spec(s), None, &observed, me());
            assert_eq!(ready(&p).0, reason, "{name}: {}", ready(&p).1);
            assert_eq!(
                p.resolved_point.as_ref().map(|p| p.id.as_str()),
                point,
                "{name}"
            );
        }
    }

    #[test]
    fn second_failover_of_a_workload_is_refused() {
        let observed = Observed {
            workload: Some(Ok(protected())),
            siblings: vec![Sibling {
                name: "first".into(),
                created: Some(t("2026-06-01T12:59:00Z")),
            }],
        };
        let p = plan(&spec(json!({})), None, &observed, me());
        assert_eq!(ready(&p).0, "DuplicateFailover");
        assert!(
            ready(&p)
                .1
                .contains("Failover first already handles workload db")
        );
        // The older one is not refused because of the younger.
        let younger = Observed {
            workload: Some(Ok(protected())),
            siblings: vec![Sibling {
                name: "second".into(),
                created: Some(t("2026-06-01T14:00:00Z")),
            }],
        };
        assert_eq!(
            ready(&plan(&spec(json!({})), None, &younger, me())).0,
            "FailoverReady"
        );
    }
}
