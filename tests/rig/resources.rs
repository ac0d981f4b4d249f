//! The resource types the rig serves: built-ins the operator and tests use, plus every CRD
//! created through the API.

use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// openAPIV3Schema of a CRD version: defaults, validation and CEL rules.
    pub schema: Option<Value>,
    pub custom: bool,
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            status_subresource: status,
            short_names: vec![],
            categories: vec![],
            schema: None,
            custom: false,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group`, as Status messages name a resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Kind.group`, as validation messages name a resource.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// Reads every served version of a CRD object.
    pub fn from_crd(crd: &Value) -> Vec<Self> {
        let spec = &crd["spec"];
        let names = &spec["names"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        };
        spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["served"].as_bool().unwrap_or(true))
            .map(|v| Self {
                group: spec["group"].as_str().unwrap_or_default().into(),
                version: v["name"].as_str().unwrap_or_default().into(),
                plural: names["plural"].as_str().unwrap_or_default().into(),
                singular: names["singular"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| names["kind"].as_str().unwrap_or_default().to_lowercase()),
                kind: names["kind"].as_str().unwrap_or_default().into(),
                namespaced: spec["scope"].as_str() != Some("Cluster"),
                status_subresource: v.pointer("/subresources/status").is_some(),
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                schema: v.pointer("/schema/openAPIV3Schema").cloned(),
                custom: true,
            })
            .collect()
    }

    /// The APIResource entries of discovery for this type.
    pub fn discovery(&self) -> Vec<Value> {
        let verbs = json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ]);
        let mut main = json!({
            "name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
            "kind": self.kind, "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced,
                "kind": self.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

pub fn builtins() -> Vec<ResourceType> {
    let b = ResourceType::builtin;
    vec![
        b("", "v1", "namespaces", "Namespace", false, true),
        b("", "v1", "nodes", "Node", false, true),
        b("", "v1", "pods", "Pod", true, true),
        b(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
            true,
        ),
        b(
            "",
            "v1",
            "persistentvolumes",
            "PersistentVolume",
            false,
            true,
        ),
        b("", "v1", "services", "Service", true, true),
        b("", "v1", "resourcequotas", "ResourceQuota", true, true),
        b("", "v1", "limitranges", "LimitRange", true, false),
        b("", "v1", "secrets", "Secret", true, false),
        b("", "v1", "configmaps", "ConfigMap", true, false),
        b("", "v1", "events", "Event", true, false),
        b("", "v1", "serviceaccounts", "ServiceAccount", true, false),
        b("apps", "v1", "statefulsets", "StatefulSet", true, true),
        b("apps", "v1", "deployments", "Deployment", true, true),
        b("apps", "v1", "replicasets", "ReplicaSet", true, true),
        b("coordination.k8s.io", "v1", "leases", "Lease", true, false),
        b(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            false,
        ),
        b("batch", "v1", "jobs", "Job", true, true),
        b("events.k8s.io", "v1", "events", "Event", true, false),
        b(
            "snapshot.storage.k8s.io",
            "v1",
            "volumesnapshots",
            "VolumeSnapshot",
            true,
            true,
        ),
        b(
            "snapshot.storage.k8s.io",
            "v1",
            "volumesnapshotcontents",
            "VolumeSnapshotContent",
            false,
            true,
        ),
        b(
            "snapshot.storage.k8s.io",
            "v1",
            "volumesnapshotclasses",
            "VolumeSnapshotClass",
            false,
            false,
        ),
        b(
            "storage.k8s.io",
            "v1",
            "storageclasses",
            "StorageClass",
            false,
            false,
        ),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            false,
        ),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            false,
        ),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            false,
        ),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            false,
        ),
        b(
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicies",
            "ValidatingAdmissionPolicy",
            false,
            true,
        ),
        b(
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicybindings",
            "ValidatingAdmissionPolicyBinding",
            false,
            false,
        ),
        b(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
        ),
    ]
}
