//! What happens around each reconcile: metrics, the per-object backoff, failed reconciles
//! turned into Warning events, and malformed objects reported in their status instead of
//! reconciled.

use std::sync::Arc;
use std::time::Instant;

use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::api::reasons::EventReason;
use crate::controllers::{Context, Error, FIELD_MANAGER, PlannedEvent, publish_events};
use crate::metrics::{ControllerLabels, ErrorLabels};

pub fn begin(ctx: &Context, controller: &'static str) -> Instant {
    ctx.metrics
        .reconciliations
        .get_or_create(&ControllerLabels { controller })
        .inc();
    Instant::now()
}

pub fn finish<K: Resource>(
    ctx: &Context,
    controller: &'static str,
    obj: &K,
    started: Instant,
    result: &Result<Action, Error>,
) {
    ctx.metrics
        .reconcile_duration
        .get_or_create(&ControllerLabels { controller })
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.backoffs.succeeded(&backoff_key(controller, obj));
    }
}

fn backoff_key<K: Resource>(controller: &str, obj: &K) -> String {
    format!(
        "{controller}/{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// A malformed object is reported and left alone until it changes.
pub async fn invalid_object<K>(
    ctx: &Context,
    obj: &DeserializeGuard<K>,
    error: &str,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let detail = locate_decode_error::<K>(ctx, obj)
        .await
        .unwrap_or_else(|| error.to_string());
    report_invalid(ctx, obj, &detail).await;
    Ok(Action::await_change())
}

/// Decodes the object again, field by field, to name where it is malformed
/// (`spec.cache: missing field storage`); `None` when it cannot be fetched.
async fn locate_decode_error<K>(ctx: &Context, obj: &DeserializeGuard<K>) -> Option<String>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let resource = kube::core::ApiResource::erase::<K>(&());
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &obj.namespace().unwrap_or_default(),
        &resource,
    );
    let raw = serde_json::to_value(api.get(&obj.name_any()).await.ok()?).ok()?;
    match serde_path_to_error::deserialize::<_, K>(raw) {
        Ok(_) => None,
        Err(e) => Some(format!("{}: {}", e.path(), e.inner())),
    }
}

/// A malformed object gets `Ready=False` with the decoding error, and a Warning event.
async fn report_invalid<K>(ctx: &Context, obj: &DeserializeGuard<K>, error: &str)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let message = format!("the object cannot be read: {error}");
    tracing::warn!(name = %obj.name_any(), namespace = ?obj.namespace(), %message, "malformed object");
    let api: Api<DeserializeGuard<K>> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let status = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": {
            "observedGeneration": obj.meta().generation,
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "InvalidSpec", "message": message,
                "observedGeneration": obj.meta().generation,
                "lastTransitionTime": crate::clock::now(),
            }],
        },
    });
    if let Err(e) = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
    {
        tracing::warn!(error = %e, "could not report a malformed object in its status");
    }
    publish_events(
        ctx,
        obj,
        &[PlannedEvent::warning(
            EventReason::InvalidObject,
            "Decode",
            message,
        )],
    )
    .await;
}

pub fn error_policy<K>(
    obj: Arc<DeserializeGuard<K>>,
    err: &Error,
    ctx: Arc<Context>,
    controller: &'static str,
) -> Action
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let key = backoff_key(controller, obj.as_ref());
    let delay = ctx.backoffs.failed(&key, err.base_delay());
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller,
            error: err.category(),
        })
        .inc();
    tracing::warn!(%key, error = %err, retry_in = ?delay, "reconcile failed");
    let event = PlannedEvent::warning(
        EventReason::ReconcileFailed,
        err.category(),
        err.to_string(),
    );
    tokio::spawn(async move { publish_events(&ctx, obj.as_ref(), &[event]).await });
    Action::requeue(delay)
}
