//! Where a Failover stands, read from its spec and recorded status alone. Each phase names what
//! the next pass observes and decides; a phase changes only when a fact is recorded, so an
//! operator killed anywhere starts the next pass in the phase the status shows.
//!
//! ```text
//!  Planned:  StoppingSource ─▶ FinalPoint ─┐
//!                                          ▼
//!  Unplanned, Test:                    Preparing ─▶ Restoring ─▶ Starting ─▶ Running
//!                                                       │                      (commit, or a drill's
//!                                                       ▼                       verification, inside)
//!                                                  RestoreFailed
//!  any phase, once deleted: Deleting (rolls back unless Committed is recorded)
//! ```

use crate::api::Failover;
use crate::api::failover::{FailoverMode, Milestone};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Deleted: roll back, or (after the commit) only let go.
    Deleting,
    /// Planned: scale the source to zero and wait for its last pod to stop.
    StoppingSource,
    /// Planned: the source is stopped; hold its claims and wait for a point taken after.
    FinalPoint,
    /// Make the claims and writer pods in the target zone (a drill's namespace first).
    Preparing,
    /// The agents restore the point into the claims.
    Restoring,
    /// A claim could not be restored: nothing starts (fail closed).
    RestoreFailed,
    /// Restored: stop the source (not in a drill) and start the copy.
    Starting,
    /// The copy exists: wait for its pods, verify (drill) or commit (`spec.commit`).
    Running,
}

impl Phase {
    /// Before the restore, the point is still being chosen: the target location is listed.
    pub fn chooses_point(self) -> bool {
        matches!(
            self,
            Phase::StoppingSource | Phase::FinalPoint | Phase::Preparing
        )
    }
}

pub fn phase(f: &Failover) -> Phase {
    if f.metadata.deletion_timestamp.is_some() {
        return Phase::Deleting;
    }
    let status = f.status.clone().unwrap_or_default();
    match &status.restore {
        None if f.spec.mode == FailoverMode::Planned
            && !status.reached(&Milestone::FinalPointReplicated) =>
        {
            if status.source_stopped.is_none() {
                Phase::StoppingSource
            } else {
                Phase::FinalPoint
            }
        }
        None => Phase::Preparing,
        Some(r) if r.failed.is_some() => Phase::RestoreFailed,
        Some(r) if r.completed.is_none() => Phase::Restoring,
        Some(_) if status.target_workload.is_none() => Phase::Starting,
        Some(_) => Phase::Running,
    }
}

/// Between the phases, whether `spec.recoveryPoint` may name another point than the one being
/// restored: the spec changed since the restore started and nothing is committed.
pub fn may_switch_point(f: &Failover) -> bool {
    let status = f.status.clone().unwrap_or_default();
    status.restore.as_ref().is_some_and(|r| {
        !f.spec.commit
            && f.spec.mode != FailoverMode::Planned
            && r.generation != f.metadata.generation
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(mode: &str, status: serde_json::Value) -> Phase {
        let f: Failover = serde_json::from_value(json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
            "metadata": {"name": "fo", "namespace": "apps"},
            "spec": {"workloadName": "db", "mode": mode},
            "status": status,
        }))
        .unwrap();
        phase(&f)
    }

    fn step(s: &str) -> serde_json::Value {
        json!({"step": s, "time": "2026-06-01T12:00:00Z"})
    }

    #[test]
    fn the_recorded_status_alone_names_the_phase() {
        let restore = |extra: serde_json::Value| {
            let mut r = json!({"point": "p", "started": "2026-06-01T12:00:00Z", "volumes": []});
            json_patch::merge(&mut r, &extra);
            r
        };
        let rows = [
            ("Planned", json!({}), Phase::StoppingSource),
            (
                "Planned",
                json!({"sourceStopped": "2026-06-01T12:00:00Z"}),
                Phase::FinalPoint,
            ),
            (
                "Planned",
                json!({"sourceStopped": "2026-06-01T12:00:00Z", "timeline": [step("FinalPointReplicated")]}),
                Phase::Preparing,
            ),
            ("Unplanned", json!({}), Phase::Preparing),
            ("Test", json!({}), Phase::Preparing),
            (
                "Unplanned",
                json!({"restore": restore(json!({}))}),
                Phase::Restoring,
            ),
            (
                "Unplanned",
                json!({"restore": restore(json!({"failed": "no"}))}),
                Phase::RestoreFailed,
            ),
            (
                "Unplanned",
                json!({"restore": restore(json!({"completed": "2026-06-01T12:01:00Z"}))}),
                Phase::Starting,
            ),
            (
                "Unplanned",
                json!({"restore": restore(json!({"completed": "2026-06-01T12:01:00Z"})), "targetWorkload": "db-failover"}),
                Phase::Running,
            ),
        ];
        for (mode, status, want) in rows {
            assert_eq!(at(mode, status.clone()), want, "{mode} {status}");
        }
    }
}
