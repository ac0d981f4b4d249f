//! What a failover creates, built from data alone (no API calls): the writer and holder pods,
//! the restored claims, the copy of the workload, the drill's namespace and what it copies from
//! the source namespace, the verification Job. Each object carries [`labels`], by which the
//! operator knows it as this Failover's and never adopts another's.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::{Value, json};

use crate::api::Failover;
use crate::api::failover::{FailoverMode, ResolvedPoint, VolumeRestore};
use crate::api::work::{FAILOVER_LABEL, FAILOVER_UID_LABEL, HOLD_LABEL, holder_name, writer_name};
use crate::api::workload::WorkloadKind;
use crate::controllers::objects::{Kind, Manifest};
use crate::controllers::{ClaimVolume, claim_pod, shape, zone_affinity};

/// The labels of everything this Failover makes.
pub fn labels(f: &Failover) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".into(),
            "site-recovery".into(),
        ),
        (FAILOVER_LABEL.into(), f.name_any()),
        (FAILOVER_UID_LABEL.into(), f.uid().unwrap_or_default()),
    ])
}

/// The name of a failover's copy of StatefulSet or Deployment `name`.
pub fn target_name(name: &str) -> String {
    format!("{name}-failover")
}

/// The drill's namespace: `spec.testNamespace`, or `<name>-drill`.
pub fn drill_namespace(f: &Failover) -> String {
    f.spec.test_namespace.clone().unwrap_or_else(|| {
        let base: String = f.name_any().replace('.', "-").chars().take(57).collect();
        format!("{}-drill", base.trim_end_matches('-'))
    })
}

pub fn verification_job_name(failover: &str) -> String {
    let base: String = failover.chars().take(50).collect();
    format!("sr-verify-{base}")
}

/// Where a failover puts what it creates: the Failover's own namespace and a copy named
/// `<name>-failover` (Planned, Unplanned), or the drill's namespace and a copy under the source's
/// own name, so the application's names resolve inside the drill as they do in production (Test).
#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    pub namespace: String,
    pub copy: String,
    pub source: String,
    pub kind: WorkloadKind,
    pub drill: bool,
    /// A workload found in a vault: it comes back as itself, under its own names.
    pub found: bool,
    /// A failback: the copy is the original workload the source is a copy of, and the claims
    /// are its kept claims (written in place).
    pub failback: bool,
}

impl Place {
    pub fn of(f: &Failover, kind: WorkloadKind, source: &str) -> Self {
        let drill = f.spec.mode == FailoverMode::Test;
        Place {
            namespace: if drill {
                drill_namespace(f)
            } else {
                f.namespace().unwrap_or_default()
            },
            copy: if drill {
                source.to_string()
            } else {
                target_name(source)
            },
            source: source.to_string(),
            kind,
            drill,
            found: false,
            failback: false,
        }
        .back_to(f)
    }

    /// A failback recorded in the status returns to the original's names.
    fn back_to(mut self, f: &Failover) -> Self {
        if let Some(original) = f.status.as_ref().and_then(|s| s.failback_to.as_ref())
            && !self.drill
        {
            self.copy = original.clone();
            self.failback = true;
        }
        self
    }

    /// This place, returning to `original` (the failback the first step detected).
    pub fn failback(mut self, original: &str) -> Self {
        self.copy = original.to_string();
        self.failback = true;
        self
    }

    /// A workload found in a vault's target location comes back under its own name, in its
    /// namespace (`spec.workloadNamespace`, else this one; a drill of it: in the drill's).
    pub fn found(f: &Failover, kind: WorkloadKind, name: &str) -> Self {
        let mut place = Place::of(f, kind, name);
        place.copy = name.to_string();
        place.found = true;
        if !place.drill {
            place.namespace = f.workload_namespace();
        }
        place
    }

    /// The workload runs in another namespace than the Failover's (a drill, or a failover from
    /// a vault into `spec.workloadNamespace`): the restore names it.
    pub fn elsewhere(&self, f: &Failover) -> Option<String> {
        (f.namespace().as_deref() != Some(self.namespace.as_str())).then(|| self.namespace.clone())
    }

