//! A deleted Failover rolls back, keyed on what happened rather than on what was asked: unless
//! the status records the `Committed` milestone, the copy, the restored claims and the writer and
//! holder pods go and the source returns to the replica count it had (noted on the source when
//! it was scaled down, so the count survives a lost status write); a drill's namespace goes with
//! everything in it. Then the finalizer is removed.

use kube::ResourceExt;

use super::decide::{Action, Decision};
use super::manifests::{Place, drill_namespace};
use super::observe::Source;
use crate::api::failover::{FailoverMode, Milestone};
use crate::api::reasons::EventReason;
use crate::api::{Failover, ReplicatedWorkload};
use crate::controllers::PlannedEvent;
use crate::controllers::objects::{Holder, Kind, ObjectName};

/// What a rollback reads.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub workload: Option<ReplicatedWorkload>,
    /// Who holds the drill's namespace (Test).
    pub drill_namespace: Option<Holder>,
    pub source: Option<Source>,
}

pub fn roll_back(f: &Failover, observed: &Observed) -> Decision {
    let mut d = Decision::default();
    if !f.finalizers().iter().any(|x| x == super::FINALIZER) {
        return d;
    }
    let status = f.status.clone().unwrap_or_default();
    if status.reached(&Milestone::Committed) {
        // Committed is final: the copy is the workload now; nothing is rolled back.
        d.actions.push(Action::RemoveFinalizer);
        return d;
    }
    if f.spec.mode == FailoverMode::Test {
        let drill = drill_namespace(f);
        // Only a namespace this Failover made.
        if observed.drill_namespace == Some(Holder::Mine) {
            d.actions.push(Action::Delete(ObjectName::new(
                Kind::Namespace,
                None,
                &drill,
            )));
        }
        d.events.push(PlannedEvent::normal(
            EventReason::FailoverRolledBack,
            "RollBack",
            format!("drill namespace {drill} deleted; the source was never touched"),
        ));
    } else if let Some(rw) = &observed.workload {
        restore_source(f, rw, observed, &mut d);
    } else if f.spec.vault_name.is_some() {
        remove_found(f, &mut d);
    } else {
        unknown_source(f, &mut d);
    }
    d.actions.push(Action::RemoveFinalizer);
    d
}

/// The copy and what the failover made go; the source returns to its noted replica count.
fn restore_source(f: &Failover, rw: &ReplicatedWorkload, observed: &Observed, d: &mut Decision) {
    let status = f.status.clone().unwrap_or_default();
    let w = &rw.spec.workload_ref;
    let place = Place::of(f, w.kind, &w.name);
    if place.failback && status.reached(&Milestone::WorkloadStarted) {
        // The original went back up on its claims: it stops again, held as before.
        d.actions.push(Action::ScaleSource {
            kind: place.kind,
            name: place.copy.clone(),
            replicas: 0,
            note: Some(status.source_replicas.unwrap_or(1)),
        });
    }
    d.actions.push(Action::TearDown(place));
    let back = observed
        .source
        .as_ref()
        .and_then(|s| s.noted.or(status.source_replicas));
    if let Some(replicas) = back {
        d.actions.push(Action::ScaleSource {
            kind: w.kind,
            name: w.name.clone(),
            replicas,
            note: None,
        });
    }
    let source = match back {
        Some(n) => format!(
            "{} {} is back at {n} replica(s) in its zone",
            w.kind.as_str(),
            w.name
        ),
        None => format!("{} {} was not stopped", w.kind.as_str(), w.name),
    };
    d.events.push(PlannedEvent::normal(
        EventReason::FailoverRolledBack,
        "RollBack",
        format!("the copy and its claims are deleted; {source}"),
    ));
}

/// The namespace `spec.workloadNamespace` named goes too, when this Failover made it (a delete
/// of one it did not make does nothing; a drill's namespace goes with the drill).
fn delete_made_namespace(f: &Failover) -> Option<Action> {
    let namespace = f.workload_namespace();
    (f.spec.mode != crate::api::failover::FailoverMode::Test
        && f.namespace().as_deref() != Some(namespace.as_str()))
    .then(|| Action::Delete(ObjectName::new(Kind::Namespace, None, &namespace)))
}

