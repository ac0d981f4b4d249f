//! The test rig: an in-process Kubernetes API server (see `server.rs`) plus helpers that play
//! the parts this machine lacks: scheduler (binding pods), kubelet (pod volume directories under
//! a temporary kubelet root, readiness), StatefulSet controller and CSI driver.

#![allow(dead_code)]

pub mod authz;
pub mod block;
pub mod chart;
pub mod csi;
pub mod exec;
pub mod failover;
pub mod fields;
pub mod kubevirt;
pub mod partition;
pub mod policy;
pub mod resources;
pub mod selector;
pub mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};

pub use server::Shared;

/// The bearer token of the test's own admin; the kubeconfig for the real binary uses "rig".
pub const ADMIN_TOKEN: &str = "rig-admin";

pub struct Rig {
    pub addr: SocketAddr,
    pub state: Shared,
    pub kubelet_root: tempfile::TempDir,
    /// The installation's filesystem storage root: vaults of namespace `ns` keep their
    /// filesystem locations below `<storage_root>/<ns>/`.
    pub storage_root: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
    /// The cluster's address and kubelet root, shareable with tasks that play its parts.
    pub cluster: Cluster,
}

/// What the helpers that play scheduler, kubelet and controllers need: the server's address
/// and the kubelet root. Cheap to clone into a task.
#[derive(Clone)]
pub struct Cluster {
    pub addr: SocketAddr,
    pub kubelet: PathBuf,
    /// The admin's client, made once: one pool of connections for every helper call, as a
    /// controller keeps, instead of a connection opened and closed per request.
    admin: Arc<std::sync::OnceLock<Client>>,
}

impl std::ops::Deref for Rig {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl Drop for Rig {
    /// A test that passed while a component was denied something fails here: on a cluster the
    /// same request would fail, whatever the test asserted.
    fn drop(&mut self) {
        self.server.abort();
        block::detach_all(self.kubelet_root.path());
        let auth = &self.state.0.lock().unwrap().auth;
        if auth.denials_expected || auth.denied.is_empty() {
            return;
        }
        let mut seen = std::collections::BTreeSet::new();
        let report = format!(
            "RBAC denied {} requests the chart's roles should allow:\n{}",
            auth.denied.len(),
            auth.denied
                .iter()
                .filter(|d| seen.insert(*d))
                .map(|(who, what)| format!("  {who}: {what}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        if std::thread::panicking() {
            eprintln!("{report}");
        } else {
            panic!("{report}");
        }
    }
}

/// A TCP port free on the loopback now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Logs of the operator and agents under test, when asked for with RUST_LOG.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

impl Rig {
    pub async fn start() -> Rig {
        install_crypto();
        let state = server::new_state();
        let app = axum::Router::new()
            .fallback(server::entry)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the rig");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("rig server");
        });
        let kubelet_root = tempfile::tempdir().unwrap();
        let rig = Rig {
            addr,
            state,
            cluster: Cluster {
                addr,
                kubelet: kubelet_root.path().to_path_buf(),
                admin: Arc::default(),
            },
            kubelet_root,
            storage_root: tempfile::tempdir().unwrap(),
            server,
        };
        for ns in ["default", "kube-system"] {
            rig.namespace(ns).await;
        }
        rig
    }

    /// From now on every request must carry a known token and pass RBAC, as on a cluster.
    pub fn enforce_rbac(&self) {
        self.state.0.lock().unwrap().auth.enforce = true;
    }

    /// A client authenticated as ServiceAccount `namespace/name` (its token registered with
    /// the rig), authorized by whatever roles are bound to it.
    pub fn client_as(&self, namespace: &str, name: &str) -> Client {
        let token = format!("sa-{namespace}-{name}");
        self.state.0.lock().unwrap().auth.tokens.insert(
            token.clone(),
            authz::Identity::service_account(namespace, name),
        );
        self.cluster.client_with_token(&token)
    }

    /// Installs the chart's ServiceAccounts, roles and bindings (rendered by helm with `args`;
    /// the release namespace must exist) and enforces RBAC: what the operator and agents may do is what the chart grants.
    pub async fn install_chart_rbac(&self, args: &[&str]) {
        self.install_rbac(chart::rbac_documents(args)).await;
    }

    /// Installs these RBAC documents and enforces RBAC.
    pub async fn install_rbac(&self, docs: Vec<Value>) {
        for doc in docs {
            self.apply_document(doc).await;
        }
        self.enforce_rbac();
    }

