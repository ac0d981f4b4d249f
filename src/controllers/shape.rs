//! What differs between the kinds of workload a failover stops, copies and starts, read from
//! and written to their JSON. A StatefulSet or Deployment runs `spec.replicas` pods that its
//! selector finds; a KubeVirt VirtualMachine runs one virt-launcher pod (labelled
//! `vm.kubevirt.io/name`, owned by its VirtualMachineInstance) unless `spec.runStrategy` is
//! `Halted`, and its disks are claims or DataVolumes (a DataVolume's claim has its name).

use serde_json::{Value, json};

use crate::api::workload::WorkloadKind;

/// The label KubeVirt puts on a VirtualMachine's virt-launcher pod.
pub const VM_NAME_LABEL: &str = "vm.kubevirt.io/name";

/// How many pods the workload asks for: a VirtualMachine one, unless halted (or, in the older
/// form, `spec.running: false`). `None` when the object does not say.
pub fn replicas(kind: WorkloadKind, workload: &Value) -> Option<i32> {
    let spec = &workload["spec"];
    match kind {
        WorkloadKind::StatefulSet | WorkloadKind::Deployment => {
            spec["replicas"].as_i64().map(|r| r as i32)
        }
        WorkloadKind::VirtualMachine => match (spec["runStrategy"].as_str(), &spec["running"]) {
            (Some("Halted"), _) => Some(0),
            (Some(_), _) => Some(1),
            (None, Value::Bool(running)) => Some(i32::from(*running)),
            (None, _) => None,
        },
    }
}

/// The spec fields that make the workload run `replicas` pods (a VirtualMachine: `Halted` or
/// `Always`, the older `running` field cleared, as KubeVirt refuses both together).
pub fn scale(kind: WorkloadKind, replicas: i32) -> Value {
    match kind {
        WorkloadKind::StatefulSet | WorkloadKind::Deployment => json!({"replicas": replicas}),
        WorkloadKind::VirtualMachine => json!({
            "runStrategy": if replicas == 0 { "Halted" } else { "Always" },
            "running": null,
        }),
    }
}

/// Sets, in a spec about to be created, what makes it run `replicas` pods.
pub fn set_replicas(kind: WorkloadKind, spec: &mut Value, replicas: i32) {
    if let (Some(spec), Value::Object(fields)) = (spec.as_object_mut(), scale(kind, replicas)) {
        for (k, v) in fields {
            if v.is_null() {
                spec.remove(&k);
            } else {
                spec.insert(k, v);
            }
        }
    }
}

/// The label selector of the pods of workload `name` (`spec` its spec); `None` when it has none.
pub fn selector(kind: WorkloadKind, name: &str, spec: &Value) -> Option<String> {
    if kind == WorkloadKind::VirtualMachine {
        return Some(format!("{VM_NAME_LABEL}={name}"));
    }
    let labels = spec["selector"]["matchLabels"].as_object()?;
    let selector = labels
        .iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
        .collect::<Vec<_>>()
        .join(",");
    (!selector.is_empty()).then_some(selector)
}

/// Whether `pod` is one of the pods of workload `name` (uid `uid`), by its owner: a
/// StatefulSet's directly, a Deployment's through a ReplicaSet `<name>-<hash>`, a
/// VirtualMachine's through its VirtualMachineInstance of the same name.
pub fn owns(
    kind: WorkloadKind,
    name: &str,
    uid: &str,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> bool {
    let prefix = format!("{name}-");
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| match (kind, o.kind.as_str()) {
            (WorkloadKind::StatefulSet, "StatefulSet") => o.uid == uid,
            (WorkloadKind::Deployment, "ReplicaSet") => o
                .name
                .strip_prefix(&prefix)
                .is_some_and(|hash| !hash.is_empty() && !hash.contains('-')),
            (WorkloadKind::VirtualMachine, "VirtualMachineInstance") => o.name == name,
            _ => false,
        })
}

/// Whether a pod named `pod` with `labels` is one of the pods of the copy `copy` (a failover's
/// copies are told apart by name: `<copy>-<n>`, a VirtualMachine's by its label).
pub fn is_pod_of_copy(
    kind: WorkloadKind,
    copy: &str,
    pod: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    match kind {
        WorkloadKind::VirtualMachine => labels.get(VM_NAME_LABEL).map(String::as_str) == Some(copy),
        _ => pod.starts_with(&format!("{copy}-")),
    }
}

