//! The chart's alerts, checked by Prometheus' own tool: the rendered PrometheusRule's rules pass
//! `promtool check rules`, and `promtool test rules` shows each alert firing on the series the
//! operator exports when something goes wrong, with its annotations rendered, and resolving
//! when it stops.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Value, json};

fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

/// The rule groups of the chart's PrometheusRule, as a Prometheus rules file.
fn rules(dir: &std::path::Path) -> (std::path::PathBuf, Vec<Value>) {
    rules_with(dir, &[])
}

/// The same, with more chart `values` (`--set` pairs).
fn rules_with(dir: &std::path::Path, values: &[&str]) -> (std::path::PathBuf, Vec<Value>) {
    let mut args = vec!["--set", "metrics.prometheusRule.enabled=true"];
    args.extend(values);
    let docs = crate::rig::chart::render_as("sr", &args);
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("the chart renders a PrometheusRule when asked");
    let groups = rule["spec"]["groups"].clone();
    let path = dir.join("rules.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&json!({"groups": groups})).unwrap(),
    )
    .unwrap();
    let rules = groups[0]["rules"].as_array().unwrap().clone();
    (path, rules)
}

/// The annotations `alert` has for `labels` (and `$value` rendered as `value`), as
/// Prometheus renders them.
fn annotations(rules: &[Value], alert: &str, labels: &[(&str, &str)], value: &str) -> Value {
    let rule = rules.iter().find(|r| r["alert"] == alert).unwrap();
    let mut out = serde_json::Map::new();
    for (k, v) in rule["annotations"].as_object().unwrap() {
        let mut text = v.as_str().unwrap().to_string();
        for (name, val) in labels {
            text = text.replace(&format!("{{{{ $labels.{name} }}}}"), val);
        }
        text = text.replace("{{ $value | humanizeDuration }}", value);
        out.insert(k.clone(), json!(text));
    }
    Value::Object(out)
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} (run with `bash scripts/test.sh`: it installs promtool): {e}",
                promtool()
            )
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_charts_alerts_pass_promtool_and_fire_and_resolve_on_the_operators_series() {
    assert!(
        !crate::rig::chart::render_as("sr", &[])
            .iter()
            .any(|d| d["kind"] == "PrometheusRule"),
        "no PrometheusRule unless asked"
    );
    let dir = tempfile::tempdir().unwrap();
    let (path, rules) = rules(dir.path());
    let (ok, out) = run(&["check", "rules", path.to_str().unwrap()]);
    assert!(ok, "promtool check rules: {out}");
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(
        names,
        [
            "SiteRecoveryRPOTargetMissed",
            "SiteRecoveryRPOExceeded",
            "SiteRecoveryAgentLost",
            "SiteRecoveryPointsFailing",
            "SiteRecoveryRepositoryRefused",
            "SiteRecoveryFailoverStuck"
        ]
    );
    for r in &rules {
        assert!(
            r["annotations"]["runbook"]
                .as_str()
                .is_some_and(|t| t.len() > 40),
            "{} has a runbook",
            r["alert"]
        );
    }

    let db = [("namespace", "apps"), ("workload", "db")];
    let cond = |kind: &str, t: &str, status: &str, reason: &str, name: &str| {
        format!(
            "site_recovery_condition{{kind=\"{kind}\",namespace=\"apps\",name=\"{name}\",type=\"{t}\",status=\"{status}\",reason=\"{reason}\"}}"
        )
    };
    let labels = |pairs: &[(&str, &str)], severity: &str| -> Value {
        let mut m: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        m.insert("severity", severity);
        json!(m)
    };
    // Two operator replicas export the same series: every alert still fires once.
    let series = json!([
        // Points stop at minute 0 (the newest is of time 0) and resume at minute 20, one a minute.
        {"series": "site_recovery_last_success_timestamp_seconds{namespace=\"apps\",workload=\"db\",pod=\"op-0\"}", "values": "0x19 1200+60x40"},
        {"series": "site_recovery_last_success_timestamp_seconds{namespace=\"apps\",workload=\"db\",pod=\"op-1\"}", "values": "0x19 1200+60x40"},
        {"series": "site_recovery_rpo_target_seconds{namespace=\"apps\",workload=\"db\",pod=\"op-0\"}", "values": "600x60"},
        {"series": cond("ReplicatedWorkload", "Registered", "False", "AgentLost", "db"), "values": "1x10 _x50"},
        {"series": cond("ReplicatedWorkload", "Replicating", "False", "CaptureFailed", "db"), "values": "1x20 _x40"},
        {"series": cond("RecoveryVault", "Ready", "False", "RepositoryRefused", "vault"), "values": "1x60"},
        {"series": cond("Failover", "FailedOver", "False", "WaitingForPods", "fo"), "values": "1x60"},
        // A condition that is fine never alerts.
        {"series": cond("ReplicatedWorkload", "Protected", "True", "RecoveryPointReplicated", "web"), "values": "1x60"},
    ]);
    let alert = |at: &str, name: &str, exp: Vec<Value>| json!({"eval_time": at, "alertname": name, "exp_alerts": exp});
    let fired = |l: Value, a: Value| json!({"exp_labels": l, "exp_annotations": a});
    let tests = json!({
        "rule_files": [path.to_str().unwrap()],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                // 600s is passed at minute 10; `for: 1m`.
                alert("9m", "SiteRecoveryRPOTargetMissed", vec![]),
                alert("12m", "SiteRecoveryRPOTargetMissed", vec![fired(labels(&db, "warning"),
                    annotations(&rules, "SiteRecoveryRPOTargetMissed", &db, "12m 0s"))]),
                // Resolved once points resume.
                alert("25m", "SiteRecoveryRPOTargetMissed", vec![]),
                alert("12m", "SiteRecoveryRPOExceeded", vec![]),
                alert("6m", "SiteRecoveryAgentLost", vec![fired(
                    labels(&[("namespace", "apps"), ("name", "db"), ("reason", "AgentLost")], "warning"),
                    annotations(&rules, "SiteRecoveryAgentLost", &[("namespace", "apps"), ("name", "db"), ("reason", "AgentLost")], ""))]),
                // Resolved once the agent is back (its series gone past the 5-minute lookback).
                alert("20m", "SiteRecoveryAgentLost", vec![]),
                alert("10m", "SiteRecoveryPointsFailing", vec![]),
                alert("16m", "SiteRecoveryPointsFailing", vec![fired(
                    labels(&[("namespace", "apps"), ("name", "db"), ("reason", "CaptureFailed")], "warning"),
                    annotations(&rules, "SiteRecoveryPointsFailing", &[("namespace", "apps"), ("name", "db"), ("reason", "CaptureFailed")], ""))]),
                alert("6m", "SiteRecoveryRepositoryRefused", vec![fired(
                    labels(&[("kind", "RecoveryVault"), ("namespace", "apps"), ("name", "vault"), ("type", "Ready")], "critical"),
                    annotations(&rules, "SiteRecoveryRepositoryRefused", &[("namespace", "apps"), ("name", "vault"), ("type", "Ready")], ""))]),
                alert("20m", "SiteRecoveryFailoverStuck", vec![]),
                alert("31m", "SiteRecoveryFailoverStuck", vec![fired(
                    labels(&[("namespace", "apps"), ("name", "fo"), ("reason", "WaitingForPods")], "critical"),
                    annotations(&rules, "SiteRecoveryFailoverStuck", &[("namespace", "apps"), ("name", "fo"), ("reason", "WaitingForPods")], ""))]),
            ],
        }],
    });
    let test_file = dir.path().join("tests.json");
    std::fs::write(&test_file, serde_json::to_vec(&tests).unwrap()).unwrap();
    let (ok, out) = run(&["test", "rules", test_file.to_str().unwrap()]);
    if std::env::var("ALERTS_DEBUG").is_ok() {
        std::fs::copy(&test_file, "/tmp/alerts-tests.json").unwrap();
        std::fs::copy(&path, "/tmp/alerts-rules.json").unwrap();
    }
    assert!(ok, "promtool test rules:\n{out}");
}

