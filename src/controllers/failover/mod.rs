//! Failover controller. Each pass: the [`phase`] from the spec and recorded status; an
//! [`observe`] of what that phase needs; the pure [`plan`] (Ready, the point) and [`decide`]
//! (actions, facts, conditions); [`act`] carries out the idempotent actions; [`record`] writes
//! the facts only after they succeeded; the status is written only when it changed. A deleted
//! Failover goes through the pure [`rollback`] instead. The objects it makes are built by
//! [`manifests`].

pub mod act;
pub mod decide;
pub mod manifests;
pub mod observe;
pub mod phase;
pub mod plan;
pub mod record;
pub mod rollback;
pub mod status;
pub mod triggers;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::api::Failover;
use crate::api::failover::FailoverMode;
use crate::api::work::FAILOVER_UID_LABEL;
use crate::controllers::objects::{Kind, ObjectName, holder};
use crate::controllers::{Context, Error, publish_events, write_status};
use crate::metrics::ControllerLabels;
use decide::{Decision, Fact, Inputs};
use phase::Phase;

pub const CONTROLLER: &str = "failover";

pub const FINALIZER: &str = "siterecovery.io/failover";

/// The source workload's replica count before the failover scaled it to zero: written in the
/// same patch that scales it, so the count survives a lost status write.
pub const REPLICAS_ANNOTATION: &str = "siterecovery.io/replicas-before-failover";

/// On a failover's copy: the workload it is a copy of, where a failback returns.
pub const COPY_OF_ANNOTATION: &str = "siterecovery.io/copy-of";

/// The Failover that holds the source workload at zero replicas, written and removed together
/// with [`REPLICAS_ANNOTATION`]: the chart's admission policy refuses to scale a workload that
/// carries it up (unless the operator asks), and names this Failover in the refusal.
pub const HELD_BY_ANNOTATION: &str = "siterecovery.io/held-by-failover";

pub async fn reconcile(f: &Failover, ctx: Arc<Context>) -> Result<Action, Error> {
    let phase = phase::phase(f);
    if phase == Phase::Deleting {
        let observed = observe_rollback(&ctx, f).await?;
        let d = rollback::roll_back(f, &observed);
        act::act(&ctx, f, &d.actions).await?;
        publish_events(&ctx, f, &d.events).await;
        return Ok(Action::await_change());
    }
    let now = crate::clock::now();
    let recorded = f.status.clone().unwrap_or_default();
    let switching = phase::may_switch_point(f);
    let observed = observe::observe_plan(&ctx, f, phase.chooses_point() || switching).await;
    let name = f.name_any();
    let me = plan::Me {
        name: &name,
        created: f.metadata.creation_timestamp.as_ref().map(|t| t.0),
    };
    let plan = plan::plan(&f.spec, f.status.as_ref(), &observed, me);
    let inputs = Inputs {
        failover: f,
        status: &recorded,
        chosen: plan.resolved_point.as_ref(),
        target_zone: plan
            .target_zone
            .as_deref()
            .or(recorded.target_zone.as_deref()),
        image: &ctx.reader_image,
        now,
    };
    let decision = decide_pass(&ctx, phase, &inputs, &plan, switching).await?;
    act::act(&ctx, f, &decision.actions).await?;
    let mut next = recorded.clone();
    // While the point is being chosen, the status shows the choice (a Planned failover's is
    // the final point, once replicated).
    match phase {
        Phase::Preparing if f.spec.mode != FailoverMode::Planned => {
            next.resolved_point = plan.resolved_point.clone()
        }
        Phase::StoppingSource | Phase::FinalPoint => next.resolved_point = None,
        _ => {}
    }
    next = record::record(&next, &decision.facts, now);
    let status = status::build(
        next,
        &plan,
        &decision.conditions,
        f.metadata.generation,
        now,
    );
    if write_status(&ctx, f, f.status.as_ref(), &status).await? {
        ctx.metrics
            .status_writes
            .get_or_create(&ControllerLabels {
                controller: CONTROLLER,
            })
            .inc();
    }
    publish_events(&ctx, f, &plan.events).await;
    publish_events(&ctx, f, &decision.events).await;
    Ok(Action::requeue(if decision.busy {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(300)
    }))
}

/// Observes what the phase needs and decides. Before the restore, nothing happens until the
/// plan is Ready.
async fn decide_pass(
    ctx: &Context,
    phase: Phase,
    inputs: &Inputs<'_>,
    plan: &plan::Plan,
    switching: bool,
) -> Result<Decision, Error> {
    let f = inputs.failover;
    let ready = plan
        .conditions
        .iter()
        .any(|c| c.r#type == "Ready" && c.is_true());
    if phase.chooses_point() && !ready {
        return Ok(Decision::default());
    }
    let point = match phase {
        Phase::StoppingSource | Phase::FinalPoint => plan.resolved_point.as_ref(),
        Phase::Preparing if f.spec.mode != FailoverMode::Planned => plan.resolved_point.as_ref(),
        _ => inputs.status.resolved_point.as_ref(),
    };
    let mut world = observe::observe_world(ctx, f, phase, point, inputs.target_zone).await?;
    if switching && ready {
        world.switch_to = switch_to(inputs.status, plan.resolved_point.as_ref());
    }
    let mut d = decide::decide(phase, inputs, &world);
    if switching && ready && world.switch_to.is_none() {
        // The same point: checked against this generation, not listed again.
        d.facts.push(Fact::RestoreGeneration(f.metadata.generation));
    }
    Ok(d)
}

/// The point to switch to: the plan's, when it is another than the one restored.
fn switch_to(
    recorded: &crate::api::failover::FailoverStatus,
    wanted: Option<&crate::api::failover::ResolvedPoint>,
) -> Option<crate::api::failover::ResolvedPoint> {
    let restore = recorded.restore.as_ref()?;
    wanted.filter(|w| w.id != restore.point).cloned()
}

/// What a rollback reads: the workload (cache), the drill's namespace, the source workload.
async fn observe_rollback(ctx: &Context, f: &Failover) -> Result<rollback::Observed, Error> {
    let mut observed = rollback::Observed {
        workload: observe::workload_of(ctx, f).and_then(Result::ok),
        ..Default::default()
    };
    if !f.finalizers().iter().any(|x| x == FINALIZER) {
        return Ok(observed);
    }
    let uid = f.uid().unwrap_or_default();
    if f.spec.mode == FailoverMode::Test {
        let ns = ObjectName::new(Kind::Namespace, None, &manifests::drill_namespace(f));
        observed.drill_namespace = Some(holder(&ctx.client, &ns, FAILOVER_UID_LABEL, &uid).await?);
    } else if let Some(rw) = &observed.workload {
        let place = manifests::Place::of(f, rw.spec.workload_ref.kind, &rw.spec.workload_ref.name);
        observed.source = observe::source(ctx, &f.namespace().unwrap_or_default(), &place).await?;
    }
    Ok(observed)
}
