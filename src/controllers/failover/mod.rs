//! Failover controller: validates the Failover and resolves its workload and recovery point
//! (from the vault's target location).

pub mod apply;
pub mod execute;
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
    if failover.metadata.deletion_timestamp.is_some() {
        execute::roll_back(&ctx, failover).await?;
        return Ok(Action::await_change());
    }
    let now = crate::clock::now();
    let observed = observe::observe(&ctx, failover).await;
    let name = failover.name_any();
    let me = plan::Me {
        name: &name,
        created: failover.metadata.creation_timestamp.as_ref().map(|t| t.0),
    };
    let mut plan = plan::plan(&failover.spec, failover.status.as_ref(), &observed, me);
    let ready = plan
        .conditions
        .iter()
        .any(|c| c.r#type == "Ready" && c.is_true());
    let mut next = failover.status.clone().unwrap_or_default();
    // Once the restore started, its point is the failover's point until the spec switches it.
    let wanted = plan.resolved_point.clone();
    if next.restore.is_none() {
        next.resolved_point = plan.resolved_point.clone();
    }
    next.target_zone = plan.target_zone.clone().or(next.target_zone);
    let step = execute::advance(&ctx, failover, ready, wanted.as_ref(), &mut next, now).await?;
    plan.resolved_point = next.resolved_point.clone();
    for c in [step.failed_over, step.committed, step.verified]
        .into_iter()
        .flatten()
    {
        plan.conditions.retain(|x| x.r#type != c.r#type);
        plan.conditions.push(c);
    }
    plan.events.extend(step.events);
    let status = status::build(Some(&next), &plan, failover.metadata.generation, now);
    if write_status(&ctx, failover, failover.status.as_ref(), &status).await? {
        ctx.metrics
            .status_writes
            .get_or_create(&ControllerLabels {
                controller: CONTROLLER,
            })
            .inc();
    }
    apply::apply(&ctx, failover, &plan).await;
    Ok(Action::requeue(if step.busy {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(300)
    }))
}