/// A workload from a vault: what this Failover made goes (the workload, its claims, the
/// objects restored beside it, by name and only if they carry its uid); a workload that existed
/// here and was scaled up goes back to zero. The fence stays: the protecting cluster is still
/// presumed gone, and a failover of the workload (here, or back) writes the next one.
fn remove_found(f: &Failover, d: &mut Decision) {
    let status = f.status.clone().unwrap_or_default();
    let Some(found) = &status.found else {
        // Writes may have gone out before the status recorded them: what carries this
        // Failover's uid goes.
        d.actions.push(Action::DeleteLabelled {
            namespace: f.workload_namespace(),
        });
        d.actions.extend(delete_made_namespace(f));
        return;
    };
    let kind = crate::api::workload::WorkloadKind::parse(&found.kind)
        .unwrap_or(crate::api::workload::WorkloadKind::StatefulSet);
    let place = Place::found(f, kind, &found.name);
    for object in &found.objects {
        let Some((k, name)) = object.split_once('/') else {
            continue;
        };
        let kind = [
            Kind::ServiceAccount,
            Kind::ConfigMap,
            Kind::Secret,
            Kind::Service,
        ]
        .into_iter()
        .find(|x| x.name() == k);
        if let Some(kind) = kind {
            d.actions.push(Action::Delete(ObjectName::new(
                kind,
                Some(&place.namespace),
                name,
            )));
        }
    }
    if found.existed {
        d.actions.push(Action::ScaleSource {
            kind: place.kind,
            name: place.copy.clone(),
            replicas: 0,
            note: None,
        });
    }
    d.actions.push(Action::TearDown(place));
    d.actions.extend(delete_made_namespace(f));
    d.events.push(PlannedEvent::normal(
        EventReason::FailoverRolledBack,
        "RollBack",
        format!(
            "{} {} and what was restored with it are deleted{}; the vault's points are kept",
            found.kind,
            found.name,
            if found.existed {
                " (the existing workload is back at 0 replicas)"
            } else {
                ""
            }
        ),
    ));
}