    /// Creates (or replaces) any object, as `kubectl apply` of a rendered manifest would.
    pub async fn apply_document(&self, doc: Value) {
        let gvk = kube::api::GroupVersionKind::try_from(&kube::api::TypeMeta {
            api_version: doc["apiVersion"].as_str().unwrap().into(),
            kind: doc["kind"].as_str().unwrap().into(),
        })
        .unwrap();
        let lower = gvk.kind.to_ascii_lowercase();
        let plural = match lower.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{lower}s"),
        };
        let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, &plural);
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(self.client(), ns, &resource),
            None => Api::all_with(self.client(), &resource),
        };
        let name = obj.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("rig").force(),
            &Patch::Apply(doc),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {} {name}: {e}", gvk.kind));
    }

    /// A client of the chart's operator ServiceAccount.
    pub fn operator_client(&self) -> Client {
        self.client_as(chart::RELEASE_NAMESPACE, chart::OPERATOR_SA)
    }

    /// A client of the chart's agent ServiceAccount, with no node in its token.
    pub fn agent_client(&self) -> Client {
        self.client_as(chart::RELEASE_NAMESPACE, chart::AGENT_SA)
    }

    /// A client of the chart's agent ServiceAccount as the agent pod on `node` holds it (a
    /// bound token that names the node).
    pub fn agent_client_on(&self, node: &str) -> Client {
        let token = format!("sa-agent-{node}");
        self.state.0.lock().unwrap().auth.tokens.insert(
            token.clone(),
            authz::Identity::service_account_on_node(
                chart::RELEASE_NAMESPACE,
                chart::AGENT_SA,
                node,
            ),
        );
        self.cluster.client_with_token(&token)
    }

    /// This test provokes denials on purpose: the rig does not fail it for them.
    pub fn expect_denials(&self) {
        self.state.0.lock().unwrap().auth.denials_expected = true;
    }

    /// What RBAC denied so far: (user, the 403's message).
    pub fn denied(&self) -> Vec<(String, String)> {
        self.state.0.lock().unwrap().auth.denied.clone()
    }

    /// The storage rules the operator and agents of the tests run with: this rig's storage
    /// root, and http endpoints allowed (the S3 and Azure test servers speak http).
    pub fn storage_rules(&self) -> site_recovery::storage::StorageRules {
        site_recovery::storage::StorageRules {
            filesystem_root: self.storage_root.path().to_path_buf(),
            allow_insecure_endpoints: true,
            allow_ambient_credentials: false,
        }
    }

    /// A fresh directory for filesystem locations of vaults in namespace `ns`.
    /// The host directory where the agent of `node` records its freezes.
    pub fn agent_state_dir(&self, node: &str) -> PathBuf {
        self.kubelet_root.path().join("agent-state").join(node)
    }

    pub fn vault_dir(&self, ns: &str) -> tempfile::TempDir {
        let dir = self.storage_root.path().join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        tempfile::tempdir_in(dir).unwrap()
    }

    /// A cluster without an API (e.g. no snapshot controller installed): `group`'s `plural`
    /// answers 404 from now on.
    pub fn remove_api(&self, group: &str, plural: &str) {
        self.state
            .0
            .lock()
            .unwrap()
            .resources
            .retain(|r| !(r.group == group && r.plural == plural));
    }

    /// An etcd compaction: exact lists and continue tokens older than now answer 410 Expired.
    pub fn compact(&self) {
        self.state.0.lock().unwrap().compact();
    }

    /// The watch cache drops its history: watches older than now answer 410 Expired.
    pub fn expire_watch_cache(&self) {
        self.state
            .0
            .lock()
            .unwrap()
            .expire_watch_cache(&self.state.1);
    }

    /// How many watches were answered with 410 Expired.
    pub fn expired_watches(&self) -> u64 {
        self.state.0.lock().unwrap().expired_watches
    }

    pub fn set_bookmark_interval(&self, d: Duration) {
        self.state.0.lock().unwrap().bookmark_interval = d;
    }

    /// From now on, every successful status write of resource `plural` is reported on the
    /// returned channel and then never answered, so that a test can stop the writer right after
    /// each write. [`Rig::resume_status_writes`] ends it.
    pub fn pause_status_writes(&self, plural: &str) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.state.0.lock().unwrap().pause_status_writes = Some((plural.to_string(), tx));
        rx
    }

    pub fn resume_status_writes(&self) {
        self.state.0.lock().unwrap().pause_status_writes = None;
    }

    /// Requests seen so far from `user`, by (verb, resource): see [`authz::Call`].
    pub fn calls_of(&self, user: &str) -> std::collections::BTreeMap<(String, String), u64> {
        self.state
            .0
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(c, _)| c.user == user)
            .map(|(c, n)| ((c.verb.clone(), c.resource.clone()), *n))
            .collect()
    }

    /// Requests seen so far by (method, resource plural).
    pub fn request_count(&self, method: &str, plural: &str) -> u64 {
        self.state
            .0
            .lock()
            .unwrap()
            .requests
            .get(&(method.to_string(), plural.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

impl Cluster {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of the test's own admin (`system:masters`), for setting up and for playing
    /// kubelet, scheduler and controllers.
    pub fn client(&self) -> Client {
        self.admin
            .get_or_init(|| self.client_with_token(ADMIN_TOKEN))
            .clone()
    }

    fn client_with_token(&self, token: &str) -> Client {
        let mut config = Config::new(self.url().parse().unwrap());
        config.auth_info.token = Some(token.to_string().into());
        config.default_namespace = "default".into();
        config.read_timeout = Some(Duration::from_secs(300));
        Client::try_from(config).expect("client for the rig")
    }

    /// A kubeconfig file pointing at the rig, for running the real binary.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        self.kubeconfig_with(dir, "kubeconfig", "rig")
    }

    /// A kubeconfig file `name` in `dir` for the real binary, authenticated by `token` (one the
    /// rig knows: see [`Self::client_as`], [`Self::agent_client_on`]).
    pub fn kubeconfig_with(&self, dir: &Path, name: &str, token: &str) -> PathBuf {
        let path = dir.join(name);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: rig\n  cluster:\n    server: {}\ncontexts:\n- name: rig\n  context:\n    cluster: rig\n    user: rig\n    namespace: default\ncurrent-context: rig\nusers:\n- name: rig\n  user:\n    token: {token}\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The API of an object given as JSON (its apiVersion, kind and namespace).
    fn api_for(&self, obj: &Value) -> Api<DynamicObject> {
        let api_version = obj["apiVersion"].as_str().unwrap();
        let kind = obj["kind"].as_str().unwrap();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
        let ar = kube::core::ApiResource::from_gvk_with_plural(&gvk, &plural_of(kind));
        match obj["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(self.client(), ns, &ar),
            None => Api::all_with(self.client(), &ar),
        }
    }

    /// Creates any object given as JSON, through the HTTP API.
    pub async fn create(&self, obj: Value) -> Value {
        let api = self.api_for(&obj);
        let kind = obj["kind"].as_str().unwrap().to_string();
        let dynamic: DynamicObject = serde_json::from_value(obj).unwrap();
        let created = api
            .create(&PostParams::default(), &dynamic)
            .await
            .unwrap_or_else(|e| panic!("create {kind}: {e}"));
        serde_json::to_value(created).unwrap()
    }

    /// Creates an object unless one of that name exists (what a controller that may run twice does).
    pub async fn create_or_keep(&self, obj: Value) {
        let kind = obj["kind"].as_str().unwrap().to_string();
        self.try_create_or_keep(obj)
            .await
            .unwrap_or_else(|e| panic!("create {kind}: {e}"));
    }

    /// [`Self::create_or_keep`] for the rig's controllers, which retry on their next pass.
    pub async fn try_create_or_keep(&self, obj: Value) -> Result<(), kube::Error> {
        let api = self.api_for(&obj);
        let dynamic: DynamicObject = serde_json::from_value(obj).unwrap();
        match api.create(&PostParams::default(), &dynamic).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn namespace(&self, name: &str) {
        let _ = self
            .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
            .await;
    }

    pub async fn apply_crds(&self) {
        for crd in site_recovery::api::crds() {
            self.create(serde_json::to_value(crd).unwrap()).await;
        }
    }

    /// A node labelled with its zone and region, as a cloud provider labels it.
    pub async fn node(&self, name: &str, zone: &str, region: &str) {
        self.create(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": zone,
                "topology.kubernetes.io/region": region,
            }},
        }))
        .await;
    }

    pub async fn secret(&self, ns: &str, name: &str, data: &[(&str, &[u8])]) {
        use base64::Engine;
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        self.create(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "data": data})).await;
    }

    /// Registers (or renews) the agent of `node` as the agent DaemonSet will: a Lease in the
    /// operator's namespace, renewed now, valid for `duration_seconds`.
    pub async fn register_agent(
        &self,
        operator_ns: &str,
        node: &str,
        zone: &str,
        duration_seconds: i32,
    ) {
        use site_recovery::api::registration::*;
        let leases: Api<Lease> = Api::namespaced(self.client(), operator_ns);
        let now = jiff::Timestamp::now();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {
                "name": lease_name(node),
                "labels": {COMPONENT_LABEL: COMPONENT_VALUE, NODE_LABEL: node},
                "annotations": {ZONE_ANNOTATION: zone, VERSION_ANNOTATION: "test"},
            },
            "spec": {"holderIdentity": node, "leaseDurationSeconds": duration_seconds, "renewTime": now, "acquireTime": now},
        });
        leases
            .patch(
                &lease_name(node),
                &PatchParams::apply("site-recovery-agent").force(),
                &Patch::Apply(&lease),
            )
            .await
            .expect("register agent");
    }

    /// Plays the StatefulSet controller, scheduler and kubelet: creates the StatefulSet, one
    /// PVC per claim template and replica, the pods (owned by the StatefulSet) bound to `nodes`
    /// in order, Running and Ready, with their volume directories laid out under the kubelet root.
    pub async fn statefulset(
        &self,
        ns: &str,
        name: &str,
        claims: &[&str],
        nodes: &[&str],
    ) -> Vec<Value> {
        self.statefulset_with(ns, name, claims, nodes, None).await
    }

    /// [`Self::statefulset`], with block claims of `block` bytes each when given: every claim
    /// is a loop device the pods attach (`volumeDevices`) instead of a mounted directory.
    pub async fn statefulset_with(
        &self,
        ns: &str,
        name: &str,
        claims: &[&str],
        nodes: &[&str],
        block: Option<u64>,
    ) -> Vec<Value> {
        let (mode, size) = match block {
            Some(b) => ("Block", format!("{}Mi", b >> 20)),
            None => ("Filesystem", "1Gi".to_string()),
        };
        let mut container = json!({"name": "main", "image": "busybox"});
        if block.is_some() {
            container["volumeDevices"] = claims
                .iter()
                .map(|c| json!({"name": c, "devicePath": format!("/dev/{c}")}))
                .collect();
        }
        let sts = self
            .create(json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "replicas": nodes.len(), "serviceName": name,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
                    "volumeClaimTemplates": claims.iter().map(|c| json!({"metadata": {"name": c}, "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": mode, "resources": {"requests": {"storage": size}}}})).collect::<Vec<_>>(),
                },
            }))
            .await;
        let uid = sts["metadata"]["uid"].as_str().unwrap().to_string();
        let mut pods = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let pod_name = format!("{name}-{i}");
            let mut volumes = Vec::new();
            for claim in claims {
                let claim_name = format!("{claim}-{pod_name}");
                self.local_claim_with(ns, &claim_name, name, node, block)
                    .await;
                volumes.push(
                    json!({"name": claim, "persistentVolumeClaim": {"claimName": claim_name}}),
                );
            }
            let pod = self
                .create(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod_name, "namespace": ns, "labels": {"app": name},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name, "uid": uid, "controller": true}]},
                    "spec": {"containers": [{"name": "main", "image": "busybox"}], "volumes": volumes},
                }))
                .await;
            self.bind_pod(ns, &pod_name, node).await;
            let pod_uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
            for claim in claims {
                let pv = format!("pv-{ns}-{claim}-{pod_name}");
                match block {
                    Some(size) => {
                        let device = block::device(&self.kubelet, &pv, size);
                        block::publish(&self.kubelet, &pod_uid, &pv, &device);
                    }
                    None => std::fs::create_dir_all(self.volume_dir(&pod_uid, &pv)).unwrap(),
                }
            }
            self.mark_ready(ns, &pod_name).await;
            pods.push(pod);
        }
        pods
    }

    /// Plays the provisioner and binder: claim `claim` (labelled `app: <app>`) bound to a new
    /// node-local volume on `node`; returns the volume's name.
    async fn local_claim(&self, ns: &str, claim: &str, app: &str, node: &str) -> String {
        self.local_claim_with(ns, claim, app, node, None).await
    }

    /// [`Self::local_claim`]; a block claim (and volume) of `block` bytes when given.
    async fn local_claim_with(
        &self,
        ns: &str,
        claim: &str,
        app: &str,
        node: &str,
        block: Option<u64>,
    ) -> String {
        let pv = format!("pv-{ns}-{claim}");
        let (mode, size) = match block {
            Some(b) => ("Block", format!("{}Mi", b >> 20)),
            None => ("Filesystem", "1Gi".to_string()),
        };
        self.create(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "volumeMode": mode,
                "csi": {"driver": "rig.csi.example.com", "volumeHandle": pv},
                "claimRef": {"namespace": ns, "name": claim},
                // A node-local disk: any pod that mounts it runs on this node.
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
        }))
        .await;
        self.create(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": ns, "labels": {"app": app}},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": mode, "resources": {"requests": {"storage": size}}, "volumeName": pv},
        }))
        .await;
        self.patch_status(
            "v1",
            "PersistentVolumeClaim",
            Some(ns),
            claim,
            json!({"status": {"phase": "Bound"}}),
        )
        .await;
        pv
    }

    /// A Deployment with one replica whose pod mounts claim `claim` on `node` (the rig as
    /// Deployment controller, scheduler and kubelet); returns the claim's mount directory.
    pub async fn deployment(&self, ns: &str, name: &str, claim: &str, node: &str) -> PathBuf {
        let deployment = self
            .create(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": {
                        "containers": [{"name": "main", "image": "busybox"}],
                        // Volumes a failover must carry over exactly as they are.
                        "volumes": [
                            {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                            {"name": "config", "configMap": {"name": format!("{name}-config")}},
                            {"name": "scratch", "emptyDir": {}},
                        ],
                    }},
                },
            }))
            .await;
        let pv = self.local_claim(ns, claim, name, node).await;
        let pod_name = format!("{name}-0");
        let pod = self
            .create(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": ns, "labels": {"app": name},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                        "uid": deployment["metadata"]["uid"], "controller": true}]},
                "spec": {"containers": [{"name": "main", "image": "busybox"}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
            }))
            .await;
        self.bind_pod(ns, &pod_name, node).await;
        let dir = self.volume_dir(pod["metadata"]["uid"].as_str().unwrap(), &pv);
        std::fs::create_dir_all(&dir).unwrap();
        self.mark_ready(ns, &pod_name).await;
        dir
    }

    /// Where the kubelet mounts a CSI volume of a pod.
    pub fn volume_dir(&self, pod_uid: &str, pv: &str) -> PathBuf {
        self.kubelet
            .join("pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~csi")
            .join(pv)
            .join("mount")
    }

    /// Plays the scheduler: POST pods/binding.
    pub async fn bind_pod(&self, ns: &str, pod: &str, node: &str) {
        self.try_bind_pod(ns, pod, node).await.expect("bind pod");
    }

    pub async fn try_bind_pod(&self, ns: &str, pod: &str, node: &str) -> Result<(), kube::Error> {
        let client = self.client();
        let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{pod}/binding"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}})).unwrap())
            .unwrap();
        client.request_text(req).await.map(|_| ())
    }

    /// Plays the kubelet: the pod is Running and Ready.
    pub async fn mark_ready(&self, ns: &str, pod: &str) {
        self.try_mark_ready(ns, pod)
            .await
            .unwrap_or_else(|e| panic!("mark pod {pod} Ready: {e}"));
    }

    pub async fn try_mark_ready(&self, ns: &str, pod: &str) -> Result<(), kube::Error> {
        self.try_patch_status(
            "v1",
            "Pod",
            Some(ns),
            pod,
            json!({"status": {"phase": "Running", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null},
                {"type": "Ready", "status": "True", "lastProbeTime": null},
                {"type": "ContainersReady", "status": "True", "lastProbeTime": null},
            ]}}),
        )
        .await
    }

    pub async fn patch_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        patch: Value,
    ) {
        self.try_patch_status(api_version, kind, ns, name, patch)
            .await
            .unwrap_or_else(|e| panic!("patch status of {kind} {name}: {e}"));
    }

    pub async fn try_patch_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<(), kube::Error> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
        let ar = kube::core::ApiResource::from_gvk_with_plural(&gvk, &plural_of(kind));
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.client(), ns, &ar),
            None => Api::all_with(self.client(), &ar),
        };
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }
}

/// The zone a pod's required node affinity pins it to, as the operator writes it.
pub fn zone_of(spec: &k8s_openapi::api::core::v1::PodSpec) -> Option<String> {
    serde_json::to_value(&spec.affinity).ok().and_then(|a| {
        a.pointer("/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/0/values/0")
            .and_then(|z| z.as_str().map(String::from))
    })
}

pub fn plural_of(kind: &str) -> String {
    let lower = kind.to_lowercase();
    if lower.ends_with('s') {
        format!("{lower}es")
    } else if lower.ends_with('y') {
        format!("{}ies", &lower[..lower.len() - 1])
    } else {
        format!("{lower}s")
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
