//! The objects the controllers make, named and written one way: a [`Manifest`] is created if
//! absent (an existing object counts only when it carries its maker's uid label), deleted if
//! present and its maker's, and a claim's requested size is read in one place.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod,
    ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::Error;
use crate::api::workload::WorkloadKind;

/// The kinds of object the controllers create or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Claim,
    Pod,
    Job,
    Service,
    NetworkPolicy,
    LimitRange,
    ResourceQuota,
    StatefulSet,
    Deployment,
    VirtualMachine,
    ConfigMap,
    Secret,
    ServiceAccount,
}

impl Kind {
    pub fn workload(kind: WorkloadKind) -> Self {
        match kind {
            WorkloadKind::StatefulSet => Kind::StatefulSet,
            WorkloadKind::Deployment => Kind::Deployment,
            WorkloadKind::VirtualMachine => Kind::VirtualMachine,
        }
    }

    /// The Kubernetes kind, as messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Claim => "PersistentVolumeClaim",
            Kind::Pod => "Pod",
            Kind::Job => "Job",
            Kind::Service => "Service",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::LimitRange => "LimitRange",
            Kind::ResourceQuota => "ResourceQuota",
            Kind::StatefulSet => "StatefulSet",
            Kind::Deployment => "Deployment",
            Kind::VirtualMachine => "VirtualMachine",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::ServiceAccount => "ServiceAccount",
        }
    }

    fn resource(self) -> ApiResource {
        match self {
            Kind::Namespace => ApiResource::erase::<Namespace>(&()),
            Kind::Claim => ApiResource::erase::<PersistentVolumeClaim>(&()),
            Kind::Pod => ApiResource::erase::<Pod>(&()),
            Kind::Job => ApiResource::erase::<Job>(&()),
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
            Kind::LimitRange => ApiResource::erase::<LimitRange>(&()),
            Kind::ResourceQuota => ApiResource::erase::<ResourceQuota>(&()),
            Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
            Kind::VirtualMachine => ApiResource::from_gvk_with_plural(
                &kube::api::GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
                "virtualmachines",
            ),
            Kind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
            Kind::Secret => ApiResource::erase::<Secret>(&()),
            Kind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
        }
    }

    /// The API of this kind in `namespace` (ignored for a Namespace).
    pub fn api(self, client: &Client, namespace: Option<&str>) -> Api<DynamicObject> {
        let resource = self.resource();
        match (self, namespace) {
            (Kind::Namespace, _) | (_, None) => Api::all_with(client.clone(), &resource),
            (_, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        }
    }
}

/// An object by kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectName {
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str) -> Self {
        ObjectName {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind.name(), self.name),
            None => write!(f, "{} {}", self.kind.name(), self.name),
        }
    }
}

/// An object to create, as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
    pub body: Value,
}

impl Manifest {
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str, body: Value) -> Self {
        Manifest {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
            body,
        }
    }

    pub fn object_name(&self) -> ObjectName {
        ObjectName::new(self.kind, self.namespace.as_deref(), &self.name)
    }
}

/// Who holds a name the controller wants to create an object under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Nobody: the name is free.
    Free,
    /// An object of this owner (by uid label).
    Mine,
    /// An object being deleted (of an earlier owner, or of this one).
    Going,
    /// An object this owner did not make, which it never adopts.
    Taken,
}

/// Whose object `meta` is, by the value of label `uid_label`.
pub fn holder_of(meta: Option<&kube::core::ObjectMeta>, uid_label: &str, uid: &str) -> Holder {
    match meta {
        None => Holder::Free,
        Some(m) if m.deletion_timestamp.is_some() => Holder::Going,
        Some(m)
            if m.labels
                .as_ref()
                .and_then(|l| l.get(uid_label))
                .map(String::as_str)
                == Some(uid) =>
        {
            Holder::Mine
        }
        Some(_) => Holder::Taken,
    }
}

