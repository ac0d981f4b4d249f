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

/// The longest StatefulSet name whose pods can be labelled with their revision.
pub const MAX_STATEFULSET_NAME: usize = 52;

/// Identity of the Failover being planned, to order it among siblings.
pub struct Me<'a> {
    pub name: &'a str,
    pub created: Option<Timestamp>,
}

/// Picks the point the selector names among the workload's points in the target location
/// (oldest first): the newest; the newest app-consistent; an id (or a unique prefix of one); the
/// newest at or before a time.
fn resolve(spec: &FailoverSpec, points: &[PointRef]) -> Result<ResolvedPoint, String> {
    let as_point = |p: &PointRef| ResolvedPoint {
        id: p.id.clone(),
        time: p.time,
        consistency: p.consistency.clone(),
        volumes: vec![],
    };
    let newest = |pred: &dyn Fn(&PointRef) -> bool| {
        points
            .iter()
            .filter(|p| pred(p))
            .max_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)))
            .map(as_point)
    };
    let selector = spec.recovery_point.clone().unwrap_or_default();
    if selector.latest_app_consistent == Some(true) {
        return newest(&|p| p.consistency == "AppConsistent")
            .ok_or_else(|| "spec.recoveryPoint.latestAppConsistent: no app-consistent point is in the target location".into());
    }
    if let Some(id) = &selector.id {
        let matching: Vec<&PointRef> = points
            .iter()
            .filter(|p| p.id.starts_with(id.as_str()))
            .collect();
        return match matching.as_slice() {
            [one] => Ok(as_point(one)),
            [] => Err(format!(
                "spec.recoveryPoint.id: no point {id} in the target location"
            )),
            many => Err(format!(
                "spec.recoveryPoint.id: {id} matches {} points; give more of the id",
                many.len()
            )),
        };
    }
    if let Some(time) = selector.time {
        return newest(&|p| p.time <= time).ok_or_else(|| {
            format!("spec.recoveryPoint.time: no point at or before {time} in the target location")
        });
    }
    newest(&|_| true).ok_or_else(|| "no recovery point is in the target location yet".into())
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
    // A drill never blocks a failover (the zone may fail during a drill), nor one the other.
    let test = spec.mode == crate::api::failover::FailoverMode::Test;
    let older = observed
        .siblings
        .iter()
        .filter(|s| s.test == test)
        .filter(|s| (s.created, s.name.as_str()) < (me.created, me.name))
        .min_by_key(|s| (s.created, s.name.clone()));
    // The name is the value of the label that marks every object the failover makes.
    let name_problem = crate::api::names::label_value_problem(
        "metadata.name",
        me.name,
        crate::api::work::FAILOVER_LABEL,
    );
    let ready = if let Some(message) = name_problem {
        Condition::new(T::Ready, ConditionStatus::False, R::InvalidSpec, message)
    } else if let Some(first) = older {
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
                let (ready, point) = choose(spec, w, test, target_zone.is_some());
                resolved_point = point;
                ready
            }
        }
    };
    let mut conditions = vec![ready];
    conditions.extend(not_started(test));
    let events = events(previous, &conditions[0]);
    Plan {
        conditions,
        resolved_point,
        source_zone,
        target_zone,
        events,
    }
}

/// FailedOver, Committed (and a drill's Verified) before anything started; the decision
/// replaces them as the failover goes.
fn not_started(test: bool) -> Vec<Condition> {
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
        if test {
            "a drill is never committed"
        } else {
            "set spec.commit to true to commit the failover"
        },
    );
    let mut conditions = vec![failed_over, committed];
    if test {
        conditions.push(Condition::new(
            T::Verified,
            ConditionStatus::False,
            R::NotStarted,
            "the drill's copy has not been started",
        ));
    }
    conditions
}

