//! A workload's definition, as each recovery point carries it: what another cluster needs to run
//! the workload again under its own names when the protecting cluster is gone. The StatefulSet
//! or Deployment, the Services that select its pods, the ConfigMaps, Secrets and ServiceAccount
//! its pod template references, and each claim's spec; every object stripped of what belongs to
//! the cluster it came from (status, uid, resourceVersion, managedFields, ownerReferences,
//! allocated IPs and ports, a pod's node).
//!
//! [`gather`] reads it (API calls); everything else is pure. The definition is stored encrypted
//! in the point; read back, it is untrusted ([`Definition::parse`] bounds and checks it).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Error;
use super::objects::Kind;
use crate::api::workload::WorkloadKind;

/// The most a definition may take, serialized; larger ones leave out ConfigMaps and Secrets
/// (and say so) rather than fail the point.
pub const MAX_DEFINITION: usize = 1 << 20;

/// What a point carries of its workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Definition {
    /// The StatefulSet or Deployment.
    pub workload: Value,
    #[serde(default)]
    pub services: Vec<Value>,
    #[serde(default)]
    pub config_maps: Vec<Value>,
    #[serde(default)]
    pub secrets: Vec<Value>,
    #[serde(default)]
    pub service_accounts: Vec<Value>,
    /// Each claim of the point: name and spec (size, access modes, volume mode, class).
    #[serde(default)]
    pub claims: Vec<Value>,
    /// What was left out, and why (too large, not readable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<String>,
}

/// Annotations that belong to the cluster the object came from, or to a failover in it.
const DROPPED_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    super::failover::REPLICAS_ANNOTATION,
];