    pub fn copy_kind(&self) -> Kind {
        Kind::workload(self.kind)
    }
}

/// `data-db-0` of StatefulSet `db` → (`data`, `0`).
fn template_of(claim: &str, sts: &str) -> Option<(String, String)> {
    let (rest, ordinal) = claim.rsplit_once('-')?;
    ordinal.parse::<u32>().ok()?;
    let template = rest.strip_suffix(&format!("-{sts}"))?;
    Some((template.to_string(), ordinal.to_string()))
}

/// One new claim per volume of the point: `data-db-0` of StatefulSet `db` is restored into
/// `data-db-failover-0`, the claim the copy's template `data` resolves to for ordinal 0. A
/// volume that is not a claim template's claim keeps its name with a `-failover` suffix.
pub fn restore_plan(point: &ResolvedPoint, place: &Place) -> Vec<VolumeRestore> {
    point
        .volumes
        .iter()
        .map(|claim| VolumeRestore {
            source_claim: claim.clone(),
            in_place: false,
            target_claim: match template_of(claim, &place.source) {
                Some((template, ordinal)) => format!("{template}-{}-{ordinal}", place.copy),
                None if place.copy == place.source => claim.clone(),
                // A Deployment's copy mounted `<claim>-failover`; its original mounts `<claim>`.
                None if place.failback => {
                    claim.strip_suffix("-failover").unwrap_or(claim).to_string()
                }
                None => format!("{claim}-failover"),
            },
        })
        .collect()
}

/// What a restored claim asks for: the source claim's size and storage class (the vault's class
/// for the target zone wins).
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimShape {
    pub size: String,
    pub class: Option<String>,
    /// `volumeMode: Block`: restored as a raw device, through a writer pod's `volumeDevices`.
    pub block: bool,
}

pub fn claim(f: &Failover, namespace: &str, name: &str, shape: &ClaimShape) -> Manifest {
    Manifest::new(
        Kind::Claim,
        Some(namespace),
        name,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace, "labels": labels(f)},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": shape.class,
                "volumeMode": if shape.block { "Block" } else { "Filesystem" },
                "resources": {"requests": {"storage": shape.size}}},
        }),
    )
}

/// The pod that mounts restored claim number `i` in the target zone while the agent fills it.
pub fn writer_pod(
    f: &Failover,
    image: &str,
    namespace: &str,
    i: usize,
    (claim, block): (&str, bool),
    zone: Option<&str>,
) -> Manifest {
    let name = writer_name(&f.name_any(), i);
    let volume = ClaimVolume {
        name: "target",
        claim,
        read_only: false,
        block,
    };
    Manifest::new(
        Kind::Pod,
        Some(namespace),
        &name,
        claim_pod(
            image,
            json!({"name": name, "namespace": namespace, "labels": labels(f)}),
            "writer",
            volume,
            zone,
        ),
    )
}

/// Planned mode: the pod that holds source claim number `i` mounted read-only so that the
/// agents can read the stopped workload's final point.
pub fn holder_pod(
    f: &Failover,
    image: &str,
    workload: &str,
    i: usize,
    (claim, block): (&str, bool),
) -> Manifest {
    let namespace = f.namespace().unwrap_or_default();
    let name = holder_name(&f.name_any(), i);
    let mut labels = labels(f);
    labels.insert(HOLD_LABEL.into(), workload.to_string());
    Manifest::new(
        Kind::Pod,
        Some(&namespace),
        &name,
        claim_pod(
            image,
            json!({"name": name, "namespace": namespace, "labels": labels}),
            "hold",
            ClaimVolume {
                name: "source",
                claim,
                read_only: true,
                block,
            },
            None,
        ),
    )
}

