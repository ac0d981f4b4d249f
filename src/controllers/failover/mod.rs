//! Failover controller: validates the Failover and resolves its workload and recovery point
//! (from the vault's target location).

pub mod apply;
pub mod observe;
pub mod plan;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::api::Failover;
use crate::controllers::{Context, Error, write_status};
use crate::metrics::ControllerLabels;

pub const CONTROLLER: &str = "failover";

pub async fn reconcile(failover: &Failover, ctx: Arc<Context>) -> Result<Action, Error> {
    let observed = observe::observe(&ctx, failover).await;
    let name = failover.name_any();
    let me = plan::Me {
        name: &name,
        created: failover.metadata.creation_timestamp.as_ref().map(|t| t.0),
    };
    let plan = plan::plan(&failover.spec, failover.status.as_ref(), &observed, me);
    let status = status::build(
        failover.status.as_ref(),
        &plan,
        failover.metadata.generation,
        crate::clock::now(),
    );
    if write_status(&ctx, failover, failover.status.as_ref(), &status).await? {
        ctx.metrics
            .status_writes
            .get_or_create(&ControllerLabels {
                controller: CONTROLLER,
            })
            .inc();
    }
    apply::apply(&ctx, failover, &plan).await;
    Ok(Action::requeue(Duration::from_secs(300)))
}