/// Points the pod template's claims that `renamed` names (source → target) at their targets.
/// A StatefulSet's claims come from its templates and are left alone. A VirtualMachine's
/// DataVolume disk becomes a claim disk, and the DataVolume template that made it goes: the
/// restored claim is the disk now.
pub fn rename_claims(
    kind: WorkloadKind,
    spec: &mut Value,
    renamed: &dyn Fn(&str) -> Option<String>,
) {
    if kind == WorkloadKind::StatefulSet {
        return;
    }
    let mut replaced = Vec::new();
    if let Some(list) = spec["template"]["spec"]["volumes"].as_array_mut() {
        // Only claim volumes change; indexing a ConfigMap or emptyDir volume would insert a
        // `persistentVolumeClaim: {claimName: null}` into it, which an API server refuses.
        for v in list {
            if let Some(claim) = v
                .get_mut("persistentVolumeClaim")
                .and_then(|c| c.get_mut("claimName"))
                && let Some(target) = claim.as_str().and_then(renamed)
            {
                *claim = json!(target);
                continue;
            }
            let data_volume = v
                .get("dataVolume")
                .and_then(|d| d["name"].as_str())
                .map(String::from);
            if kind == WorkloadKind::VirtualMachine
                && let Some(dv) = data_volume
                && let Some(target) = renamed(&dv)
                && let Some(volume) = v.as_object_mut()
            {
                volume.remove("dataVolume");
                volume.insert("persistentVolumeClaim".into(), json!({"claimName": target}));
                replaced.push(dv);
            }
        }
    }
    if let Some(templates) = spec["dataVolumeTemplates"].as_array_mut() {
        templates.retain(|t| {
            !t["metadata"]["name"]
                .as_str()
                .is_some_and(|n| replaced.iter().any(|r| r == n))
        });
    }
}

/// The claims a stopped workload's pods would mount by name (not a StatefulSet's templates).
pub fn named_claims(spec: &Value) -> Vec<String> {
    spec["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v["persistentVolumeClaim"]["claimName"]
                .as_str()
                .or(v["dataVolume"]["name"].as_str())
                .map(String::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_virtual_machine_runs_one_pod_unless_halted_and_is_stopped_by_its_run_strategy() {
        let vm = |spec: Value| json!({"metadata": {"name": "vm1"}, "spec": spec});
        let kind = WorkloadKind::VirtualMachine;
        assert_eq!(
            replicas(kind, &vm(json!({"runStrategy": "Always"}))),
            Some(1)
        );
        assert_eq!(
            replicas(kind, &vm(json!({"runStrategy": "RerunOnFailure"}))),
            Some(1)
        );
        assert_eq!(
            replicas(kind, &vm(json!({"runStrategy": "Halted"}))),
            Some(0)
        );
        assert_eq!(replicas(kind, &vm(json!({"running": false}))), Some(0));
        assert_eq!(replicas(kind, &vm(json!({"running": true}))), Some(1));
        assert_eq!(replicas(kind, &vm(json!({}))), None);
        assert_eq!(
            scale(kind, 0),
            json!({"runStrategy": "Halted", "running": null})
        );
        let mut spec = json!({"running": true, "template": {}});
        set_replicas(kind, &mut spec, 1);
        assert_eq!(spec, json!({"runStrategy": "Always", "template": {}}));
        assert_eq!(
            selector(kind, "vm1", &vm(json!({}))["spec"]).as_deref(),
            Some("vm.kubevirt.io/name=vm1")
        );
        let mut sts = json!({"replicas": 3});
        set_replicas(WorkloadKind::StatefulSet, &mut sts, 0);
        assert_eq!(sts, json!({"replicas": 0}));
    }

    #[test]
    fn a_virtual_machines_data_volume_disk_becomes_the_restored_claim() {
        let mut spec = json!({
            "dataVolumeTemplates": [{"metadata": {"name": "rootdisk"}}, {"metadata": {"name": "other"}}],
            "template": {"spec": {"volumes": [
                {"name": "root", "dataVolume": {"name": "rootdisk"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "vm-data"}},
                {"name": "init", "cloudInitNoCloud": {"userData": "#cloud-config"}},
            ]}},
        });
        let renamed = |c: &str| Some(format!("{c}-failover")).filter(|_| c != "other");
        rename_claims(WorkloadKind::VirtualMachine, &mut spec, &renamed);
        assert_eq!(
            spec["template"]["spec"]["volumes"],
            json!([
                {"name": "root", "persistentVolumeClaim": {"claimName": "rootdisk-failover"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "vm-data-failover"}},
                {"name": "init", "cloudInitNoCloud": {"userData": "#cloud-config"}},
            ])
        );
        assert_eq!(
            spec["dataVolumeTemplates"],
            json!([{"metadata": {"name": "other"}}]),
            "the template of a disk that is restored goes; the others stay"
        );
        assert_eq!(
            named_claims(&spec),
            ["rootdisk-failover", "vm-data-failover"]
        );
    }
}
