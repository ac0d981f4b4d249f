//! App-consistency hooks: commands executed (pods/exec) in a container of every pod of the
//! workload, each with its timeout. Pre hooks quiesce the application just before the capture
//! instant; post hooks resume it and always run, also after a failure.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::{AsyncRead, AsyncReadExt};

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

/// The most of a hook's stdout or stderr that is read: a hook that writes more is stopped (a
/// `cat /dev/zero` must not be read for the hook's whole timeout, nor held in memory).
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// Reads `stream` until it ends or passes `limit` bytes; returns what was read (at most
/// `limit` bytes) and whether the stream had more.
async fn read_capped<R: AsyncRead + Unpin>(stream: Option<R>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut stream) = stream else {
        return (vec![], false);
    };
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return (kept, false),
            Ok(n) => {
                let room = limit - kept.len();
                kept.extend_from_slice(&chunk[..n.min(room)]);
                if n > room {
                    return (kept, true);
                }
            }
        }
    }
}

/// Runs one hook in `pod` and waits for its exit status. Output is read up to
/// [`OUTPUT_LIMIT`] per stream; past it the exec is closed and the hook fails, saying so.
pub async fn exec(api: &Api<Pod>, pod: &str, hook: &ExecHook) -> Result<(), String> {
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
    let out = read_capped(attached.stdout(), OUTPUT_LIMIT);
    let err = read_capped(attached.stderr(), OUTPUT_LIMIT);
    tokio::pin!(out, err);
    let (mut out_done, mut err_text) = (None, None);
    // Both streams are read together (the exec stalls when one is left unread); the first that
    // passes the limit ends the exec.
    let over = loop {
        tokio::select! {
            (_, more) = &mut out, if out_done.is_none() => {
                if more { break Some("stdout") }
                out_done = Some(());
            }
            (text, more) = &mut err, if err_text.is_none() => {
                if more { break Some("stderr") }
                err_text = Some(text);
            }
        }
        if out_done.is_some() && err_text.is_some() {
            break None;
        }
    };
    if let Some(stream) = over {
        attached.abort();
        return Err(format!(
            "its {stream} passed {} KiB and was cut there (truncated); the exec was closed without waiting for the command to end",
            OUTPUT_LIMIT / 1024
        ));
    }
    let err_text = err_text.unwrap_or_default();
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
                if cut.len() < err.len() {
                    message.push_str(" (truncated)");
                }
            }
            Err(message)
        }
        None => Err("the connection closed without an exit status".into()),
    }
}