/// Ready, and the point, for a workload whose points were listed (or the chosen point alone).
fn choose(
    spec: &FailoverSpec,
    w: &WorkloadSummary,
    test: bool,
    zone_known: bool,
) -> (Condition, Option<ResolvedPoint>) {
    let ready = match &w.points {
        Err(message) => Condition::new(
            T::Ready,
            ConditionStatus::False,
            R::TargetUnreachable,
            message.clone(),
        ),
        Ok(points) if points.is_empty() => Condition::new(
            T::Ready,
            ConditionStatus::False,
            R::WorkloadNotProtected,
            format!(
                "ReplicatedWorkload {} has no recovery point in the target location yet",
                spec.workload_name
            ),
        ),
        // A StatefulSet's name goes, with a 10-character hash, into the
        // controller-revision-hash label of its pods: over 52 characters the
        // copy's pods are never made.
        Ok(_)
            if !test
                && let Some(copy) = w
                    .statefulset
                    .as_deref()
                    .map(super::manifests::target_name)
                    .filter(|c| c.len() > MAX_STATEFULSET_NAME) =>
        {
            Condition::new(
                T::Ready,
                ConditionStatus::False,
                R::InvalidSpec,
                format!(
                    "spec.workloadName: the copy of StatefulSet {} would be named {copy} ({} characters); a StatefulSet name over {MAX_STATEFULSET_NAME} characters cannot label its pods (controller-revision-hash): fail over a StatefulSet with a shorter name, or run a drill (mode Test keeps the name)",
                    w.statefulset.as_deref().unwrap_or_default(),
                    copy.len()
                ),
            )
        }
        Ok(_) if !zone_known => Condition::new(
            T::Ready,
            ConditionStatus::False,
            R::InvalidSpec,
            "spec.targetZone: no target zone is known (the vault's spec.target.zone is empty); set one",
        ),
        Ok(points) => match resolve(spec, points).and_then(|mut p| {
            p.volumes = w.volumes.get(&p.id).cloned().unwrap_or_default();
            if p.volumes.is_empty() {
                return Err(format!(
                    "recovery point {} holds no volume: there is nothing to fail over",
                    p.id
                ));
            }
            Ok(p)
        }) {
            Ok(p) => {
                let message = format!(
                    "recovery point {} ({}, {}) selected",
                    p.id, p.consistency, p.time
                );
                return (
                    Condition::new(T::Ready, ConditionStatus::True, R::FailoverReady, message),
                    Some(p),
                );
            }
            Err(message) => {
                Condition::new(T::Ready, ConditionStatus::False, R::InvalidSpec, message)
            }
        },
    };
    (ready, None)
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
    use crate::controllers::failover::observe::{Sibling, WorkloadSummary};
    use serde_json::json;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn spec(v: serde_json::Value) -> FailoverSpec {
        let mut base = json!({"workloadName": "db"});
        json_patch::merge(&mut base, &v);
        serde_json::from_value(base).unwrap()
    }

    fn point(id: &str, time: &str, consistency: &str) -> PointRef {
        PointRef {
            id: id.into(),
            time: t(time),
            replicated: true,
            consistency: consistency.into(),
        }
    }

    fn protected() -> WorkloadSummary {
        WorkloadSummary {
            points: Ok(vec![
                point(
                    "20260601T115500000Z-0a",
                    "2026-06-01T11:55:00Z",
                    "CrashConsistent",
                ),
                point(
                    "20260601T120000000Z-a1",
                    "2026-06-01T12:00:00Z",
                    "AppConsistent",
                ),
                point(
                    "20260601T120500000Z-c2",
                    "2026-06-01T12:05:00Z",
                    "CrashConsistent",
                ),
            ]),
            volumes: [
                "20260601T115500000Z-0a",
                "20260601T120000000Z-a1",
                "20260601T120500000Z-c2",
            ]
            .into_iter()
            .map(|id| (id.to_string(), vec!["data-db-0".to_string()]))
            .collect(),
            source_zone: Some("zone-a".into()),
            target_zone: Some("zone-b".into()),
            statefulset: Some("db".into()),
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
                Some("20260601T120500000Z-c2"),
            ),
            (
                "latest app-consistent",
                json!({"recoveryPoint": {"latestAppConsistent": true}}),
                Some(Ok(protected())),
                "FailoverReady",
                Some("20260601T120000000Z-a1"),
            ),
            (
                "by id",
                json!({"recoveryPoint": {"id": "20260601T120000000Z-a1"}}),
                Some(Ok(protected())),
                "FailoverReady",
                Some("20260601T120000000Z-a1"),
            ),
            (
                "by time",
                json!({"recoveryPoint": {"time": "2026-06-01T12:03:00Z"}}),
                Some(Ok(protected())),
                "FailoverReady",
                Some("20260601T120000000Z-a1"),
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
                    points: Ok(vec![]),
                    ..protected()
                })),
                "WorkloadNotProtected",
                None,
            ),
            (
                "an older point by id prefix",
                json!({"recoveryPoint": {"id": "20260601T1155"}}),
                Some(Ok(protected())),
                "FailoverReady",
                Some("20260601T115500000Z-0a"),
            ),
            (
                "ambiguous id prefix",
                json!({"recoveryPoint": {"id": "20260601T12"}}),
                Some(Ok(protected())),
                "InvalidSpec",
                None,
            ),
            (
                "by time, among all points",
                json!({"recoveryPoint": {"time": "2026-06-01T11:58:00Z"}}),
                Some(Ok(protected())),
                "FailoverReady",
                Some("20260601T115500000Z-0a"),
            ),
            (
                "target unreachable",
                json!({}),
                Some(Ok(WorkloadSummary {
                    points: Err("target location: connection refused".into()),
                    ..protected()
                })),
                "TargetUnreachable",
                None,
            ),
            (
                "no target zone anywhere",
                json!({}),
                Some(Ok(WorkloadSummary {
                    target_zone: None,
                    ..protected()
                })),
                "InvalidSpec",
                None,
            ),
            (
                "a StatefulSet whose copy's name cannot label its pods",
                json!({}),
                Some(Ok(WorkloadSummary {
                    statefulset: Some("s".repeat(44)),
                    ..protected()
                })),
                "InvalidSpec",
                None,
            ),
            (
                "a drill keeps the StatefulSet's own name",
                json!({"mode": "Test"}),
                Some(Ok(WorkloadSummary {
                    statefulset: Some("s".repeat(44)),
                    ..protected()
                })),
                "FailoverReady",
                Some("20260601T120500000Z-c2"),
            ),
            (
                "a point that holds no volume",
                json!({}),
                Some(Ok(WorkloadSummary {
                    volumes: Default::default(),
                    ..protected()
                })),
                "InvalidSpec",
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
    fn a_name_that_cannot_be_a_label_value_is_invalid_at_once() {
        let observed = Observed {
            workload: Some(Ok(protected())),
            siblings: vec![],
        };
        let long = "f".repeat(64);
        let me = Me {
            name: &long,
            created: Some(t("2026-06-01T13:00:00Z")),
        };
        let p = plan(&spec(json!({})), None, &observed, me);
        let (reason, message) = ready(&p);
        assert_eq!(reason, "InvalidSpec", "{message}");
        assert!(
            message.starts_with("metadata.name: ")
                && message.contains("siterecovery.io/failover")
                && message.contains("at most 63"),
            "{message}"
        );
        assert_eq!(p.resolved_point, None, "nothing is restored");
        let ok = "f".repeat(63);
        let me = Me {
            name: &ok,
            created: Some(t("2026-06-01T13:00:00Z")),
        };
        assert_eq!(
            ready(&plan(&spec(json!({})), None, &observed, me)).0,
            "FailoverReady"
        );
    }

    #[test]
    fn second_failover_of_a_workload_is_refused() {
        let observed = Observed {
            workload: Some(Ok(protected())),
            siblings: vec![Sibling {
                name: "first".into(),
                created: Some(t("2026-06-01T12:59:00Z")),
                test: false,
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
                test: false,
            }],
        };
        assert_eq!(
            ready(&plan(&spec(json!({})), None, &younger, me())).0,
            "FailoverReady"
        );
    }

    #[test]
    fn a_drill_and_a_failover_never_block_each_other() {
        let observed = |test| Observed {
            workload: Some(Ok(protected())),
            siblings: vec![Sibling {
                name: "first".into(),
                created: Some(t("2026-06-01T12:59:00Z")),
                test,
            }],
        };
        // The zone fails during a drill: the failover goes ahead.
        let p = plan(&spec(json!({})), None, &observed(true), me());
        assert_eq!(ready(&p).0, "FailoverReady");
        // A drill started during a failover, too; but not two drills at once.
        let drill = spec(json!({"mode": "Test"}));
        assert_eq!(
            ready(&plan(&drill, None, &observed(false), me())).0,
            "FailoverReady"
        );
        assert_eq!(
            ready(&plan(&drill, None, &observed(true), me())).0,
            "DuplicateFailover"
        );
        assert_eq!(
            find(
                &plan(&drill, None, &observed(false), me()).conditions,
                "Verified"
            )
            .unwrap()
            .reason,
            "NotStarted"
        );
    }
}
