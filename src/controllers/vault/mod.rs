//! RecoveryVault controller: validates the vault, makes sure its storage is usable and reports
//! whether cache and target are separated as the vault requires.

pub mod apply;
pub mod discover;
pub mod handoff;
pub mod observe;
pub mod plan;
pub mod status;
pub mod triggers;

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::api::RecoveryVault;
use crate::controllers::{Context, Error, publish_events, write_status};

pub const CONTROLLER: &str = "recoveryvault";

pub async fn reconcile(vault: &RecoveryVault, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = vault.namespace().unwrap_or_default();
    // One read of each of the vault's Secrets serves both the checks and the hand-over.
    let secrets = crate::vault_access::SecretReader::new(&ctx.client, &namespace);
    let observed = observe::observe(&ctx, &namespace, &vault.spec, &secrets).await?;
    let plan = plan::plan(&vault.spec, vault.status.as_ref(), &observed);
    apply::apply(&plan.actions).await?;
    // The agents' copy of the key and credentials follows the vault's Secrets, and is in place
    // before the vault says Ready (points start from Ready). A failure (e.g. the operator's
    // namespace missing) does not hold the status back: it is retried with the vault, and
    // agents say what they lack meanwhile.
    let handed = match handoff::hand_over(&ctx, vault, &secrets).await {
        Ok(()) => handoff::sweep(&ctx).await,
        Err(e) => Err(e),
    };
    let now = crate::clock::now();
    let mut status = status::build(vault.status.as_ref(), &plan, vault.metadata.generation, now);
    let ready = plan
        .conditions
        .iter()
        .any(|c| c.r#type == "Ready" && c.is_true());
    let mut requeue = plan.requeue;
    if ready {
        match discover::discovered(&ctx, vault, now) {
            Some(Ok(found)) => {
                status.discovered = found;
                status.discovery_error = None;
            }
            Some(Err(e)) => status.discovery_error = Some(e),
            None => {}
        }
        requeue = requeue.min(discover::INTERVAL);
    }
    if write_status(&ctx, vault, vault.status.as_ref(), &status).await? {
        ctx.metrics
            .status_writes
            .get_or_create(&crate::metrics::ControllerLabels {
                controller: CONTROLLER,
            })
            .inc();
    }
    publish_events(&ctx, vault, &plan.events).await;
    handed?;
    Ok(Action::requeue(requeue))
}