/// The source's spec under a new name, pinned to the target zone, with a label of its own so
/// that source and copy never claim each other's pods; the Service, selecting the app's labels,
/// follows the new pods. A StatefulSet's claim templates resolve to the restored claims by name;
/// a Deployment's claims are replaced by the restored ones.
pub fn copy_of(
    source: &DynamicObject,
    f: &Failover,
    place: &Place,
    replicas: i32,
    zone: Option<&str>,
    volumes: &[VolumeRestore],
) -> Manifest {
    let failover = f.name_any();
    let mut spec = source.data["spec"].clone();
    shape::set_replicas(place.kind, &mut spec, replicas);
    if place.kind != WorkloadKind::VirtualMachine {
        spec["selector"]["matchLabels"][FAILOVER_LABEL] = json!(failover);
    }
    spec["template"]["metadata"]["labels"][FAILOVER_LABEL] = json!(failover);
    // Not in the selector: the copy's pods tell the operator whose they are.
    spec["template"]["metadata"]["labels"][FAILOVER_UID_LABEL] = json!(f.uid());
    if let Some(z) = zone {
        spec["template"]["spec"]["affinity"] = zone_affinity(Some(z));
    }
    let renamed = |claim: &str| {
        volumes
            .iter()
            .find(|r| r.source_claim == claim)
            .map(|r| r.target_claim.clone())
    };
    shape::rename_claims(place.kind, &mut spec, &renamed);
    let mut metadata_labels = source.labels().clone();
    metadata_labels.extend(labels(f));
    let copy_of = json!({super::COPY_OF_ANNOTATION: place.source});
    Manifest::new(
        place.copy_kind(),
        Some(&place.namespace),
        &place.copy,
        json!({
            "apiVersion": place.kind.api_version(), "kind": place.kind.as_str(),
            "metadata": {"name": place.copy, "namespace": place.namespace, "labels": metadata_labels, "annotations": copy_of},
            "spec": spec,
        }),
    )
}

/// A found workload as its definition describes it, under its own name: its selector as it
/// was (it is the workload now, not a copy beside it), this Failover's labels on it and on its
/// pods, pinned to the target zone, with `replicas`.
pub fn found_workload(
    definition: &Value,
    f: &Failover,
    place: &Place,
    replicas: i32,
    zone: Option<&str>,
) -> Manifest {
    let mut body = definition.clone();
    body["metadata"]["namespace"] = json!(place.namespace);
    body["metadata"]["name"] = json!(place.copy);
    for (k, v) in labels(f) {
        body["metadata"]["labels"][&k] = json!(v);
        body["spec"]["template"]["metadata"]["labels"][&k] = json!(v);
    }
    shape::set_replicas(place.kind, &mut body["spec"], replicas);
    if let Some(z) = zone {
        body["spec"]["template"]["spec"]["affinity"] = zone_affinity(Some(z));
    }
    Manifest::new(place.copy_kind(), Some(&place.namespace), &place.copy, body)
}

/// The objects a found workload's pods use (ServiceAccounts, ConfigMaps, Secrets, then
/// Services), in this namespace, labelled as this Failover's.
pub fn companions(
    d: &crate::controllers::definition::Definition,
    f: &Failover,
    namespace: &str,
) -> Vec<Manifest> {
    d.companions()
        .into_iter()
        .map(|(kind, o)| {
            let mut body = o.clone();
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            body["metadata"]["namespace"] = json!(namespace);
            for (k, v) in labels(f) {
                body["metadata"]["labels"][&k] = json!(v);
            }
            Manifest::new(kind, Some(namespace), &name, body)
        })
        .collect()
}

/// The namespace a found workload comes back in (`spec.workloadNamespace`), labelled as this
/// Failover's: a rollback deletes it only when this Failover made it.
pub fn workload_namespace(f: &Failover, namespace: &str) -> Manifest {
    Manifest::new(
        Kind::Namespace,
        None,
        namespace,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels(f),
            "annotations": {"siterecovery.io/restored-by": format!("{}/{}", f.namespace().unwrap_or_default(), f.name_any())}}}),
    )
}

/// Labels of the source namespace that set its Pod Security admission level.
const POD_SECURITY_PREFIX: &str = "pod-security.kubernetes.io/";

