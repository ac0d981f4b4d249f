//! The one shape of every trigger mapper: of a kind's cached objects, the ones a change
//! elsewhere concerns, as references to reconcile. Each kind's `triggers.rs` says which: pure
//! functions of the changed object and the cache's contents, tested without a cluster. The
//! operator wires them to its watches.

use std::sync::Arc;

use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;

/// One object of a controller's cache (malformed ones included: they are reported).
pub type Cached<K> = Arc<DeserializeGuard<K>>;

/// What a controller is asked to reconcile.
pub type Ref<K> = ObjectRef<DeserializeGuard<K>>;

/// The readable object behind a cache entry.
pub fn readable<K>(guard: &DeserializeGuard<K>) -> Option<&K> {
    guard.0.as_ref().ok()
}

/// The cached objects `concerned` picks, of those that can be read.
pub fn matching<K>(cached: &[Cached<K>], concerned: impl Fn(&K) -> bool) -> Vec<Ref<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    cached
        .iter()
        .filter(|c| readable(c).is_some_and(&concerned))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Every cached object, malformed ones too.
pub fn all<K>(cached: &[Cached<K>]) -> Vec<Ref<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    cached
        .iter()
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

#[cfg(test)]
pub mod fixtures {
    //! Cache entries for the trigger tests of every kind.

    use super::*;

    /// A readable object of kind `K` from its JSON.
    pub fn cached<K: serde::de::DeserializeOwned>(json: serde_json::Value) -> Cached<K> {
        Arc::new(DeserializeGuard(Ok(
            serde_json::from_value(json).expect("a valid fixture")
        )))
    }

    /// A vault with filesystem locations.
    pub fn vault(namespace: &str, name: &str) -> Cached<crate::api::RecoveryVault> {
        cached(serde_json::json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "cache": {"zone": "a", "storage": {"filesystem": {"path": "/c"}}},
                "target": {"zone": "b", "storage": {"filesystem": {"path": "/t"}}},
                "encryption": {"keySecretRef": {"name": "k"}},
            },
        }))
    }

    /// An object the cache holds but cannot read.
    pub fn malformed<K>(namespace: &str, name: &str) -> Cached<K> {
        Arc::new(DeserializeGuard(Err(
            kube::core::error_boundary::InvalidObject {
                error: "missing field `spec`".into(),
                metadata: kube::api::ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(namespace.into()),
                    ..Default::default()
                },
            },
        )))
    }

    /// The `namespace/name`s of references, in order.
    pub fn names<K>(refs: &[Ref<K>]) -> Vec<String>
    where
        K: Resource<DynamicType = ()>,
    {
        refs.iter()
            .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or_default(), r.name))
            .collect()
    }
}
