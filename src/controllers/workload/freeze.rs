//! The freeze of a point's filesystems across its nodes (one consistency group): the operator
//! asks through the ReplicatedWorkload's `siterecovery.io/freeze` annotation, each node's agent
//! freezes the claims mounted there and says so on its registration, the snapshots are cut
//! while every one is frozen, then the operator asks for the thaw. The agents thaw at the
//! request's `until` whatever happens; the operator never asks when a node's agent is not
//! registered, and gives up (thawing) when one fails or does not answer in time.

use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use crate::api::ReplicatedWorkload;
use crate::api::registration::AgentRegistration;
use crate::api::work::{FREEZE_ANNOTATION, FreezeRequest, WorkKind, WorkState};
use crate::controllers::Context;

/// How often the registrations are looked at while waiting for the agents.
const POLL: Duration = Duration::from_millis(50);

/// What the agents answered to a freeze.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Every node's filesystems are frozen.
    Frozen,
    /// A node could not freeze (its message), or did not answer by the deadline.
    Failed(String),
    Waiting,
}

/// Pure: where the agents of `nodes` stand with the freeze of `point`.
pub fn answer(
    namespace: &str,
    workload: &str,
    point: &str,
    nodes: &[String],
    registrations: &[AgentRegistration],
) -> Answer {
    let mut waiting = false;
    for node in nodes {
        match report(namespace, workload, point, node, registrations).map(|w| (w.state, &w.message))
        {
            Some((WorkState::Running, _)) => {}
            Some((WorkState::Failed, message)) => {
                return Answer::Failed(format!("node {node}: {message}"));
            }
            Some((WorkState::Done, message)) => {
                return Answer::Failed(format!(
                    "node {node} thawed before the snapshots were cut: {message}"
                ));
            }
            None => waiting = true,
        }
    }
    if waiting {
        Answer::Waiting
    } else {
        Answer::Frozen
    }
}

/// The freeze report of `node`'s agent on `point` of `namespace/workload`.
fn report<'a>(
    namespace: &str,
    workload: &str,
    point: &str,
    node: &str,
    registrations: &'a [AgentRegistration],
) -> Option<&'a crate::api::work::AgentWork> {
    registrations
        .iter()
        .filter(|r| r.node == node)
        .flat_map(|r| &r.work)
        .find(|w| {
            w.kind == WorkKind::Freeze
                && w.namespace == namespace
                && w.workload == workload
                && w.point == point
        })
}

/// Pure: the nodes whose agents cannot be asked (not registered, or their registration
/// lapsed): a freeze is never asked of a node that may not thaw it.
pub fn unreachable(
    nodes: &[String],
    registrations: &[AgentRegistration],
    now: Timestamp,
) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| {
            !registrations
                .iter()
                .any(|r| &r.node == *n && r.is_alive(now))
        })
        .cloned()
        .collect()
}

/// The thaw durations the agents reported (`node: message`), once every node's agent said
/// Done or Failed; `None` while one has not.
fn thawed(
    namespace: &str,
    workload: &str,
    point: &str,
    nodes: &[String],
    registrations: &[AgentRegistration],
) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for node in nodes {
        let done = report(namespace, workload, point, node, registrations)
            .filter(|w| w.state != WorkState::Running)?;
        out.push(format!("{node}: {}", done.message));
    }
    Some(out)
}

async fn annotate(
    ctx: &Context,
    rw: &ReplicatedWorkload,
    request: Option<&FreezeRequest>,
) -> Result<(), String> {
    let api: Api<ReplicatedWorkload> =
        Api::namespaced(ctx.client.clone(), &rw.namespace().unwrap_or_default());
    let value = request.map(|r| serde_json::to_string(r).unwrap_or_default());
    api.patch(
        &rw.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {FREEZE_ANNOTATION: value}}})),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("writing the freeze request: {e}"))
}

/// A freeze in force: [`Held::release`] asks for the thaw.
pub struct Held {
    request: FreezeRequest,
    nodes: Vec<String>,
    started: std::time::Instant,
}

impl Held {
    /// Time left before the agents thaw on their own.
    pub fn remaining(&self) -> Duration {
        let left = self.request.until.duration_since(crate::clock::now());
        Duration::try_from(left).unwrap_or_default()
    }

    /// Asks for the thaw and waits (briefly) for the agents to report it; returns what they
    /// said of how long each node was frozen.
    pub async fn release(mut self, ctx: &Context, rw: &ReplicatedWorkload) -> Vec<String> {
        self.request.thaw = true;
        if let Err(e) = annotate(ctx, rw, Some(&self.request)).await {
            // The agents thaw at `until` anyway.
            tracing::warn!(error = %e, point = %self.request.point, "could not ask for the thaw");
        }
        let (namespace, name) = (rw.namespace().unwrap_or_default(), rw.name_any());
        let deadline = tokio::time::Instant::now() + self.remaining() + Duration::from_secs(2);
        let said = loop {
            let regs = ctx.stores.registrations();
            if let Some(said) = thawed(&namespace, &name, &self.request.point, &self.nodes, &regs) {
                break said;
            }
            if tokio::time::Instant::now() >= deadline {
                break vec![format!(
                    "no thaw reported within {:.1}s of the request",
                    self.started.elapsed().as_secs_f64()
                )];
            }
            tokio::time::sleep(POLL).await;
        };
        if let Err(e) = annotate(ctx, rw, None).await {
            tracing::warn!(error = %e, "could not remove the freeze request");
        }
        said
    }
}

