//! The workload's writes besides status: the Events its plan asks for.

use super::plan::Plan;
use crate::api::ReplicatedWorkload;
use crate::controllers::{Context, publish_events};

pub async fn apply(ctx: &Context, workload: &ReplicatedWorkload, plan: &Plan) {
    publish_events(ctx, workload, &plan.events).await;
}