/// Without its ReplicatedWorkload the source is unknown: what this Failover made goes, by its
/// labels, and the user is told that the source was left as it is.
fn unknown_source(f: &Failover, d: &mut Decision) {
    let status = f.status.clone().unwrap_or_default();
    let namespace = f.namespace().unwrap_or_default();
    if let Some(copy) = &status.target_workload {
        for kind in [Kind::StatefulSet, Kind::Deployment] {
            d.actions.push(Action::Delete(ObjectName::new(
                kind,
                Some(&namespace),
                copy,
            )));
        }
    }
    d.actions.push(Action::DeleteLabelled { namespace });
    d.events.push(PlannedEvent::warning(
        EventReason::FailoverRolledBack,
        "RollBack",
        format!(
            "ReplicatedWorkload {} is gone: what this Failover made is deleted, but the source workload is unknown and was left as it is (scale it back with kubectl scale)",
            f.spec.workload_name
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::failover::decide::tests::{self as fixtures, source, workload};
    use serde_json::json;

    /// A Failover of the decision tables, deleted.
    fn failover(mode: &str, commit: bool, status: serde_json::Value) -> Failover {
        let mut f = fixtures::failover(mode, commit, status);
        f.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-06-01T12:10:00Z".parse().unwrap(),
        ));
        f
    }

    fn scaled(d: &Decision) -> Option<i32> {
        d.actions.iter().find_map(|a| match a {
            Action::ScaleSource { replicas, .. } => Some(*replicas),
            _ => None,
        })
    }

    #[test]
    fn a_planned_stop_with_commit_asked_and_nothing_recorded_scales_the_source_back() {
        // Created with commit: true, deleted after the source was scaled to zero (noted on the
        // source) but before any status write: the intent is no fact.
        let f = failover("Planned", true, json!({}));
        let observed = Observed {
            workload: Some(workload()),
            source: Some(source(Some(3), 0)),
            ..Default::default()
        };
        let d = roll_back(&f, &observed);
        assert_eq!(scaled(&d), Some(3), "{:?}", d.actions);
        assert!(matches!(d.actions[0], Action::TearDown(_)));
        assert_eq!(d.actions.last(), Some(&Action::RemoveFinalizer));
    }

    #[test]
    fn after_the_commit_nothing_is_rolled_back() {
        let f = failover(
            "Unplanned",
            true,
            json!({"sourceReplicas": 2, "timeline": [{"step": "Committed", "time": "2026-06-01T12:05:00Z"}]}),
        );
        let observed = Observed {
            workload: Some(workload()),
            source: Some(source(Some(2), 0)),
            ..Default::default()
        };
        assert_eq!(roll_back(&f, &observed).actions, [Action::RemoveFinalizer]);
    }

    #[test]
    fn a_source_never_stopped_is_left_alone_and_a_drill_deletes_only_its_own_namespace() {
        let f = failover("Unplanned", false, json!({}));
        let observed = Observed {
            workload: Some(workload()),
            source: Some(source(None, 2)),
            ..Default::default()
        };
        let d = roll_back(&f, &observed);
        assert_eq!(scaled(&d), None);
        assert!(d.events[0].note.contains("was not stopped"));

        let drill = failover("Test", false, json!({}));
        for (holder, deletes) in [(Holder::Mine, true), (Holder::Taken, false)] {
            let d = roll_back(
                &drill,
                &Observed {
                    drill_namespace: Some(holder),
                    ..Default::default()
                },
            );
            let deleted = d
                .actions
                .iter()
                .any(|a| matches!(a, Action::Delete(n) if n.kind == Kind::Namespace && n.name == "fo-drill"));
            assert_eq!(deleted, deletes);
        }
    }

    #[test]
    fn without_a_finalizer_there_is_nothing_to_do() {
        let mut f = failover("Unplanned", false, json!({}));
        f.metadata.finalizers = None;
        assert_eq!(roll_back(&f, &Observed::default()), Decision::default());
    }

    /// What a rollback deletes (if this Failover's) and tears down, in order.
    fn removed(d: &Decision) -> Vec<String> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Delete(n) => Some(n.to_string()),
                Action::TearDown(p) => Some(format!("teardown {}/{}", p.namespace, p.copy)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_failover_from_a_vault_removes_only_what_it_made_and_returns_a_used_workload_to_zero() {
        let status = json!({"found": {"kind": "StatefulSet", "name": "db", "existed": true,
            "objects": ["ConfigMap/settings", "Secret/password", "Nonsense/x", "Service/db"]}});
        let mut f = failover("Unplanned", false, status);
        f.spec.vault_name = Some("v".into());
        let d = roll_back(&f, &Observed::default());
        // Deleted only if they carry this Failover's uid (Action::Delete is delete-if-mine).
        assert_eq!(
            removed(&d),
            [
                "ConfigMap apps/settings",
                "Secret apps/password",
                "Service apps/db",
                "teardown apps/db"
            ]
        );
        assert_eq!(
            scaled(&d),
            Some(0),
            "the workload found here goes back to zero"
        );
        assert!(
            d.actions
                .iter()
                .any(|a| matches!(a, Action::TearDown(p) if p.copy == "db" && p.found))
        );
        assert_eq!(d.actions.last(), Some(&Action::RemoveFinalizer));
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::Delete(n) if n.kind == Kind::Namespace)),
            "its own namespace stays"
        );

        // Into `spec.workloadNamespace`: the workload's objects there, then that namespace
        // (delete-if-mine: only when this Failover made it), last.
        f.metadata.namespace = Some("site-recovery".into());
        f.spec.workload_namespace = Some("shop".into());
        let d = roll_back(&f, &Observed::default());
        assert_eq!(
            removed(&d),
            [
                "ConfigMap shop/settings",
                "Secret shop/password",
                "Service shop/db",
                "teardown shop/db",
                "Namespace shop"
            ]
        );
    }
}