/// The labels of a drill's namespace: the Failover's, and the source namespace's Pod Security
/// labels, so that a drill never runs a pod the source namespace would forbid.
pub fn drill_namespace_labels(
    f: &Failover,
    source: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = source
        .iter()
        .filter(|(k, _)| k.starts_with(POD_SECURITY_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(labels(f));
    out
}

/// What the drill's namespace copies from the source namespace before any pod starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceNamespace {
    pub labels: BTreeMap<String, String>,
    /// (name, spec) of each LimitRange.
    pub limit_ranges: Vec<(String, Value)>,
    /// (name, spec) of each ResourceQuota.
    pub quotas: Vec<(String, Value)>,
}

/// The drill's namespace, made by this Failover and isolated: its pods reach each other and DNS,
/// nothing else, and nothing outside reaches them (a copy must never talk to production). It
/// carries the source namespace's Pod Security labels and copies of its LimitRanges and
/// ResourceQuotas, made before any pod: what the source forbids, the drill forbids. In the
/// order they must be made.
pub fn drill_namespace_objects(
    f: &Failover,
    namespace: &str,
    source: &SourceNamespace,
) -> Vec<Manifest> {
    let source_namespace = f.namespace().unwrap_or_default();
    let mut out = vec![Manifest::new(
        Kind::Namespace,
        None,
        namespace,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": drill_namespace_labels(f, &source.labels),
            "annotations": {"siterecovery.io/drill-of": format!("{source_namespace}/{}", f.name_any())}}}),
    )];
    let copies = [
        (Kind::LimitRange, &source.limit_ranges),
        (Kind::ResourceQuota, &source.quotas),
    ];
    for (kind, items) in copies {
        for (name, spec) in items {
            out.push(Manifest::new(
                kind,
                Some(namespace),
                name,
                json!({"apiVersion": "v1", "kind": kind.name(),
                    "metadata": {"name": name, "namespace": namespace, "labels": labels(f)},
                    "spec": spec}),
            ));
        }
    }
    out.push(Manifest::new(
        Kind::NetworkPolicy,
        Some(namespace),
        "site-recovery-drill-isolation",
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "site-recovery-drill-isolation", "namespace": namespace, "labels": labels(f)},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"podSelector": {}}]}],
                "egress": [
                    {"to": [{"podSelector": {}}]},
                    {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                     "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                ],
            },
        }),
    ));
    out
}

/// The copies, in the drill's namespace, of the Services that select the workload's pods (a
/// StatefulSet's `spec.serviceName` among them), so the copy's pods get the names the
/// application expects.
pub fn service_copies(
    f: &Failover,
    source: &DynamicObject,
    services: &[k8s_openapi::api::core::v1::Service],
    namespace: &str,
) -> Vec<Manifest> {
    let pod_labels = source.data["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let named = source.data["spec"]["serviceName"].as_str();
    let mut out = Vec::new();
    for service in services {
        let spec = service.spec.clone().unwrap_or_default();
        let selector = spec.selector.clone().unwrap_or_default();
        let selects = !selector.is_empty()
            && selector
                .iter()
                .all(|(k, v)| pod_labels.get(k).and_then(|l| l.as_str()) == Some(v.as_str()));
        if !selects && named != Some(service.name_any().as_str()) {
            continue;
        }
        // The copy is a ClusterIP Service of its own: the source's allocated node ports and
        // cluster IP belong to the source (reusing them is refused with 422).
        let ports: Vec<_> = spec
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|mut p| {
                p.node_port = None;
                p
            })
            .collect();
        let mut copy = json!({
            "selector": spec.selector,
            "ports": ports,
            "publishNotReadyAddresses": spec.publish_not_ready_addresses,
        });
        if spec.cluster_ip.as_deref() == Some("None") {
            copy["clusterIP"] = json!("None");
        }
        let name = service.name_any();
        out.push(Manifest::new(
            Kind::Service,
            Some(namespace),
            &name,
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": labels(f)},
                "spec": copy}),
        ));
    }
    out
}

