//! Step 1 of every mode: the names the restore needs are free (or this Failover's), then the
//! claims and writer pods in the target zone; a failover from a vault fences the protecting
//! cluster out first.

use kube::ResourceExt;

use super::{Action, Decision, Fact, Inputs, Subject};
use crate::api::Failover;
use crate::api::failover::{Milestone, ResolvedPoint, Restore};
use crate::api::reasons::{EventReason, FailoverReason as R};
use crate::api::work::writer_name;
use crate::controllers::PlannedEvent;
use crate::controllers::failover::manifests::{self, Place};
use crate::controllers::failover::observe::World;
use crate::controllers::objects::{Holder, Kind, ObjectName};

/// The first step waits while a name it needs is used by an object it did not make (or by one
/// still being deleted); a restore never lands in a claim it did not create.
pub(super) fn blocked(
    world: &World,
    names: impl IntoIterator<Item = ObjectName>,
) -> Option<Decision> {
    for name in names {
        match world.names.get(&name) {
            Some(Holder::Going) => {
                return Some(Decision::waiting(
                    R::Restoring,
                    format!("waiting for {name} of an earlier restore to be deleted"),
                ));
            }
            Some(Holder::Taken) => {
                return Some(Decision::waiting(
                    R::NameInUse,
                    format!(
                        "{name} exists and was not made by this Failover; delete or rename it and the failover goes on"
                    ),
                ));
            }
            _ => {}
        }
    }
    None
}

/// The names the first step creates objects under.
pub fn prepared_names(f: &Failover, place: &Place, point: &ResolvedPoint) -> Vec<ObjectName> {
    let ns = Some(place.namespace.as_str());
    let mut names = Vec::new();
    if place.drill {
        names.push(ObjectName::new(Kind::Namespace, None, &place.namespace));
    }
    for (n, v) in manifests::restore_plan(point, place).iter().enumerate() {
        names.push(ObjectName::new(Kind::Claim, ns, &v.target_claim));
        names.push(ObjectName::new(
            Kind::Pod,
            ns,
            &writer_name(&f.name_any(), n),
        ));
    }
    names.push(ObjectName::new(place.copy_kind(), ns, &place.copy));
    names
}

/// The point the first step restores: the final point (Planned), else the plan's choice.
fn restore_point<'a>(i: &'a Inputs<'_>) -> Option<&'a ResolvedPoint> {
    if i.failover.spec.mode == crate::api::failover::FailoverMode::Planned {
        i.status.resolved_point.as_ref()
    } else {
        i.chosen
    }
}

/// Step 1: claims and writer pods in the target zone (in a drill, in its own namespace). A
/// workload from a vault first fences the protecting cluster out of the target location.
pub(super) fn prepare(
    i: &Inputs<'_>,
    place: &Place,
    subject: Subject<'_>,
    world: &World,
) -> Decision {
    let Some(point) = restore_point(i) else {
        return Decision::default();
    };
    let names = match subject {
        Subject::Found(found) => match &found.definition {
            Some(Ok(def)) => {
                crate::controllers::failover::observe::found_names(i.failover, place, point, def)
            }
            _ => return Decision::default(),
        },
        Subject::Protected(_) => prepared_names(i.failover, place, point),
    };
    // A failback returns to the original and its kept claims: those names are taken, by the
    // workload it comes back to (checked by observe: held at zero by the copy's maker).
    let kept = |n: &ObjectName| {
        world.names.get(n) == Some(&Holder::Taken)
            && ((place.failback
                && (n.kind == Kind::Claim
                    || (n.kind == place.copy_kind() && n.name == place.copy)))
                || (n.kind == Kind::Claim && world.kept_claims.contains(&n.name)))
    };
    if let Some(d) = blocked(world, names.into_iter().filter(|n| !kept(n))) {
        return d;
    }
    let mut d = Decision::waiting(R::Restoring, format!("restoring point {}", point.id));
    let f = i.failover;
    if place.drill {
        let source = world.source_namespace.clone().unwrap_or_default();
        d.actions.extend(
            manifests::drill_namespace_objects(f, &place.namespace, &source)
                .into_iter()
                .map(Action::Create),
        );
    }
    // A found workload's namespace, named by `spec.workloadNamespace`, is made when missing.
    if let (Subject::Found(_), false, Some(ns)) = (subject, place.drill, place.elsewhere(f)) {
        d.actions
            .push(Action::CreateOrUse(manifests::workload_namespace(f, &ns)));
    }
    let mut volumes = manifests::restore_plan(point, place);
    for v in &mut volumes {
        v.in_place = kept(&ObjectName::new(
            Kind::Claim,
            Some(&place.namespace),
            &v.target_claim,
        ));
    }
    if let Some(original) = world.failback.as_ref().filter(|_| place.failback) {
        d.facts.push(Fact::FailbackTo(original.clone()));
    }
    for (n, v) in volumes.iter().enumerate() {
        let mut shape =
            world
                .claim_shapes
                .get(&v.source_claim)
                .cloned()
                .unwrap_or(manifests::ClaimShape {
                    size: "1Gi".into(),
                    class: None,
                    block: false,
                });
        shape.class = world.zone_class.clone().or(shape.class);
        if !v.in_place {
            d.actions.push(Action::Create(manifests::claim(
                f,
                &place.namespace,
                &v.target_claim,
                &shape,
            )));
        }
        d.actions.push(Action::Create(manifests::writer_pod(
            f,
            i.image,
            &place.namespace,
            n,
            (&v.target_claim, shape.block),
            i.target_zone,
        )));
    }
    let message = format!(
        "restoring point {} into {} claim(s) in the target zone{}",
        point.id,
        volumes.len(),
        if place.drill {
            format!(", namespace {}", place.namespace)
        } else {
            String::new()
        }
    );
    let event = PlannedEvent::normal(
        EventReason::FailoverRestoreStarted,
        "Restore",
        message.clone(),
    );
    d.reach(i.status, Milestone::RestoreStarted, message, Some(event));
    if let Subject::Found(found) = subject
        && !place.drill
    {
        // Before a byte is restored: from now on the protecting cluster writes no point of the
        // workload into the target location (a drill fences nothing: the source may still run).
        d.actions.insert(0, Action::Fence);
        d.reach(
            i.status,
            Milestone::Fenced,
            format!(
                "the target location is fenced: cluster {} writes no more points of {}",
                if found.cluster.is_empty() {
                    "?"
                } else {
                    &found.cluster
                },
                found.name
            ),
            None,
        );
    }
    if let Subject::Found(found) = subject {
        d.facts
            .push(Fact::Found(crate::api::failover::FoundWorkload {
                kind: found.kind.as_str().to_string(),
                name: found.name.clone(),
                cluster: found.cluster.clone(),
                cluster_uid: found.cluster_uid.clone(),
                existed: false,
                objects: vec![],
            }));
    }
    d.facts.push(Fact::ResolvedPoint(Some(point.clone())));
    d.facts.push(Fact::Restore(Some(Restore {
        point: point.id.clone(),
        started: i.now,
        volumes,
        namespace: place.elsewhere(f),
        completed: None,
        failed: None,
        generation: f.metadata.generation,
    })));
    d
}