/// The object without what its cluster gave it: apiVersion, kind, and of the metadata only
/// name, namespace, labels and annotations; no status.
pub fn strip(object: &Value) -> Value {
    let meta = &object["metadata"];
    let mut annotations = meta["annotations"].as_object().cloned().unwrap_or_default();
    annotations.retain(|k, _| !DROPPED_ANNOTATIONS.contains(&k.as_str()));
    let mut out = json!({
        "apiVersion": object["apiVersion"],
        "kind": object["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
    });
    if let Some(labels) = meta["labels"].as_object().filter(|l| !l.is_empty()) {
        out["metadata"]["labels"] = json!(labels);
    }
    if !annotations.is_empty() {
        out["metadata"]["annotations"] = json!(annotations);
    }
    if let (Some(body), Some(map)) = (object.as_object(), out.as_object_mut()) {
        for (k, v) in body {
            if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// A workload stripped, its pod template not pinned to a node.
fn strip_workload(object: &Value) -> Value {
    let mut out = strip(object);
    if let Some(spec) = out["spec"]["template"]["spec"].as_object_mut() {
        spec.remove("nodeName");
    }
    out
}

/// A Service stripped of its cluster's allocations: the cluster IPs and node ports.
fn strip_service(object: &Value) -> Value {
    let mut out = strip(object);
    if let Some(spec) = out["spec"].as_object_mut() {
        let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
        spec.remove("healthCheckNodePort");
        if headless {
            spec.insert("clusterIP".into(), json!("None"));
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                if let Some(p) = p.as_object_mut() {
                    p.remove("nodePort");
                }
            }
        }
    }
    out
}

/// A claim's name and the spec another cluster can ask for: no bound volume, no data source.
fn strip_claim(claim: &PersistentVolumeClaim) -> Value {
    let spec = claim.spec.clone().unwrap_or_default();
    json!({
        "name": claim.name_any(),
        "spec": {
            "accessModes": spec.access_modes,
            "volumeMode": spec.volume_mode,
            "storageClassName": spec.storage_class_name,
            "resources": {"requests": {"storage": super::objects::claim_size(Some(&spec))}},
        },
    })
}

/// The ConfigMaps, Secrets and ServiceAccount a pod spec references: env, envFrom, volumes
/// (projected too), imagePullSecrets, serviceAccountName (the namespace's `default` exists in
/// every namespace and is not carried).
pub fn references(pod: &Value) -> (BTreeSet<String>, BTreeSet<String>, Option<String>) {
    let (mut maps, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let name_of = |v: &Value, set: &mut BTreeSet<String>| {
        if let Some(n) = v["name"].as_str().filter(|n| !n.is_empty()) {
            set.insert(n.to_string());
        }
    };
    let containers = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten());
    for c in containers {
        for e in c["env"].as_array().into_iter().flatten() {
            name_of(&e["valueFrom"]["configMapKeyRef"], &mut maps);
            name_of(&e["valueFrom"]["secretKeyRef"], &mut secrets);
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            name_of(&e["configMapRef"], &mut maps);
            name_of(&e["secretRef"], &mut secrets);
        }
    }
    for v in pod["volumes"].as_array().into_iter().flatten() {
        name_of(&v["configMap"], &mut maps);
        if let Some(n) = v["secret"]["secretName"].as_str() {
            secrets.insert(n.to_string());
        }
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            name_of(&s["configMap"], &mut maps);
            name_of(&s["secret"], &mut secrets);
        }
    }
    for s in pod["imagePullSecrets"].as_array().into_iter().flatten() {
        name_of(s, &mut secrets);
    }
    let account = pod["serviceAccountName"]
        .as_str()
        .or(pod["serviceAccount"].as_str())
        .filter(|a| !a.is_empty() && *a != "default")
        .map(String::from);
    (maps, secrets, account)
}

/// Whether a Service selects the workload's pods (or is the StatefulSet's governing Service).
fn selects(service: &Value, workload: &Value) -> bool {
    let pod_labels = &workload["spec"]["template"]["metadata"]["labels"];
    let named = workload["spec"]["serviceName"].as_str();
    let selector = service["spec"]["selector"].as_object();
    let by_labels = selector
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    by_labels || (named.is_some() && named == service["metadata"]["name"].as_str())
}

impl Definition {
    /// The definition as stored: JSON, at most [`MAX_DEFINITION`] bytes; ConfigMaps and then
    /// Secrets are left out (and named in `omitted`) when it would be larger.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut d = self.clone();
        for drop in ["configMaps", "secrets"] {
            let bytes = serde_json::to_vec(&d).unwrap_or_default();
            if bytes.len() <= MAX_DEFINITION {
                return bytes;
            }
            let names: Vec<String> = match drop {
                "configMaps" => std::mem::take(&mut d.config_maps),
                _ => std::mem::take(&mut d.secrets),
            }
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
            .collect();
            d.omitted.push(format!(
                "{drop} {} (the definition would exceed {} bytes)",
                names.join(", "),
                MAX_DEFINITION
            ));
        }
        serde_json::to_vec(&d).unwrap_or_default()
    }

    /// A stored definition, checked: JSON of the expected shape, the workload a StatefulSet or
    /// Deployment named `name`, every object of the kind its list says and named.
    pub fn parse(bytes: &[u8], kind: WorkloadKind, name: &str) -> Result<Self, String> {
        if bytes.len() > MAX_DEFINITION {
            return Err(format!(
                "the definition is {} bytes; at most {MAX_DEFINITION} are accepted",
                bytes.len()
            ));
        }
        let d: Definition =
            serde_json::from_slice(bytes).map_err(|e| format!("the definition: {e}"))?;
        let named = |o: &Value, k: &str| -> Result<(), String> {
            let n = o["metadata"]["name"].as_str().unwrap_or_default();
            if o["kind"].as_str() != Some(k)
                || crate::api::names::dns_subdomain_problem(n).is_some()
            {
                return Err(format!(
                    "the definition holds an object that is not a {k} with a valid name: kind {:?}, name {n:?}",
                    o["kind"]
                ));
            }
            Ok(())
        };
        named(&d.workload, kind.as_str())?;
        shaped(&d.workload, kind.as_str(), WORKLOAD_MAPS)?;
        if d.workload["metadata"]["name"].as_str() != Some(name) {
            return Err(format!(
                "the definition is of {} {:?}, not {name}",
                kind.as_str(),
                d.workload["metadata"]["name"]
            ));
        }
        let lists = [
            (&d.services, "Service"),
            (&d.config_maps, "ConfigMap"),
            (&d.secrets, "Secret"),
            (&d.service_accounts, "ServiceAccount"),
        ];
        for (list, k) in lists {
            for o in list {
                named(o, k)?;
                shaped(o, k, COMPANION_MAPS)?;
            }
        }
        for c in &d.claims {
            let n = c["name"].as_str().unwrap_or_default();
            if crate::api::names::dns_subdomain_problem(n).is_some() || !c["spec"].is_object() {
                return Err(format!(
                    "the definition holds a claim without a valid name and spec: {n:?}"
                ));
            }
        }
        Ok(d)
    }

    /// The spec a claim had in the protecting cluster.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
            .map(|c| &c["spec"])
    }

    /// The objects a restore recreates beside the workload, in the order they must exist:
    /// ServiceAccounts, ConfigMaps and Secrets before the pods that use them, then Services.
    pub fn companions(&self) -> Vec<(Kind, &Value)> {
        let groups = [
            (Kind::ServiceAccount, &self.service_accounts),
            (Kind::ConfigMap, &self.config_maps),
            (Kind::Secret, &self.secrets),
            (Kind::Service, &self.services),
        ];
        groups
            .into_iter()
            .flat_map(|(k, list)| list.iter().map(move |o| (k, o)))
            .collect()
    }
}