/// Reads who holds `name`.
pub async fn holder(
    client: &Client,
    name: &ObjectName,
    uid_label: &str,
    uid: &str,
) -> Result<Holder, Error> {
    let found = name
        .kind
        .api(client, name.namespace.as_deref())
        .get_metadata_opt(&name.name)
        .await
        .map_err(Error::Kube)?;
    Ok(holder_of(
        found.as_ref().map(|o| &o.metadata),
        uid_label,
        uid,
    ))
}

/// Creates `m` unless an object of that name exists. An existing object is accepted only when
/// it carries `uid` in `uid_label`: a controller never takes over another's object.
pub async fn create_if_absent(
    client: &Client,
    m: &Manifest,
    uid_label: &str,
    uid: &str,
) -> Result<(), Error> {
    let api = m.kind.api(client, m.namespace.as_deref());
    let object: DynamicObject =
        serde_json::from_value(m.body.clone()).map_err(|e| Error::InvalidObject {
            kind: m.kind.name().into(),
            name: m.name.clone(),
            message: e.to_string(),
        })?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            match holder(client, &m.object_name(), uid_label, uid).await? {
                Holder::Mine | Holder::Free => Ok(()),
                Holder::Going | Holder::Taken => Err(Error::NameTaken {
                    object: m.object_name().to_string(),
                }),
            }
        }
        Err(e) => Err(Error::Kube(e)),
    }
}

/// Creates `obj` unless an object of its name exists: for objects whose name is unique to their
/// owner (by ownerReference) and to one of its points, such as a point's temporary claims.
pub async fn create_owned_if_absent<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// Deletes the object `name` if it exists and is this owner's (by uid label).
pub async fn delete_if_mine(
    client: &Client,
    name: &ObjectName,
    uid_label: &str,
    uid: &str,
) -> Result<(), Error> {
    if holder(client, name, uid_label, uid).await? != Holder::Mine {
        return Ok(());
    }
    let api = name.kind.api(client, name.namespace.as_deref());
    super::delete_if_present(&api, &name.name).await
}

/// Deletes every object of `kind` in `namespace` labelled with `uid` in `uid_label`.
pub async fn delete_labelled(
    client: &Client,
    kind: Kind,
    namespace: &str,
    uid_label: &str,
    uid: &str,
) -> Result<(), Error> {
    let api = kind.api(client, Some(namespace));
    let selector = ListParams::default().labels(&format!("{uid_label}={uid}"));
    for o in api
        .list_metadata(&selector)
        .await
        .map_err(Error::Kube)?
        .items
    {
        super::delete_if_present(&api, &o.name_any()).await?;
    }
    Ok(())
}

/// The storage a claim requests (`1Gi` when it says nothing).
pub fn claim_size(spec: Option<&PersistentVolumeClaimSpec>) -> String {
    spec.and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map_or_else(|| "1Gi".to_string(), |q| q.0.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_mine_only_with_my_uid_and_not_while_it_goes() {
        let meta = |uid: Option<&str>, going: bool| kube::core::ObjectMeta {
            labels: uid.map(|u| [("uid".to_string(), u.to_string())].into()),
            deletion_timestamp: going.then_some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
            ),
            ..Default::default()
        };
        assert_eq!(holder_of(None, "uid", "a"), Holder::Free);
        assert_eq!(
            holder_of(Some(&meta(Some("a"), false)), "uid", "a"),
            Holder::Mine
        );
        assert_eq!(
            holder_of(Some(&meta(Some("b"), false)), "uid", "a"),
            Holder::Taken
        );
        assert_eq!(
            holder_of(Some(&meta(None, false)), "uid", "a"),
            Holder::Taken
        );
        assert_eq!(
            holder_of(Some(&meta(Some("a"), true)), "uid", "a"),
            Holder::Going
        );
    }

    #[test]
    fn kinds_name_their_kubernetes_kind() {
        assert_eq!(Kind::Claim.name(), "PersistentVolumeClaim");
        assert_eq!(Kind::StatefulSet.name(), "StatefulSet");
    }
}
