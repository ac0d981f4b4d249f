//! The failover's writes besides status: the Events its plan asks for.

use super::plan::Plan;
use crate::api::Failover;
use crate::controllers::{Context, publish_events};

pub async fn apply(ctx: &Context, failover: &Failover, plan: &Plan) {
    publish_events(ctx, failover, &plan.events).await;
}
