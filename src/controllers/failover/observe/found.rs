//! What a failover from `spec.vaultName` reads: the chosen point's origin and definition from
//! the vault's target location (the protecting cluster may be gone), who holds the names the
//! workload comes back under, and the workload's pods.

use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;

use super::{Found, Source, World, labelled_pods};
use crate::api::Failover;
use crate::api::failover::{ExistingObjects, ResolvedPoint};
use crate::api::work::FAILOVER_UID_LABEL;
use crate::api::workload::WorkloadKind;
use crate::controllers::definition::Definition;
use crate::controllers::failover::manifests::{ClaimShape, Place};
use crate::controllers::failover::phase::Phase;
use crate::controllers::objects::{Kind, ObjectName, holder};
use crate::controllers::{Context, Error, shape};

/// How long reading a point's definition may take.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The namespace the found workload comes back in: `spec.workloadNamespace` only for a
/// Failover in the operator's namespace (a tenant's Failover restores into its own namespace,
/// never into another tenant's).
pub fn workload_namespace(operator_namespace: &str, f: &Failover) -> Result<String, String> {
    let own = f.namespace().unwrap_or_default();
    match &f.spec.workload_namespace {
        Some(ns) if *ns != own && own != operator_namespace => Err(format!(
            "spec.workloadNamespace: only a Failover in the operator's namespace {operator_namespace} may restore into another namespace ({ns}); create this Failover there, or in {ns}"
        )),
        _ => Ok(f.workload_namespace()),
    }
}

/// The workload of `point` as its origin describes it, and its definition (checked).
pub async fn load(ctx: &Context, f: &Failover, vault: &str, point: &str) -> Result<Found, String> {
    let namespace = f.namespace().unwrap_or_default();
    let workload_namespace = workload_namespace(&ctx.namespace, f)?;
    let v = ctx
        .stores
        .vaults
        .get(&ObjectRef::new(vault).within(&namespace))
        .and_then(|g| g.0.as_ref().ok().cloned())
        .ok_or_else(|| format!("RecoveryVault {vault} not found"))?;
    let read = async {
        let store = ctx.point_stores.get(ctx, &v).await?;
        store.point_origin(point).await
    };
    let origin = tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| format!("target location of RecoveryVault {vault} did not answer within 60s"))?
        .map_err(|e| format!("RecoveryVault {vault}: {e}"))?
        .ok_or_else(|| {
            format!(
                "point {point} carries no workload definition (it was taken by an older version): restore its claims with `site-recovery repo restore` and create the workload yourself, or choose a newer point"
            )
        })?;
    let Some(kind) = WorkloadKind::parse(&origin.kind) else {
        return Err(format!(
            "point {point} is of a {:?}, which this version cannot restore",
            origin.kind
        ));
    };
    // The point is listed under `namespace/<ReplicatedWorkload>`; the workload it protected
    // may have another name, but never another namespace.
    if origin.namespace != workload_namespace {
        return Err(format!(
            "point {point} is of a workload in namespace {0}, not {workload_namespace}: a Failover in the operator's namespace with spec.workloadNamespace {0} restores it there",
            origin.namespace
        ));
    }
    let definition = Definition::parse(&origin.definition, kind, &origin.name)
        .map_err(|e| format!("point {point}: {e}"));
    Ok(Found {
        vault: vault.to_string(),
        kind,
        name: origin.name,
        cluster: origin.cluster_name,
        cluster_uid: origin.cluster_uid,
        definition: Some(definition),
    })
}

/// The workload as the status recorded it, once the restore started (no storage read).
pub fn recorded(f: &Failover) -> Option<Found> {
    let vault = f.spec.vault_name.clone()?;
    let status = f.status.as_ref()?;
    let found = status.found.clone()?;
    Some(Found {
        vault,
        kind: WorkloadKind::parse(&found.kind).unwrap_or(WorkloadKind::StatefulSet),
        name: found.name,
        cluster: found.cluster,
        cluster_uid: found.cluster_uid,
        definition: None,
    })
}

fn policy(f: &Failover) -> ExistingObjects {
    f.spec.existing_objects.unwrap_or_default()
}

