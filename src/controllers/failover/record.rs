//! Writes a decision's facts into the status, pure: called only after every action of the pass
//! succeeded, so the status never claims what did not happen.

use jiff::Timestamp;

use super::decide::Fact;
use crate::api::failover::{FailoverStatus, TimelineStep};

/// The timeline is bounded by the schema: the oldest entries go first.
const TIMELINE_MAX: usize = 60;

pub fn record(status: &FailoverStatus, facts: &[Fact], now: Timestamp) -> FailoverStatus {
    let mut next = status.clone();
    for fact in facts {
        match fact.clone() {
            Fact::Reached(m, message) => {
                if !next.reached(&m) {
                    next.timeline.push(TimelineStep {
                        step: m,
                        time: now,
                        message,
                    });
                }
            }
            Fact::Again(m, message) => next.timeline.push(TimelineStep {
                step: m,
                time: now,
                message,
            }),
            Fact::ResolvedPoint(p) => next.resolved_point = p,
            Fact::Restore(r) => next.restore = r,
            Fact::RestoreGeneration(g) => {
                if let Some(r) = &mut next.restore {
                    r.generation = g;
                }
            }
            Fact::SourceStopped(t) => next.source_stopped = Some(t),
            Fact::SourceReplicas(n) => next.source_replicas = Some(n),
            Fact::TargetWorkload(w) => next.target_workload = w,
            Fact::Rto(r) => next.rto_seconds = r,
            Fact::Found(w) => next.found = Some(w),
            Fact::FoundExisted => {
                if let Some(w) = &mut next.found {
                    w.existed = true;
                }
            }
            Fact::FailbackTo(original) => next.failback_to = Some(original),
            Fact::FoundObjects(objects) => {
                if let Some(w) = &mut next.found {
                    w.objects = objects;
                }
            }
        }
    }
    while next.timeline.len() > TIMELINE_MAX {
        next.timeline.remove(0);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::failover::Milestone;

    #[test]
    fn a_milestone_is_recorded_once_and_a_repeated_one_each_time() {
        let now: Timestamp = "2026-06-01T12:00:00Z".parse().unwrap();
        let facts = [
            Fact::Reached(Milestone::RestoreStarted, "a".into()),
            Fact::Reached(Milestone::RestoreStarted, "b".into()),
            Fact::Again(Milestone::PointSwitched, "c".into()),
            Fact::SourceReplicas(3),
        ];
        let once = record(&FailoverStatus::default(), &facts, now);
        let twice = record(&once, &facts, now);
        let steps: Vec<&str> = twice.timeline.iter().map(|t| t.step.as_str()).collect();
        assert_eq!(steps, ["RestoreStarted", "PointSwitched", "PointSwitched"]);
        assert_eq!(twice.timeline[0].message, "a");
        assert_eq!(twice.source_replicas, Some(3));
        let many = vec![Fact::Again(Milestone::PointSwitched, String::new()); 70];
        assert_eq!(record(&twice, &many, now).timeline.len(), TIMELINE_MAX);
    }
}