/// The fields of a stored workload that a restore writes into (labels, replicas, affinity):
/// each is an object or absent. Anything else is refused before a restore indexes into it.
const WORKLOAD_MAPS: &[&[&str]] = &[
    &["metadata"],
    &["metadata", "labels"],
    &["metadata", "annotations"],
    &["spec"],
    &["spec", "selector"],
    &["spec", "selector", "matchLabels"],
    &["spec", "template"],
    &["spec", "template", "metadata"],
    &["spec", "template", "metadata", "labels"],
    &["spec", "template", "spec"],
];

/// The same for the objects restored beside the workload.
const COMPANION_MAPS: &[&[&str]] = &[&["metadata"], &["metadata", "labels"]];

/// Each of `paths` in `o` is an object or absent.
fn shaped(o: &Value, kind: &str, paths: &[&[&str]]) -> Result<(), String> {
    for path in paths {
        let v = path.iter().fold(o, |v, k| &v[*k]);
        if !(v.is_object() || v.is_null()) {
            return Err(format!(
                "the definition's {kind} {:?} holds {} where an object was expected",
                o["metadata"]["name"].as_str().unwrap_or_default(),
                path.join(".")
            ));
        }
    }
    Ok(())
}

/// Reads the definition of workload `kind`/`name` in `namespace` and of `claims`, with those
/// of `services` (the namespace's, from the operator's cache) that select its pods or that it
/// names. An object it references that does not exist (or cannot be read) is named in
/// `omitted`.
pub async fn gather(
    client: &Client,
    namespace: &str,
    kind: WorkloadKind,
    name: &str,
    claims: &[String],
    services: &[std::sync::Arc<Service>],
) -> Result<Definition, Error> {
    let workload = Kind::workload(kind)
        .api(client, Some(namespace))
        .get(name)
        .await
        .map_err(Error::Kube)?;
    let mut workload = serde_json::to_value(&workload).unwrap_or_default();
    workload["apiVersion"] = json!("apps/v1");
    workload["kind"] = json!(kind.as_str());
    let workload = strip_workload(&workload);
    let mut d = Definition {
        workload,
        ..Default::default()
    };
    for s in services {
        // Only what `selects` reads, before the whole Service is written out.
        let selector = s.spec.as_ref().map(|spec| &spec.selector);
        let brief = json!({"metadata": {"name": s.metadata.name}, "spec": {"selector": selector}});
        if selects(&brief, &d.workload) {
            let mut v = serde_json::to_value(s.as_ref()).unwrap_or_default();
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("Service");
            d.services.push(strip_service(&v));
        }
    }
    let (maps, secrets, account) = references(&d.workload["spec"]["template"]["spec"]);
    for m in maps {
        fetch::<ConfigMap>(
            client,
            namespace,
            "ConfigMap",
            &m,
            &mut d.config_maps,
            &mut d.omitted,
        )
        .await;
    }
    for s in secrets {
        fetch::<Secret>(
            client,
            namespace,
            "Secret",
            &s,
            &mut d.secrets,
            &mut d.omitted,
        )
        .await;
    }
    if let Some(a) = account {
        fetch::<ServiceAccount>(
            client,
            namespace,
            "ServiceAccount",
            &a,
            &mut d.service_accounts,
            &mut d.omitted,
        )
        .await;
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    for c in claims {
        match pvcs.get_opt(c).await {
            Ok(Some(claim)) => d.claims.push(strip_claim(&claim)),
            Ok(None) => d
                .omitted
                .push(format!("PersistentVolumeClaim {c}: not found")),
            Err(e) => d.omitted.push(format!("PersistentVolumeClaim {c}: {e}")),
        }
    }
    Ok(d)
}

/// Reads one referenced object into `into`, or notes why not in `omitted`.
async fn fetch<K>(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
    into: &mut Vec<Value>,
    omitted: &mut Vec<String>,
) where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(o)) => {
            let mut v = serde_json::to_value(&o).unwrap_or_default();
            v["apiVersion"] = json!("v1");
            v["kind"] = json!(kind);
            // A ServiceAccount's token Secrets belong to the cluster that minted them.
            if kind == "ServiceAccount"
                && let Some(m) = v.as_object_mut()
            {
                m.remove("secrets");
            }
            into.push(strip(&v));
        }
        Ok(None) => omitted.push(format!("{kind} {name}: not found")),
        Err(e) => omitted.push(format!("{kind} {name}: {e}")),
    }
}

#[cfg(test)]
mod tests;