/// The names a found workload's restore must find free (claims and writer pods always; with
/// `Refuse`, the workload and its companions too).
pub fn names(
    f: &Failover,
    place: &Place,
    point: &ResolvedPoint,
    d: &Definition,
) -> Vec<ObjectName> {
    let ns = Some(place.namespace.as_str());
    let mut names = crate::controllers::failover::decide::prepared_names(f, place, point);
    if policy(f) == ExistingObjects::Use {
        names.retain(|n| n.kind == Kind::Claim || n.kind == Kind::Pod);
    } else {
        for (kind, o) in d.companions() {
            names.push(ObjectName::new(
                kind,
                ns,
                o["metadata"]["name"].as_str().unwrap_or_default(),
            ));
        }
    }
    names
}

/// What each phase of a failover from a vault reads.
pub async fn observe(
    ctx: &Context,
    f: &Failover,
    phase: Phase,
    point: Option<&ResolvedPoint>,
    world: &mut World,
) -> Result<(), Error> {
    let Some(vault) = f.spec.vault_name.clone() else {
        return Ok(());
    };
    let uid = f.uid().unwrap_or_default();
    let loaded = match (phase, point) {
        (Phase::Preparing | Phase::Starting, Some(p)) => Some(load(ctx, f, &vault, &p.id).await),
        _ => None,
    };
    let found = match loaded {
        Some(Ok(found)) => found,
        Some(Err(message)) => {
            // The decision says why; nothing is created.
            let mut found = recorded(f).unwrap_or(Found {
                vault,
                kind: WorkloadKind::StatefulSet,
                name: f.spec.workload_name.clone(),
                cluster: String::new(),
                cluster_uid: String::new(),
                definition: None,
            });
            found.definition = Some(Err(message));
            world.found = Some(found);
            return Ok(());
        }
        None => match recorded(f) {
            Some(found) => found,
            None => return Ok(()),
        },
    };
    let place = Place::found(f, found.kind, &found.name);
    let definition = found.definition.clone().and_then(Result::ok);
    match (phase, &definition) {
        (Phase::Preparing, Some(d)) => {
            if policy(f) == ExistingObjects::Use {
                world.kept_claims = kept_claims(ctx, &place).await?;
            }
            if let Some(point) = point {
                for name in names(f, &place, point, d) {
                    let h = holder(&ctx.client, &name, FAILOVER_UID_LABEL, &uid).await?;
                    world.names.insert(name, h);
                }
                for claim in &point.volumes {
                    let spec = d.claim(claim);
                    world.claim_shapes.insert(
                        claim.clone(),
                        ClaimShape {
                            size: spec
                                .and_then(|s| s["resources"]["requests"]["storage"].as_str())
                                .unwrap_or("1Gi")
                                .to_string(),
                            class: spec
                                .and_then(|s| s["storageClassName"].as_str())
                                .map(String::from),
                            block: spec.and_then(|s| s["volumeMode"].as_str()) == Some("Block"),
                        },
                    );
                }
            }
            world.zone_class = zone_class(ctx, f, &vault);
        }
        (Phase::Starting, Some(d)) => {
            let copy = ObjectName::new(place.copy_kind(), Some(&place.namespace), &place.copy);
            let existing = existing(ctx, &place).await?;
            let h = holder(&ctx.client, &copy, FAILOVER_UID_LABEL, &uid).await?;
            world.names.insert(copy, h);
            world.source = Some(source_of(found.kind, d, existing));
            if policy(f) == ExistingObjects::Refuse {
                for (kind, o) in d.companions() {
                    let name = ObjectName::new(
                        kind,
                        Some(&place.namespace),
                        o["metadata"]["name"].as_str().unwrap_or_default(),
                    );
                    let h = holder(&ctx.client, &name, FAILOVER_UID_LABEL, &uid).await?;
                    world.names.insert(name, h);
                }
            }
        }
        (Phase::Running, _) => {
            world.ready_pods = ready_pods(ctx, &place).await?;
            world.commit = super::world::commit_state(ctx, f);
        }
        _ => {}
    }
    world.found = Some(found);
    Ok(())
}