/// Asks the agents of `nodes` to freeze `claims` for `point`, bounded by `timeout`, and waits
/// until every one has (or one failed, or half the bound passed: the snapshots need the rest).
/// On failure everything is thawed and the reason returned.
pub async fn hold(
    ctx: &Context,
    rw: &ReplicatedWorkload,
    point: &str,
    claims: &[String],
    nodes: &[String],
    timeout: Duration,
) -> Result<Held, String> {
    let now = crate::clock::now();
    let regs = ctx.stores.registrations();
    let missing = unreachable(nodes, &regs, now);
    if !missing.is_empty() {
        return Err(format!(
            "no freeze was asked: the agent of node(s) {} is not registered, and could not be relied on to thaw",
            missing.join(", ")
        ));
    }
    let until = now
        .checked_add(jiff::SignedDuration::try_from(timeout).unwrap_or_default())
        .unwrap_or(now);
    let request = FreezeRequest {
        point: point.to_string(),
        claims: claims.to_vec(),
        until,
        thaw: false,
    };
    annotate(ctx, rw, Some(&request)).await?;
    let held = Held {
        request,
        nodes: nodes.to_vec(),
        started: std::time::Instant::now(),
    };
    let (namespace, name) = (rw.namespace().unwrap_or_default(), rw.name_any());
    let deadline = tokio::time::Instant::now() + timeout / 2;
    loop {
        let regs = ctx.stores.registrations();
        match answer(&namespace, &name, point, nodes, &regs) {
            Answer::Frozen => return Ok(held),
            Answer::Failed(message) => {
                held.release(ctx, rw).await;
                return Err(message);
            }
            Answer::Waiting if tokio::time::Instant::now() >= deadline => {
                let silent: Vec<String> = nodes
                    .iter()
                    .filter(|n| report(&namespace, &name, point, n, &regs).is_none())
                    .cloned()
                    .collect();
                held.release(ctx, rw).await;
                return Err(format!(
                    "node(s) {} did not report their filesystems frozen within {:.1}s (half the freeze's bound)",
                    silent.join(", "),
                    (timeout / 2).as_secs_f64()
                ));
            }
            Answer::Waiting => tokio::time::sleep(POLL).await,
        }
    }
}

/// A KubeVirt guest freeze in force (the guest agent froze the VirtualMachine's filesystems,
/// through the `freeze` subresource of its instance): [`GuestHeld::release`] thaws it.
/// KubeVirt thaws by itself after the `unfreezeTimeout` the freeze was asked with, so a freeze
/// the operator cannot end (it died, the API server went away) still ends within its bound.
pub struct GuestHeld {
    namespace: String,
    name: String,
    until: tokio::time::Instant,
    started: std::time::Instant,
}

/// The path of a subresource of VirtualMachineInstance `name`.
fn guest_path(namespace: &str, name: &str, sub: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstances/{name}/{sub}"
    )
}

async fn put_subresource(
    ctx: &Context,
    namespace: &str,
    name: &str,
    sub: &str,
    body: serde_json::Value,
) -> Result<(), String> {
    let request = http::Request::put(guest_path(namespace, name, sub))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
        .map_err(|e| format!("VirtualMachineInstance {name}/{sub}: {e}"))?;
    ctx.client
        .request_text(request)
        .await
        .map(|_| ())
        .map_err(|e| format!("VirtualMachineInstance {namespace}/{name}/{sub}: {e}"))
}

/// What the instance says of its guest's filesystems (`status.fsFreezeStatus`: `frozen`, or
/// nothing once thawed).
async fn guest_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, String> {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        namespace,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
            "virtualmachineinstances",
        ),
    );
    let vmi = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading VirtualMachineInstance {namespace}/{name}: {e}"))?
        .ok_or_else(|| {
            format!(
                "VirtualMachine {name} has no instance: it is not running, so nothing can be frozen"
            )
        })?;
    Ok(vmi.data["status"]["fsFreezeStatus"]
        .as_str()
        .map(String::from))
}

