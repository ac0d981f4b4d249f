//! What the vault's target location holds, whichever cluster protected it: listed by a
//! background job about once a minute while the vault is Ready, and shown in
//! `status.discovered`. A standby cluster fails over from this list alone.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;

use crate::api::RecoveryVault;
use crate::api::vault::DiscoveredWorkload;
use crate::controllers::Context;
use crate::controllers::jobs::{JobKey, JobKind, State};

/// How often the target location is listed.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// How long one listing may take.
const TIMEOUT: Duration = Duration::from_secs(120);

fn key(vault: &RecoveryVault) -> JobKey {
    JobKey::new(vault.uid().unwrap_or_default(), JobKind::Discover)
}

/// The last listing (`None` until one finished), and a new one started when it is due.
pub fn discovered(
    ctx: &Arc<Context>,
    vault: &RecoveryVault,
    now: jiff::Timestamp,
) -> Option<Result<Vec<DiscoveredWorkload>, String>> {
    let key = key(vault);
    let job = ctx.jobs.get(&key);
    let due = match &job {
        None => true,
        Some(j) if j.is_running() => false,
        Some(j) => j
            .finished
            .is_none_or(|t| now.duration_since(t).as_secs_f64() >= INTERVAL.as_secs_f64()),
    };
    if due {
        let (ctx2, v) = (ctx.clone(), vault.clone());
        ctx.jobs.start_tagged(key, "discover", now, async move {
            let list = async {
                let store = ctx2.point_stores.get(&ctx2, &v).await?;
                store.discover().await
            };
            let found = tokio::time::timeout(TIMEOUT, list)
                .await
                .map_err(|_| {
                    format!(
                        "the target location did not answer within {}s",
                        TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| e.to_string())?;
            serde_json::to_value(found).map_err(|e| e.to_string())
        });
    }
    let job = job?;
    match &job.state {
        State::Running => None,
        State::Failed(m) => Some(Err(m.clone())),
        State::Done(_) => job.outcome::<Vec<DiscoveredWorkload>>().map(Ok),
    }
}