/// The drill's verification Job: the user's image and command, once, within `timeout`.
pub fn verification_job(
    f: &Failover,
    namespace: &str,
    check: &crate::api::failover::Verification,
    timeout: std::time::Duration,
) -> Manifest {
    let name = verification_job_name(&f.name_any());
    Manifest::new(
        Kind::Job,
        Some(namespace),
        &name,
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "labels": labels(f)},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": timeout.as_secs().max(1),
                "template": {"metadata": {"labels": labels(f)}, "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "verify", "image": check.image, "command": check.command}],
                }},
            },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failover(mode: &str) -> Failover {
        serde_json::from_value(json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
            "metadata": {"name": "fo", "namespace": "apps", "uid": "u1"},
            "spec": {"workloadName": "db", "mode": mode},
        }))
        .unwrap()
    }

    fn point(volumes: &[&str]) -> ResolvedPoint {
        ResolvedPoint {
            id: "p".into(),
            time: "2026-06-01T12:00:00Z".parse().unwrap(),
            consistency: "CrashConsistent".into(),
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn a_block_claim_is_restored_as_a_block_claim_attached_as_a_device() {
        let f = failover("Unplanned");
        let shape = ClaimShape {
            size: "64Mi".into(),
            class: None,
            block: true,
        };
        let c = claim(&f, "apps", "data-db-failover-0", &shape);
        assert_eq!(c.body["spec"]["volumeMode"], "Block");
        let w = writer_pod(&f, "img", "apps", 0, ("data-db-failover-0", true), None);
        let container = &w.body["spec"]["containers"][0];
        assert_eq!(
            container["volumeDevices"],
            json!([{"name": "target", "devicePath": "/dev/target"}])
        );
        assert!(container["volumeMounts"].is_null(), "{container}");
        let fs = writer_pod(&f, "img", "apps", 0, ("data-db-failover-0", false), None);
        assert!(fs.body["spec"]["containers"][0]["volumeDevices"].is_null());
        let filesystem = claim(
            &f,
            "apps",
            "x",
            &ClaimShape {
                block: false,
                ..shape
            },
        );
        assert_eq!(filesystem.body["spec"]["volumeMode"], "Filesystem");
    }

    #[test]
    fn claims_of_templates_follow_the_copy_and_others_get_a_suffix() {
        let f = failover("Unplanned");
        let place = Place::of(&f, WorkloadKind::StatefulSet, "db");
        let plan = restore_plan(&point(&["data-db-0", "logs-db-1", "shared"]), &place);
        let targets: Vec<&str> = plan.iter().map(|v| v.target_claim.as_str()).collect();
        assert_eq!(
            targets,
            [
                "data-db-failover-0",
                "logs-db-failover-1",
                "shared-failover"
            ]
        );
        // A drill keeps the names, in its own namespace.
        let drill = failover("Test");
        let place = Place::of(&drill, WorkloadKind::StatefulSet, "db");
        assert_eq!(place.namespace, "fo-drill");
        let plan = restore_plan(&point(&["data-db-0", "shared"]), &place);
        let targets: Vec<&str> = plan.iter().map(|v| v.target_claim.as_str()).collect();
        assert_eq!(targets, ["data-db-0", "shared"]);
    }

    #[test]
    fn a_drill_namespace_is_made_before_its_copies_and_its_isolation() {
        let f = failover("Test");
        let source = SourceNamespace {
            labels: BTreeMap::from([
                (
                    "pod-security.kubernetes.io/enforce".to_string(),
                    "restricted".to_string(),
                ),
                ("team".to_string(), "a".to_string()),
            ]),
            limit_ranges: vec![("limits".into(), json!({"limits": []}))],
            quotas: vec![("quota".into(), json!({"hard": {"pods": "4"}}))],
        };
        let objects = drill_namespace_objects(&f, "fo-drill", &source);
        let kinds: Vec<Kind> = objects.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Namespace,
                Kind::LimitRange,
                Kind::ResourceQuota,
                Kind::NetworkPolicy
            ]
        );
        let labels = &objects[0].body["metadata"]["labels"];
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        assert!(labels.get("team").is_none(), "only Pod Security labels");
        assert_eq!(labels[FAILOVER_UID_LABEL], "u1");
    }
}
