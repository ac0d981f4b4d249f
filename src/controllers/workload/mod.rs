//! ReplicatedWorkload controller: resolves the protected workload, its volumes, nodes and zones,
//! and whether an agent is registered on each of those nodes.

pub mod apply;
pub mod observe;
pub mod plan;
pub mod status;

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::api::ReplicatedWorkload;
use crate::controllers::{Context, Error, write_status};
use crate::metrics::ControllerLabels;

pub const CONTROLLER: &str = "replicatedworkload";

pub async fn reconcile(workload: &ReplicatedWorkload, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = workload.namespace().unwrap_or_default();
    let now = crate::clock::now();
    let observed = observe::observe(&ctx, &namespace, &workload.spec).await?;
    let plan = plan::plan(&workload.spec, workload.status.as_ref(), &observed, now);
    let status = status::build(
        workload.status.as_ref(),
        &plan,
        workload.metadata.generation,
        now,
    );
    if write_status(&ctx, workload, workload.status.as_ref(), &status).await? {
        ctx.metrics
            .status_writes
            .get_or_create(&ControllerLabels {
                controller: CONTROLLER,
            })
            .inc();
    }
    apply::apply(&ctx, workload, &plan).await;
    Ok(Action::requeue(plan.requeue))
}
