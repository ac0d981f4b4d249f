//! App-consistency hooks: commands executed (pods/exec) in a container of every pod of the
//! workload, each with its timeout. Pre hooks quiesce the application just before the capture
//! instant; post hooks resume it and always run, also after a failure.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::AsyncReadExt;

use crate::api::policy::parse_duration;
use crate::api::workload::ExecHook;
use crate::controllers::Context;

/// How much of a failing hook's stderr goes into messages.
const STDERR_LIMIT: usize = 512;

/// Runs `hooks` in every pod, in order; returns one message per failure (empty: all succeeded).
pub async fn run(
    ctx: &Context,
    namespace: &str,
    pods: &[String],
    hooks: &[ExecHook],
    phase: &str,
) -> Vec<String> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut failures = Vec::new();
    for pod in pods {
        for (i, hook) in hooks.iter().enumerate() {
            let timeout = parse_duration(&hook.timeout).unwrap_or(Duration::from_secs(30));
            let what = format!(
                "{phase} hook {i} ({}) in pod {pod}, container {}",
                hook.command.join(" "),
                hook.container
            );
            match tokio::time::timeout(timeout, exec(&api, pod, hook)).await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => failures.push(format!("{what} failed: {message}")),
                Err(_) => failures.push(format!(
                    "{what} did not finish within its timeout of {}",
                    hook.timeout
                )),
            }
        }
    }
    failures
}

async fn exec(api: &Api<Pod>, pod: &str, hook: &ExecHook) -> Result<(), String> {
    let params = AttachParams::default()
        .container(hook.container.clone())
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut attached = api
        .exec(pod, hook.command.clone(), &params)
        .await
        .map_err(|e| e.to_string())?;
    let status = attached.take_status();
    let mut stdout = attached.stdout();
    let mut stderr = attached.stderr();
    let drain_out = async {
        if let Some(s) = stdout.as_mut() {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        }
    };
    let read_err = async {
        let mut text = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut text).await;
        }
        text
    };
    let ((), err_text) = tokio::join!(drain_out, read_err);
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let _ = attached.join().await;
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
        Some(s) => {
            let mut message = s.message.unwrap_or_else(|| "failed".into());
            let err = String::from_utf8_lossy(&err_text);
            let err = err.trim();
            if !err.is_empty() {
                let cut: String = err.chars().take(STDERR_LIMIT).collect();
                message.push_str(&format!("; stderr: {cut}"));
            }
            Err(message)
        }
        None => Err("the connection closed without an exit status".into()),
    }
}
