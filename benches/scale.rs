//! The control plane at scale: the real operator and three real agents (the release binary,
//! each its own process, as the chart's ServiceAccounts) against the test rig's API server,
//! with N Deployments of one tiny claim each (8 bytes) protected by one Live vault.
//!
//! For each N it prints: how long until every workload was `Registered` and then `Protected`
//! (its first point durable in the target), the points of one steady interval (completed,
//! started, and so restarted; the longest from start to durable in the target; the worst RPO
//! any workload showed), the API requests per point (operator and agents), the resident
//! memory of the operator and the agents (steady and peak), how long a new workload takes to be
//! `Registered` while the others are protected, and how long a restarted operator takes to
//! reconcile every object.
//!
//! `cargo bench --bench scale -- 100,1000` (default `100,1000`); `SCALE_INTERVAL` sets the
//! points' frequency (default `5m`, as a platform team would). `bash bench/scale.sh` runs it
//! with helm installed.

#[allow(unused_imports)]
#[path = "../tests/rig/mod.rs"]
mod rig;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use site_recovery::api::{RecoveryVault, ReplicatedWorkload};

use rig::{Rig, chart, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_site-recovery");
const NS: &str = "apps";
const NODES: [&str; 3] = ["node-a1", "node-a2", "node-a3"];

/// A process of the binary, with its resident memory sampled twice a second.
struct Process {
    child: Child,
    rss: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
    log: PathBuf,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Process {
    fn start(args: &[String], kubeconfig: &Path, log: PathBuf) -> Self {
        Self::start_with(None, args, kubeconfig, log)
    }

    /// [`Self::start`], under `wrapper` (a profiler such as `heaptrack -o FILE`) when given.
    fn start_with(wrapper: Option<&str>, args: &[String], kubeconfig: &Path, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let mut words: Vec<String> = wrapper
            .map(|w| w.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        words.push(BIN.to_string());
        // Its own process group, so that a profiler's child dies with it (see `stop`).
        let child = Command::new(&words[0])
            .process_group(0)
            .args(&words[1..])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start the site-recovery binary");
        let (rss, peak) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let pid = child.id();
        let (r, p) = (rss.clone(), peak.clone());
        tokio::spawn(async move {
            while let Some(kib) = rss_kib(pid) {
                r.store(kib, Ordering::Relaxed);
                p.fetch_max(kib, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Process {
            child,
            rss,
            peak,
            log,
        }
    }

    fn rss_mib(&self) -> f64 {
        self.rss.load(Ordering::Relaxed) as f64 / 1024.0
    }

    fn peak_mib(&self) -> f64 {
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }

    fn reset_peak(&self) {
        self.peak
            .store(self.rss.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Lines of its log that contain `what`.
    fn count(&self, what: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    }

    /// Stops its whole process group, asked first (SIGTERM: the binary shuts down, a profiler
    /// writes its data) and killed after 15 s: a profiler such as heaptrack runs the binary as
    /// its child, which stopping the profiler alone would leave running.
    fn stop(&mut self) {
        let pgid = format!("-{}", self.child.id());
        let group = |signal: &str| {
            let _ = Command::new("kill").args([signal, "--", &pgid]).status();
        };
        group("-TERM");
        let asked = Instant::now();
        while asked.elapsed() < Duration::from_secs(15) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        group("-KILL");
        let _ = self.child.kill();
    }

    fn kill(mut self) {
        self.stop();
        let _ = self.child.wait();
    }
}

/// The operator's `/metrics` text.
async fn metrics(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    Some(text)
}

/// The sum of a counter's series whose labels contain `labels`.
fn counter(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the workloads' statuses say, as the test's admin reads them.
#[derive(Default)]
struct Census {
    registered: usize,
    protected: usize,
    /// name → id and time of the newest point durable in the target.
    replicated: BTreeMap<String, (String, jiff::Timestamp)>,
    /// Why the last attempts that failed did, with how many said so.
    failures: BTreeMap<String, usize>,
}

async fn census(api: &Api<ReplicatedWorkload>) -> Census {
    let mut c = Census::default();
    let Ok(list) = api.list(&ListParams::default()).await else {
        return c;
    };
    for rw in list.items {
        let name = kube::ResourceExt::name_any(&rw);
        let Some(s) = rw.status else { continue };
        let is_true = |t: &str| {
            s.conditions
                .iter()
                .any(|c| c.r#type == t && c.status.as_str() == "True")
        };
        c.registered += usize::from(is_true("Registered"));
        if let Some(a) = s.last_attempt.as_ref().filter(|a| !a.succeeded) {
            // The message without the point's id, so that alike failures count together.
            let why = a.message.replace(&a.id, "<point>");
            *c.failures.entry(why).or_default() += 1;
        }
        if let Some(p) = &s.latest_replicated_point {
            c.protected += 1;
            c.replicated.insert(name, (p.id.clone(), p.time));
        }
    }
    c
}

/// Waits (polling every `poll`) until `done` says so of the census, at most `limit`; how long
/// it took, or `None` when the limit passed.
async fn until(
    api: &Api<ReplicatedWorkload>,
    limit: Duration,
    poll: Duration,
    done: impl Fn(&Census) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    let mut reported = Instant::now();
    while start.elapsed() < limit {
        let c = census(api).await;
        if done(&c) {
            return Some(start.elapsed());
        }
        // A long wait says how far it got, so that a run stopped early still tells.
        if reported.elapsed() >= Duration::from_secs(60) {
            eprintln!(
                "  after {:.0}s: {} Registered, {} with a point in the target",
                start.elapsed().as_secs_f64(),
                c.registered,
                c.protected
            );
            reported = Instant::now();
        }
        tokio::time::sleep(poll).await;
    }
    None
}

/// How often the census lists every workload: once a second at N = 1,000, less often above,
/// so that the test's own reads do not load the API server more than the operator does.
fn census_every(n: usize) -> Duration {
    Duration::from_millis((n as u64).max(1000))
}

fn total(calls: &BTreeMap<(String, String), u64>) -> u64 {
    calls.values().sum()
}

fn operator_user() -> String {
    format!(
        "system:serviceaccount:{}:{}",
        chart::RELEASE_NAMESPACE,
        chart::OPERATOR_SA
    )
}

fn agent_user() -> String {
    format!(
        "system:serviceaccount:{}:{}",
        chart::RELEASE_NAMESPACE,
        chart::AGENT_SA
    )
}

/// One run's figures.
struct Figures {
    n: usize,
    registered: Option<Duration>,
    protected: Option<Duration>,
    completed: usize,
    started: usize,
    /// The longest time from a point's start to its being seen durable in the target.
    longest: f64,
    /// The oldest newest-replicated point any workload showed during the interval.
    worst_rpo: f64,
    operator_requests_per_point: f64,
    agent_requests_per_point: f64,
    operator_steady: f64,
    operator_peak: f64,
    agent_steady: f64,
    agent_peak: f64,
    new_registered: Option<Duration>,
    cold_start: Option<Duration>,
    operator_requests: BTreeMap<(String, String), u64>,
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("not within the limit".into(), |d| {
        format!("{:.1}", d.as_secs_f64())
    })
}

fn operator_args(rig: &Rig, port: u16) -> Vec<String> {
    [
        "operator",
        "--leader-election=false",
        "--log-format=text",
        "--namespace",
        chart::RELEASE_NAMESPACE,
        "--allow-insecure-endpoints=true",
        "--http-addr",
        &format!("127.0.0.1:{port}"),
        "--filesystem-root",
        rig.storage_root.path().to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

async fn run(n: usize, interval: Duration, frequency: &str) -> Figures {
    let rig = Rig::start().await;
    let work = tempfile::tempdir().unwrap();
    rig.apply_crds().await;
    rig.namespace(chart::RELEASE_NAMESPACE).await;
    rig.install_chart_rbac(&[]).await;
    rig.namespace(NS).await;
    for node in NODES {
        rig.node(node, "zone-a", "region-1").await;
    }
    rig.node("node-b1", "zone-b", "region-1").await;
    rig.secret(NS, "vault-key", &[("key", &[7u8; 32])]).await;
    let storage = rig.storage_root.path().join(NS);
    let vault: RecoveryVault = serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
        "metadata": {"name": "vault", "namespace": NS},
        "spec": {
            "cache": {"zone": "zone-a", "storage": {"filesystem": {"path": storage.join("cache")}}},
            "target": {"zone": "zone-b", "storage": {"filesystem": {"path": storage.join("target")}}},
            "snapshotMethod": "Live",
            "encryption": {"keySecretRef": {"name": "vault-key"}},
            "replicationPolicy": {"crashConsistentFrequency": frequency},
        },
    }))
    .unwrap();
    Api::<RecoveryVault>::namespaced(rig.client(), NS)
        .create(&PostParams::default(), &vault)
        .await
        .unwrap();

    // The operator and the agents, as the chart's ServiceAccounts.
    let _ = rig.operator_client();
    let operator_config = rig.kubeconfig_with(
        work.path(),
        "operator",
        &format!("sa-{}-{}", chart::RELEASE_NAMESPACE, chart::OPERATOR_SA),
    );
    let port = free_port();
    // `SCALE_OPERATOR_WRAP="heaptrack -o /tmp/operator"` profiles the operator's heap.
    let wrap = std::env::var("SCALE_OPERATOR_WRAP").ok();
    let mut operator = Process::start_with(
        wrap.as_deref(),
        &operator_args(&rig, port),
        &operator_config,
        work.path().join("operator.log"),
    );
    let agents: Vec<Process> = NODES
        .iter()
        .map(|node| {
            let _ = rig.agent_client_on(node);
            let config = rig.kubeconfig_with(work.path(), node, &format!("sa-agent-{node}"));
            let args = [
                "agent",
                "--log-format=text",
                "--node-name",
                node,
                "--namespace",
                chart::RELEASE_NAMESPACE,
                "--kubelet-root",
                rig.kubelet_root.path().to_str().unwrap(),
                "--state-dir",
                rig.agent_state_dir(node).to_str().unwrap(),
                "--filesystem-root",
                rig.storage_root.path().to_str().unwrap(),
                "--allow-insecure-endpoints=true",
            ]
            .map(String::from)
            .to_vec();
            Process::start(&args, &config, work.path().join(format!("{node}.log")))
        })
        .collect();

    // N Deployments of one claim with 8 bytes each, spread over the nodes, then protected.
    let workloads: Api<ReplicatedWorkload> = Api::namespaced(rig.client(), NS);
    let created = Instant::now();
    let setup = futures::stream::iter(0..n).for_each_concurrent(16, |i| {
        let (rig, workloads) = (&rig, &workloads);
        async move {
            let name = format!("app-{i}");
            let dir = rig
                .deployment(NS, &name, &format!("data-{name}"), NODES[i % NODES.len()])
                .await;
            std::fs::write(dir.join("value"), format!("{:08}", i % 100_000_000)).unwrap();
            protect(workloads, &name).await;
            if (i + 1) % 1000 == 0 {
                eprintln!(
                    "N={n}: workload {} created at {:.1}s",
                    i + 1,
                    created.elapsed().as_secs_f64()
                );
            }
        }
    });
    setup.await;
    eprintln!(
        "N={n}: {n} Deployments and ReplicatedWorkloads created in {:.1}s",
        created.elapsed().as_secs_f64()
    );
    let limit = interval * 3 + Duration::from_secs(120);
    let every = census_every(n);
    let registered = until(&workloads, limit, every, |c| c.registered >= n).await;
    let protected = until(&workloads, limit, every, |c| c.protected >= n)
        .await
        .map(|d| d + registered.unwrap_or_default());
    eprintln!(
        "N={n}: registered {}s, protected {}s",
        secs(registered),
        secs(protected)
    );

    // One steady interval, the statuses read every few seconds: each point that becomes
    // durable in the target is seen within that much of it, its duration measured from the
    // time it was taken; the worst RPO any workload showed; the points started, and what
    // they cost.
    let before = census(&workloads).await;
    let started_before = operator.count("starting a recovery point");
    let (op_before, agent_before) = (rig.calls_of(&operator_user()), rig.calls_of(&agent_user()));
    operator.reset_peak();
    agents.iter().for_each(Process::reset_peak);
    let poll = census_every(n).max(Duration::from_secs(5));
    let window = Instant::now();
    let mut seen = before.replicated.clone();
    let mut durations: Vec<f64> = Vec::new();
    let mut worst_rpo: f64 = 0.0;
    let mut after = Census::default();
    while window.elapsed() < interval {
        tokio::time::sleep(poll.min(interval.saturating_sub(window.elapsed()))).await;
        after = census(&workloads).await;
        let now = jiff::Timestamp::now();
        for (name, (id, time)) in &after.replicated {
            let age = now.duration_since(*time).as_secs_f64();
            worst_rpo = worst_rpo.max(age);
            if seen.get(name).map(|(seen, _)| seen) != Some(id) {
                durations.push(age);
                seen.insert(name.clone(), (id.clone(), *time));
            }
        }
    }
    let completed = durations.len();
    let longest = durations.iter().copied().fold(0.0, f64::max);
    let started = operator.count("starting a recovery point") - started_before;
    for (why, count) in &after.failures {
        eprintln!("N={n}: {count} workloads' last attempt failed: {why}");
    }
    let (op_after, agent_after) = (rig.calls_of(&operator_user()), rig.calls_of(&agent_user()));
    let per_point = |after: u64, before: u64| (after - before) as f64 / completed.max(1) as f64;
    let mut operator_requests = op_after.clone();
    for (k, v) in &op_before {
        if let Some(a) = operator_requests.get_mut(k) {
            *a -= v;
        }
    }
    operator_requests.retain(|_, v| *v > 0);
    let (operator_steady, operator_peak) = (operator.rss_mib(), operator.peak_mib());
    let agent_steady = agents.iter().map(Process::rss_mib).fold(0.0, f64::max);
    let agent_peak = agents.iter().map(Process::peak_mib).fold(0.0, f64::max);

    // A new workload while the others are protected.
    let name = "app-new";
    let dir = rig.deployment(NS, name, "data-app-new", NODES[0]).await;
    std::fs::write(dir.join("value"), "new").unwrap();
    let asked = Instant::now();
    protect(&workloads, name).await;
    // Polled every second whatever N: this is the figure measured.
    let new_registered = until(
        &workloads,
        Duration::from_secs(120),
        Duration::from_secs(1),
        |c| c.registered > n,
    )
    .await
    .map(|_| asked.elapsed());

    // A cold start: a restarted operator reconciles every workload.
    operator.stop();
    let _ = operator.child.wait();
    let restarted = Instant::now();
    operator = Process::start(
        &operator_args(&rig, port),
        &operator_config,
        work.path().join("operator-restarted.log"),
    );
    let mut cold_start = None;
    while restarted.elapsed() < Duration::from_secs(600) {
        if let Some(text) = metrics(port).await
            && counter(
                &text,
                "site_recovery_reconciliations_total",
                "controller=\"replicatedworkload\"",
            ) >= (n + 1) as f64
        {
            cold_start = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    operator.kill();
    for a in agents {
        a.kill();
    }
    Figures {
        n,
        registered,
        protected,
        completed,
        started,
        longest,
        worst_rpo,
        operator_requests_per_point: per_point(total(&op_after), total(&op_before)),
        agent_requests_per_point: per_point(total(&agent_after), total(&agent_before)),
        operator_steady,
        operator_peak,
        agent_steady,
        agent_peak,
        new_registered,
        cold_start,
        operator_requests,
    }
}

async fn protect(workloads: &Api<ReplicatedWorkload>, name: &str) {
    let rw: ReplicatedWorkload = serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"vaultName": "vault", "workloadRef": {"kind": "Deployment", "name": name}},
    }))
    .unwrap();
    workloads.create(&PostParams::default(), &rw).await.unwrap();
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "100,1000".into())
        .split(',')
        .map(|s| s.parse().expect("sizes: N[,N...]"))
        .collect();
    let frequency = std::env::var("SCALE_INTERVAL").unwrap_or_else(|_| "5m".into());
    let interval = site_recovery::api::policy::parse_duration(&frequency).expect("SCALE_INTERVAL");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let figures: Vec<Figures> = sizes
        .iter()
        .map(|&n| runtime.block_on(run(n, interval, &frequency)))
        .collect();
    println!(
        "\n| N | all Registered (s) | all Protected (s) | points in one {frequency} interval: completed / started | longest point (s) | worst RPO seen (s) | API requests per point: operator / agents | operator RSS MiB steady / peak | agent RSS MiB steady / peak | new workload Registered (s) | cold start, every workload reconciled (s) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for f in &figures {
        println!(
            "| {} | {} | {} | {} / {} (of {}) | {:.0} | {:.0} | {:.1} / {:.1} | {:.0} / {:.0} | {:.0} / {:.0} | {} | {} |",
            f.n,
            secs(f.registered),
            secs(f.protected),
            f.completed,
            f.started,
            f.n,
            f.longest,
            f.worst_rpo,
            f.operator_requests_per_point,
            f.agent_requests_per_point,
            f.operator_steady,
            f.operator_peak,
            f.agent_steady,
            f.agent_peak,
            secs(f.new_registered),
            secs(f.cold_start),
        );
    }
    for f in &figures {
        let by: Vec<String> = f
            .operator_requests
            .iter()
            .map(|((verb, resource), n)| format!("{verb} {resource} {n}"))
            .collect();
        println!(
            "\nN={}: operator requests in the interval: {}",
            f.n,
            by.join(", ")
        );
    }
}