impl GuestHeld {
    pub fn remaining(&self) -> Duration {
        self.until
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// Thaws the guest; says how long it was frozen.
    pub async fn release(self, ctx: &Context) -> Vec<String> {
        let frozen = self.started.elapsed();
        match put_subresource(
            ctx,
            &self.namespace,
            &self.name,
            "unfreeze",
            serde_json::json!({}),
        )
        .await
        {
            Ok(()) => vec![format!(
                "VirtualMachine {}: guest filesystems frozen for {} ms",
                self.name,
                frozen.as_millis()
            )],
            Err(e) => {
                tracing::warn!(error = %e, "could not thaw the guest; KubeVirt thaws it at its unfreeze timeout");
                vec![format!(
                    "VirtualMachine {}: the thaw failed ({e}); KubeVirt thaws at the freeze's timeout",
                    self.name
                )]
            }
        }
    }
}

/// Asks KubeVirt to freeze the guest filesystems of VirtualMachine `name` (its guest agent
/// does, FIFREEZE in the guest), bounded by `timeout` (`unfreezeTimeout`), and waits until the
/// instance says they are frozen, at most half the bound. On failure the guest is thawed and the
/// reason returned.
pub async fn hold_guest(
    ctx: &Context,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<GuestHeld, String> {
    let body = serde_json::json!({"unfreezeTimeout": format!("{}s", timeout.as_secs().max(1))});
    put_subresource(ctx, namespace, name, "freeze", body).await?;
    let held = GuestHeld {
        namespace: namespace.to_string(),
        name: name.to_string(),
        until: tokio::time::Instant::now() + timeout,
        started: std::time::Instant::now(),
    };
    let deadline = tokio::time::Instant::now() + timeout / 2;
    loop {
        match guest_status(ctx, namespace, name).await {
            Ok(Some(s)) if s == "frozen" => return Ok(held),
            Ok(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(POLL).await,
            Ok(_) => {
                held.release(ctx).await;
                return Err(format!(
                    "the guest of VirtualMachine {name} did not report its filesystems frozen within {:.1}s (half the freeze's bound): is the QEMU guest agent running in it?",
                    (timeout / 2).as_secs_f64()
                ));
            }
            Err(e) => {
                held.release(ctx).await;
                return Err(e);
            }
        }
    }
}

/// A freeze in force, of the agents' filesystems or of a VirtualMachine's guest.
pub enum Frozen {
    Filesystems(Held),
    Guest(GuestHeld),
}

impl Frozen {
    pub fn remaining(&self) -> Duration {
        match self {
            Frozen::Filesystems(h) => h.remaining(),
            Frozen::Guest(g) => g.remaining(),
        }
    }

    pub async fn release(self, ctx: &Context, rw: &ReplicatedWorkload) -> Vec<String> {
        match self {
            Frozen::Filesystems(h) => h.release(ctx, rw).await,
            Frozen::Guest(g) => g.release(ctx).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::work::AgentWork;

    fn reg(node: &str, work: Vec<AgentWork>) -> AgentRegistration {
        AgentRegistration {
            node: node.into(),
            zone: None,
            region: None,
            version: None,
            renewed: Some("2026-06-01T12:00:00Z".parse().unwrap()),
            duration_seconds: 30,
            work,
            queued: Default::default(),
        }
    }

    fn freeze(point: &str, state: WorkState, message: &str) -> AgentWork {
        let rw: ReplicatedWorkload = serde_json::from_value(serde_json::json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
            "metadata": {"name": "db", "namespace": "apps"},
            "spec": {"vaultName": "v", "workloadRef": {"kind": "StatefulSet", "name": "db"}},
        }))
        .unwrap();
        AgentWork::about(WorkKind::Freeze, &rw, point, state, message.into())
    }

    #[test]
    fn every_node_must_be_frozen_and_one_failure_ends_the_freeze() {
        let nodes = vec!["a1".to_string(), "a2".to_string()];
        let ask = |regs: &[AgentRegistration]| answer("apps", "db", "p", &nodes, regs);
        let frozen = |n| reg(n, vec![freeze("p", WorkState::Running, "frozen")]);
        assert_eq!(ask(&[frozen("a1")]), Answer::Waiting);
        assert_eq!(ask(&[frozen("a1"), frozen("a2")]), Answer::Frozen);
        // A report of another point or workload does not count.
        assert_eq!(
            ask(&[
                frozen("a1"),
                reg("a2", vec![freeze("older", WorkState::Running, "")])
            ]),
            Answer::Waiting
        );
        let failed = ask(&[
            frozen("a1"),
            reg(
                "a2",
                vec![freeze("p", WorkState::Failed, "claim data-db-1: EPERM")],
            ),
        ]);
        assert_eq!(
            failed,
            Answer::Failed("node a2: claim data-db-1: EPERM".into())
        );
        let early = ask(&[
            frozen("a1"),
            reg(
                "a2",
                vec![freeze("p", WorkState::Done, "thawed at its bound")],
            ),
        ]);
        assert!(matches!(early, Answer::Failed(m) if m.contains("before the snapshots were cut")));
    }

    #[test]
    fn a_node_without_a_live_agent_is_never_asked_to_freeze() {
        let now: Timestamp = "2026-06-01T12:00:10Z".parse().unwrap();
        let nodes = vec!["a1".to_string(), "a2".to_string()];
        let mut lapsed = reg("a2", vec![]);
        lapsed.renewed = Some("2026-06-01T11:00:00Z".parse().unwrap());
        assert_eq!(
            unreachable(&nodes, &[reg("a1", vec![]), lapsed], now),
            ["a2"]
        );
        assert!(unreachable(&nodes, &[reg("a1", vec![]), reg("a2", vec![])], now).is_empty());
    }
}
