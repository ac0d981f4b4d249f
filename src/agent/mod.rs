//! `site-recovery agent`: the node agent (the seed's mobility service). It registers its node
//! (one Lease per node in the operator's namespace, carrying zone, region, version and the
//! agent's reports) and carries out the points the operator starts on the volumes mounted on
//! its node. The agent never imports the controllers; it talks to them only through the API.

pub mod capture;
pub mod error;
pub mod freeze;
mod freezes;
pub mod registration;
pub mod restore;
mod scan;

pub use registration::{AgentSettings, Reports};

/// Runs the agent until `shutdown` resolves. Dropping the returned future stops every capture
/// in flight (they are resumed or failed by whoever runs next; see `crate::api::work`).
pub async fn run(
    client: kube::Client,
    settings: AgentSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let reports = Reports::default();
    let register = registration::keep_registered(client.clone(), settings.clone(), reports.clone());
    let captures = capture::run_captures(client.clone(), settings.clone(), reports.clone());
    let restores = restore::run_restores(client.clone(), settings.clone(), reports.clone());
    let freezes = freezes::run_freezes(client, settings.clone(), reports);
    tokio::select! {
        () = shutdown => {}
        () = register => {}
        () = captures => {}
        () = restores => {}
        () = freezes => {}
    }
    tracing::info!(node = %settings.node_name, "agent stopped");
    Ok(())
}