/// The claims of the workload that exists here, when it is stopped (zero replicas): a failover
/// back to the cluster it ran in before finds them kept, and writes them in place rather than
/// stop at their names. A workload that runs keeps its claims to itself.
async fn kept_claims(
    ctx: &Context,
    place: &Place,
) -> Result<std::collections::BTreeSet<String>, Error> {
    let mut out = std::collections::BTreeSet::new();
    let Some(existing) = existing(ctx, place).await? else {
        return Ok(out);
    };
    if shape::replicas(place.kind, &existing.data) != Some(0) {
        return Ok(out);
    }
    let spec = &existing.data["spec"];
    // The restore holds at most 256 volumes (the schema), so as many ordinals are enough.
    let ordinals = 0..256;
    for t in spec["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(t) = t["metadata"]["name"].as_str() {
            out.extend(ordinals.clone().map(|i| format!("{t}-{}-{i}", place.copy)));
        }
    }
    out.extend(shape::named_claims(spec));
    Ok(out)
}

/// The workload under its own name in its namespace, when it exists here.
async fn existing(ctx: &Context, place: &Place) -> Result<Option<DynamicObject>, Error> {
    place
        .copy_kind()
        .api(&ctx.client, Some(&place.namespace))
        .get_opt(&place.copy)
        .await
        .map_err(Error::Kube)
}

/// The workload to start: the one that exists here (`Use`), else the definition's.
fn source_of(kind: WorkloadKind, d: &Definition, existing: Option<DynamicObject>) -> Source {
    let defined = shape::replicas(kind, &d.workload);
    match existing {
        Some(object) => Source {
            replicas: shape::replicas(kind, &object.data),
            noted: defined,
            object,
        },
        None => Source {
            object: serde_json::from_value(d.workload.clone()).unwrap_or_else(|_| {
                DynamicObject::new(
                    "",
                    &kube::api::ApiResource::erase::<k8s_openapi::api::apps::v1::StatefulSet>(&()),
                )
            }),
            noted: defined,
            replicas: defined,
        },
    }
}

/// The vault's class for the target zone.
fn zone_class(ctx: &Context, f: &Failover, vault: &str) -> Option<String> {
    let v = ctx
        .stores
        .vaults
        .get(&ObjectRef::new(vault).within(&f.namespace().unwrap_or_default()))
        .and_then(|g| g.0.as_ref().ok().cloned())?;
    let zone = f.spec.target_zone.clone().or(v.spec.target.zone.clone())?;
    v.spec.storage_classes.get(&zone).cloned()
}

/// Ready pods of the workload, by its own selector: a workload that existed here has pods
/// without this Failover's labels.
pub(super) async fn ready_pods(ctx: &Context, place: &Place) -> Result<i32, Error> {
    let Some(object) = existing(ctx, place).await? else {
        return Ok(0);
    };
    let Some(selector) = super::world::selector_of(place.kind, &object) else {
        return Ok(0);
    };
    // Another workload's pods may match the selector (the copy a failback returns from keeps
    // the app's labels): only the workload's own count, by their owner.
    let uid = object.metadata.uid.clone().unwrap_or_default();
    let own = |p: &k8s_openapi::api::core::v1::Pod| shape::owns(place.kind, &place.copy, &uid, p);
    Ok(labelled_pods(ctx, &place.namespace, &selector)
        .await?
        .iter()
        .filter(|p| own(p))
        .filter(|p| super::world::is_ready(p))
        .count() as i32)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_operators_namespace_restores_into_another_one() {
        let f = |ns: &str, into: Option<&str>| -> Failover {
            let mut spec = json!({"workloadName": "db", "vaultName": "v"});
            if let Some(into) = into {
                spec["workloadNamespace"] = json!(into);
            }
            serde_json::from_value(json!({
                "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
                "metadata": {"name": "fo", "namespace": ns}, "spec": spec,
            }))
            .unwrap()
        };
        let op = "site-recovery";
        assert_eq!(workload_namespace(op, &f("apps", None)), Ok("apps".into()));
        assert_eq!(
            workload_namespace(op, &f("apps", Some("apps"))),
            Ok("apps".into())
        );
        assert_eq!(
            workload_namespace(op, &f(op, Some("shop"))),
            Ok("shop".into())
        );
        let refused = workload_namespace(op, &f("apps", Some("shop"))).unwrap_err();
        assert!(
            refused.starts_with(
                "spec.workloadNamespace: only a Failover in the operator's namespace site-recovery"
            ),
            "{refused}"
        );
    }
}
