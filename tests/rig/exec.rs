//! `pods/exec` over WebSocket (the v4.channel.k8s.io subprotocol), as the kubelet serves it. The
//! rig plays the container runtime by running the command on this machine; tests pass commands
//! whose effects they can check (files written, exit codes, sleeps).

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::server::{Shared, percent_decode, status_error};

/// One exec the rig ran.
#[derive(Clone, Debug)]
pub struct ExecRecord {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
}

/// `/api/v1/namespaces/{ns}/pods/{pod}/exec` with an upgrade; `None` for any other request.
pub fn is_exec(req: &Request<Body>) -> Option<(String, String)> {
    let path = req.uri().path();
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut parts = rest.split('/');
    let (ns, pods, pod, exec) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (pods == "pods" && exec == "exec" && parts.next().is_none())
        .then(|| (ns.to_string(), pod.to_string()))
}

pub async fn exec(shared: Shared, ns: String, pod: String, mut req: Request<Body>) -> Response {
    let query = req.uri().query().unwrap_or_default().to_string();
    let mut command = Vec::new();
    let mut container = String::new();
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "command" => command.push(percent_decode(v)),
            "container" => container = percent_decode(v),
            _ => {}
        }
    }
    let containers: Option<Vec<String>> = {
        let state = shared.0.lock().unwrap();
        state
            .objects
            .get("/pods")
            .and_then(|m| m.get(&(ns.clone(), pod.clone())))
            .map(|p| {
                p["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect()
            })
    };
    let Some(containers) = containers else {
        return status_error(
            404,
            "NotFound",
            format!("pods \"{pod}\" not found"),
            json!({"name": pod, "kind": "pods"}),
        )
        .into_response();
    };
    if !containers.contains(&container) {
        return status_error(
            400,
            "BadRequest",
            format!("container {container} is not valid for pod {pod}"),
            serde_json::Value::Null,
        )
        .into_response();
    }
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return status_error(
            400,
            "BadRequest",
            "exec needs a WebSocket upgrade".into(),
            serde_json::Value::Null,
        )
        .into_response();
    };
    shared.0.lock().unwrap().execs.push(ExecRecord {
        namespace: ns,
        pod,
        container,
        command: command.clone(),
    });
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // Output is streamed as the command writes it, like the kubelet does; a client that
        // goes away (or closes the stream) kills the command.
        let child = command.split_first().and_then(|(program, args)| {
            tokio::process::Command::new(program)
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .ok()
        });
        let code = match child {
            None => {
                let mut frame = vec![2u8];
                frame.extend(b"executable not found");
                let _ = ws.send(Message::binary(frame)).await;
                126
            }
            Some(mut child) => {
                use tokio::io::AsyncReadExt;
                let mut out = child.stdout.take().unwrap();
                let mut err = child.stderr.take().unwrap();
                let (mut out_open, mut err_open) = (true, true);
                let (mut ob, mut eb) = (vec![0u8; 8192], vec![0u8; 8192]);
                let mut gone = false;
                while out_open || err_open {
                    let (channel, n) = tokio::select! {
                        r = out.read(&mut ob), if out_open => (1u8, r.unwrap_or(0)),
                        r = err.read(&mut eb), if err_open => (2u8, r.unwrap_or(0)),
                    };
                    if n == 0 {
                        if channel == 1 {
                            out_open = false
                        } else {
                            err_open = false
                        }
                        continue;
                    }
                    let mut frame = vec![channel];
                    frame.extend_from_slice(if channel == 1 { &ob[..n] } else { &eb[..n] });
                    if ws.send(Message::binary(frame)).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    let _ = child.kill().await;
                    shared.0.lock().unwrap().execs_killed += 1;
                    return;
                }
                child
                    .wait()
                    .await
                    .ok()
                    .and_then(|s| s.code())
                    .unwrap_or(137)
            }
        };
        let status = if code == 0 {
            json!({"metadata": {}, "status": "Success"})
        } else {
            json!({"metadata": {}, "status": "Failure", "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
        };
        let mut frame = vec![3u8];
        frame.extend(serde_json::to_vec(&status).unwrap());
        let _ = ws.send(Message::binary(frame)).await;
        let _ = ws.close(None).await;
    });
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).unwrap(),
    );
    h.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("v4.channel.k8s.io"),
    );
    res
}