/// The alerts a Prometheus server has now: (name, state, workload label).
async fn alerts_of(prometheus: &str) -> Option<Vec<(String, String, String)>> {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", &format!("{prometheus}/api/v1/alerts")])
        .output()
        .await
        .ok()?;
    let body: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        body["data"]["alerts"]
            .as_array()?
            .iter()
            .map(|a| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&a["labels"]["alertname"]),
                    s(&a["state"]),
                    s(&a["labels"]["workload"]),
                )
            })
            .collect(),
    )
}

/// A real Prometheus scrapes the operator running in the rig, with the chart's rules: the RPO
/// alert fires when the points stop (the agents are gone) and resolves when they resume.
#[tokio::test]
async fn a_real_prometheus_fires_the_rpo_alert_when_points_stop_and_resolves_it_when_they_resume() {
    use crate::replication::{
        Agent, cluster, database, first_point, live_vault, protect, replicated_point,
        request_point, start_agent, start_operator_with_metrics, write_version,
    };
    use kube::api::{Api, PostParams};
    use site_recovery::api::RecoveryVault;
    use std::time::Duration;

    let (rig, dir) = cluster().await;
    let (running, metrics) = start_operator_with_metrics(&rig).await;
    Api::<RecoveryVault>::namespaced(rig.client(), "apps")
        .create(
            &PostParams::default(),
            &live_vault(dir.path(), json!({"crashConsistentFrequency": "30s"})),
        )
        .await
        .unwrap();
    let volumes = database(&rig).await;
    let nodes = ["node-a1", "node-a2", "node-b1"];
    let agents: Vec<Agent> = nodes.iter().map(|n| start_agent(&rig, n, 5)).collect();
    write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    first_point(&workloads).await;

    // Prometheus, scraping and evaluating every second, with the chart's rules (no `for`).
    let work = tempfile::tempdir().unwrap();
    let (rules, _) = rules_with(
        work.path(),
        &["--set", "metrics.prometheusRule.rpoTargetFor=0s"],
    );
    let config = work.path().join("prometheus.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": [{"job_name": "site-recovery", "static_configs": [{"targets": [metrics.to_string()]}]}],
        }))
        .unwrap(),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prometheus = format!("http://127.0.0.1:{port}");
    let _server = tokio::process::Command::new(
        std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into()),
    )
    .arg(format!("--config.file={}", config.display()))
    .arg(format!(
        "--storage.tsdb.path={}",
        work.path().join("data").display()
    ))
    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .expect("prometheus (run with `bash scripts/test.sh`: it installs it)");
    let firing = |name: &'static str| {
        let prometheus = prometheus.clone();
        async move {
            alerts_of(&prometheus).await.is_some_and(|a| {
                a.iter()
                    .any(|(n, s, w)| n == name && s == "firing" && w == "db")
            })
        }
    };
    crate::rig::eventually(
        Duration::from_secs(30),
        "Prometheus scrapes the operator",
        || async { alerts_of(&prometheus).await.map(|_| ()) },
    )
    .await;
    assert!(
        !firing("SiteRecoveryRPOTargetMissed").await,
        "points are being taken"
    );

    // The agents are gone: no point succeeds, and after twice the frequency the alert fires.
    for a in agents {
        a.kill();
    }
    let stopped = std::time::Instant::now();
    crate::rig::eventually(
        Duration::from_secs(150),
        "SiteRecoveryRPOTargetMissed firing",
        || async { firing("SiteRecoveryRPOTargetMissed").await.then_some(()) },
    )
    .await;
    println!(
        "the RPO alert fired {:.0}s after the agents stopped",
        stopped.elapsed().as_secs_f64()
    );

    // They are back; the next point resolves it.
    let agents: Vec<Agent> = nodes.iter().map(|n| start_agent(&rig, n, 5)).collect();
    request_point(&workloads, "resume").await;
    replicated_point(&workloads, "resume", Duration::from_secs(90)).await;
    crate::rig::eventually(
        Duration::from_secs(30),
        "the RPO alert resolved",
        || async { (!firing("SiteRecoveryRPOTargetMissed").await).then_some(()) },
    )
    .await;

    // The chart's dashboard: valid JSON, and every query runs against this Prometheus; the
    // RPO panel shows the workload.
    let docs =
        crate::rig::chart::render_as("sr", &["--set", "metrics.grafanaDashboard.enabled=true"]);
    let map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap, labelled for Grafana's sidecar");
    let dashboard: Value =
        serde_json::from_str(map["data"]["site-recovery.json"].as_str().unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "panel ids are unique"
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$namespace", ".*");
            let out = tokio::process::Command::new("curl")
                .args([
                    "-s",
                    &format!("{prometheus}/api/v1/query"),
                    "--data-urlencode",
                ])
                .arg(format!("query={expr}"))
                .output()
                .await
                .unwrap();
            let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            assert_eq!(
                answer["status"], "success",
                "panel {:?}: {expr}: {answer}",
                panel["title"]
            );
            if panel["id"] == 1 {
                assert!(
                    answer["data"]["result"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|s| s["metric"]["workload"] == "db")),
                    "the RPO panel shows apps/db: {answer}"
                );
            }
        }
    }
    assert!(panels.len() >= 8);
    running.stop().await;
    for a in agents {
        a.kill();
    }
}
