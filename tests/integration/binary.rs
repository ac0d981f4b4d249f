//! The real `site-recovery` binary against the rig: CRD printing, CRD install, probes,
//! metrics, graceful SIGTERM, and exit codes of `validate`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::rig::{Rig, eventually, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_site-recovery");

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text))
}

#[test]
fn crd_subcommand_prints_the_generated_crds() {
    let out = Command::new(BIN).arg("crd").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        site_recovery::api::crds_yaml()
    );
}

#[test]
fn validate_subcommand_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: siterecovery.io/v1alpha1\nkind: Failover\nmetadata: {name: f}\nspec: {workloadName: db, commit: true, mode: Test}\n").unwrap();
    let out = Command::new(BIN)
        .args(["validate", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("bad.yaml: document 1 (Failover f)")
            && stdout.contains("a drill is never committed"),
        "{stdout}"
    );
    let examples = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/vault-filesystem.yaml"
    );
    let out = Command::new(BIN)
        .args(["validate", examples])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(BIN)
        .args(["validate", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml: cannot read"));
}

#[tokio::test]
async fn operator_binary_installs_crds_serves_probes_and_stops_on_sigterm() {
    let rig = Rig::start().await;
    rig.namespace("site-recovery-system").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = rig.kubeconfig(dir.path());
    let port = free_port();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "operator",
            "--install-crds",
            "--namespace",
            "site-recovery-system",
            "--http-addr",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "/readyz to answer 200", || async {
        http_get(port, "/readyz")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await;
    let (code, _) = http_get(port, "/healthz").await.unwrap();
    assert_eq!(code, 200);
    let crds: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        kube::Api::all(rig.client());
    assert_eq!(
        crds.list(&Default::default()).await.unwrap().items.len(),
        3,
        "--install-crds applied the CRDs"
    );
    let metrics = eventually(Duration::from_secs(20), "the leader gauge", || async {
        http_get(port, "/metrics")
            .await
            .filter(|(_, body)| body.contains("site_recovery_leader 1"))
    })
    .await;
    assert!(
        metrics.1.contains("# TYPE site_recovery_leader gauge"),
        "{}",
        metrics.1
    );

    let pid = child.id().unwrap();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status:?}"
    );
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    let last: serde_json::Value = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("JSON logs");
    assert!(
        last["message"].is_string() && last["level"].is_string(),
        "{last}"
    );
    // The leader Lease was released for a quick hand-over.
    let lease: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(rig.client(), "site-recovery-system");
    let held = lease
        .get("site-recovery-operator")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity);
    assert!(held.is_none(), "lease still held by {held:?}");
}
