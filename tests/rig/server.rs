//! An in-process API server speaking enough of the Kubernetes HTTP API for the real
//! `kube::Client` and kube-runtime watchers: discovery, CRUD, status subresources, watches with
//! bookmarks and 410 Gone, selectors, finalizers, ownerReference cascade, merge / JSON /
//! server-side apply patches, CRD schema defaults, enum checks and CEL admission.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::authz;
use super::fields::{self, Scope};
use super::resources::{ResourceType, builtins};
use super::selector::{FieldSelector, LabelSelector};

/// One change, as watchers see it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: String,
    pub namespace: Option<String>,
    pub kind: &'static str,
    pub object: Value,
    /// The object before a modification (to compute selector transitions).
    pub previous: Option<Value>,
}

pub struct State {
    pub resources: Vec<ResourceType>,
    /// resource key → (namespace, name) → object
    pub objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    pub rv: u64,
    pub log: VecDeque<Arc<Change>>,
    /// Exact lists and continue tokens older than this are answered with 410 Expired (etcd
    /// compaction).
    pub floor: u64,
    /// Watches from before this are answered with 410 Expired (the watch cache's window), per
    /// resource: a CRD's watch cache starts when the CRD is created.
    pub watch_floor: BTreeMap<String, u64>,
    pub uid_counter: u64,
    /// Each API server's uids differ from another's (two rigs are two clusters, as their
    /// kube-system namespaces' uids tell apart).
    pub uid_prefix: u32,
    pub bookmark_interval: Duration,
    /// Watches answered with 410 Expired.
    pub expired_watches: u64,
    /// Count of requests by (method, resource), for tests that bound API traffic.
    pub requests: BTreeMap<(String, String), u64>,
    /// Count of requests by who sent them and what RBAC saw them ask, for tests that state
    /// what a component's work costs.
    pub calls: BTreeMap<authz::Call, u64>,
    /// Every pods/exec the rig ran.
    pub execs: Vec<super::exec::ExecRecord>,
    /// Tokens, identities and what RBAC denied.
    pub auth: authz::Auth,
    /// Who sent the request being handled (admission policies look at it).
    pub current_user: Option<authz::Identity>,
    /// Execs whose client went away before the command ended (the command was killed).
    pub execs_killed: u64,
    /// Every KubeVirt guest freeze and unfreeze asked of the rig, in order.
    pub guest_freezes: Vec<super::kubevirt::GuestFreeze>,
    /// Status writes of this resource plural are applied, reported here, and then never
    /// answered: the writer is stopped right after its write, at a point the test chooses.
    pub pause_status_writes: Option<(String, tokio::sync::mpsc::UnboundedSender<Value>)>,
}

pub type Shared = Arc<(Mutex<State>, broadcast::Sender<Arc<Change>>)>;

pub fn new_state() -> Shared {
    let (tx, _) = broadcast::channel(16384);
    Arc::new((
        Mutex::new(State {
            resources: builtins(),
            objects: BTreeMap::new(),
            execs: Vec::new(),
            execs_killed: 0,
            guest_freezes: Vec::new(),
            pause_status_writes: None,
            rv: 100,
            log: VecDeque::new(),
            floor: 0,
            watch_floor: BTreeMap::new(),
            expired_watches: 0,
            uid_counter: 0,
            uid_prefix: rand::random(),
            bookmark_interval: Duration::from_secs(2),
            requests: BTreeMap::new(),
            calls: BTreeMap::new(),
            current_user: None,
            auth: authz::Auth {
                tokens: [super::ADMIN_TOKEN, "rig"]
                    .into_iter()
                    .map(|t| (t.to_string(), authz::Identity::admin()))
                    .collect(),
                ..Default::default()
            },
        }),
        tx,
    ))
}

/// Storage key of a resource type. events.k8s.io Events and core Events are one resource,
/// seen through two API groups.
fn key(r: &ResourceType) -> String {
    if r.group == "events.k8s.io" {
        return "/events".into();
    }
    format!("{}/{}", r.group, r.plural)
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub struct Reply(pub StatusCode, pub Value);

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (
            self.0,
            [("content-type", "application/json")],
            self.1.to_string(),
        )
            .into_response()
    }
}

pub fn status_error(code: u16, reason: &str, message: String, details: Value) -> Reply {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if !details.is_null() {
        body["details"] = details;
    }
    Reply(StatusCode::from_u16(code).unwrap(), body)
}

/// Status details naming an object; core resources carry no group.
fn details(r: &ResourceType, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": r.plural});
    if !r.group.is_empty() {
        d["group"] = json!(r.group);
    }
    d
}

fn not_found(r: &ResourceType, name: &str) -> Reply {
    status_error(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", r.qualified()),
        details(r, name),
    )
}

fn conflict(r: &ResourceType, name: &str) -> Reply {
    status_error(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            r.qualified()
        ),
        details(r, name),
    )
}

fn bad_request(message: String) -> Reply {
    status_error(400, "BadRequest", message, Value::Null)
}

/// Where a request goes.
struct Target {
    resource: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Discovery(Value),
    Resource(Box<Target>),
}

fn route(state: &State, path: &str) -> Result<Route, Reply> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => {
            return Ok(Route::Discovery(
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-rig", "platform": "linux/amd64"}),
            ));
        }
        ["api"] => {
            return Ok(Route::Discovery(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            ));
        }
        ["apis"] => {
            let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for r in state.resources.iter().filter(|r| !r.group.is_empty()) {
                let versions = groups.entry(&r.group).or_default();
                if !versions.contains(&r.version.as_str()) {
                    versions.push(&r.version);
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(g, vs)| {
                    let versions: Vec<Value> = vs
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
                })
                .collect();
            return Ok(Route::Discovery(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ));
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Err(status_error(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                json!({}),
            ));
        }
    };
    if rest.is_empty() {
        let list: Vec<Value> = state
            .resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .flat_map(|r| r.discovery())
            .collect();
        if list.is_empty() {
            return Err(status_error(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                json!({}),
            ));
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        return Ok(Route::Discovery(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
        ));
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..]
            if group.is_empty() || !state.resources.iter().any(|r| r.plural == *ns) =>
        {
            let mut v = vec![*plural];
            v.extend_from_slice(more);
            (Some(ns.to_string()), v)
        }
        other => (None, other.to_vec()),
    };
    let find = |plural: &str| {
        state
            .resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    };
    let not_found = || {
        status_error(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!({}),
        )
    };
    let resource = find(rest[0]).ok_or_else(not_found)?;
    Ok(Route::Resource(Box::new(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })))
}

fn query_map(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .map(|q| {
            q.split('&')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| {
                std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .flatten();
        match (hex, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The field manager of a write: `fieldManager`, else the User-Agent's product name.
fn manager(query: &BTreeMap<String, String>, headers: &HeaderMap) -> String {
    query.get("fieldManager").cloned().unwrap_or_else(|| {
        headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .unwrap_or("unknown")
            .to_string()
    })
}

fn wants_metadata_only(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

fn as_metadata(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
}

/// Every request: pods/exec upgrades go to the exec handler, the rest to [`handle`].
pub async fn entry(
    axum::extract::State(shared): axum::extract::State<Shared>,
    req: axum::http::Request<axum::body::Body>,
) -> Response {
    let exec = super::exec::is_exec(&req);
    let freeze = super::kubevirt::is_freeze(&req);
    if let Err(denied) = authorize(&shared, &req, exec.as_ref(), freeze.as_ref()) {
        return denied.into_response();
    }
    if let Some((ns, pod)) = exec {
        return super::exec::exec(shared, ns, pod, req).await;
    }
    if let Some(target) = freeze {
        return super::kubevirt::freeze(shared, target, req).await;
    }
    let pause = status_write_pause(&shared, req.method(), req.uri().path());
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return status_error(
                400,
                "BadRequest",
                format!("reading the body: {e}"),
                Value::Null,
            )
            .into_response();
        }
    };
    let response = handle(
        axum::extract::State(shared),
        parts.method,
        parts.uri,
        parts.headers,
        body,
    )
    .await;
    if let Some(tx) = pause
        && response.status().is_success()
    {
        let _ = tx.send(Value::Null);
        // The write is applied; its writer never hears so (until its connection goes).
        std::future::pending::<()>().await;
    }
    response
}

/// The channel to report a status write to, when status writes of its resource are paused.
fn status_write_pause(
    shared: &Shared,
    method: &Method,
    path: &str,
) -> Option<tokio::sync::mpsc::UnboundedSender<Value>> {
    if *method != Method::PATCH && *method != Method::PUT {
        return None;
    }
    let state = shared.0.lock().unwrap();
    let (plural, tx) = state.pause_status_writes.as_ref()?;
    let parts: Vec<&str> = path.trim_end_matches('/').rsplitn(3, '/').collect();
    (parts.len() == 3 && parts[0] == "status" && parts[2].ends_with(&format!("/{plural}")))
        .then(|| tx.clone())
}

/// Authenticates the request's bearer token and authorizes what it asks as RBAC would.
fn authorize(
    shared: &Shared,
    req: &axum::http::Request<axum::body::Body>,
    exec: Option<&(String, String)>,
    freeze: Option<&super::kubevirt::FreezeTarget>,
) -> Result<(), Reply> {
    let mut state = shared.0.lock().unwrap();
    let who = authz::authenticate(&state.auth, req.headers())?;
    let query = query_map(req.uri());
    let attributes = match (exec, freeze) {
        (_, Some(t)) => authz::Attributes {
            verb: authz::verb(req.method(), true, false).into(),
            group: "subresources.kubevirt.io".into(),
            resource: "virtualmachineinstances".into(),
            subresource: Some(t.op.clone()),
            namespace: Some(t.namespace.clone()),
            name: Some(t.name.clone()),
            path: None,
        },
        (Some((ns, pod)), None) => authz::Attributes {
            verb: "create".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: Some("exec".into()),
            namespace: Some(ns.clone()),
            name: Some(pod.clone()),
            path: None,
        },
        (None, None) => match route(&state, req.uri().path()) {
            // Not found is not a secret: the route's own error answers it.
            Err(_) => return Ok(()),
            Ok(Route::Discovery(_)) => authz::Attributes {
                verb: "get".into(),
                group: String::new(),
                resource: String::new(),
                subresource: None,
                namespace: None,
                name: None,
                path: Some(req.uri().path().to_string()),
            },
            Ok(Route::Resource(t)) => {
                let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
                // A list or watch of one object by name is authorized for that name.
                let by_field = query
                    .get("fieldSelector")
                    .and_then(|f| f.strip_prefix("metadata.name="))
                    .filter(|n| !n.contains(','))
                    .map(String::from);
                authz::Attributes {
                    verb: authz::verb(req.method(), t.name.is_some(), watch).into(),
                    group: t.resource.group.clone(),
                    resource: t.resource.plural.clone(),
                    subresource: t.sub.clone(),
                    namespace: if t.resource.namespaced {
                        t.namespace.clone()
                    } else {
                        None
                    },
                    name: t.name.clone().or(by_field),
                    path: None,
                }
            }
        },
    };
    *state
        .calls
        .entry(authz::Call::of(&who, &attributes))
        .or_default() += 1;
    if authz::allowed(&state, &who, &attributes) {
        return Ok(());
    }
    let reply = authz::forbidden(&who, &attributes);
    let message = reply.1["message"].as_str().unwrap_or_default().to_string();
    state.auth.denied.push((who.user.clone(), message));
    Err(reply)
}

pub async fn handle(
    axum::extract::State(shared): axum::extract::State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query_map(&uri);
    let route = {
        let mut state = shared.0.lock().unwrap();
        let r = route(&state, uri.path());
        if let Ok(Route::Resource(t)) = &r {
            *state
                .requests
                .entry((method.to_string(), t.resource.plural.clone()))
                .or_default() += 1;
        }
        r
    };
    let target = match route {
        Err(reply) => return reply.into_response(),
        Ok(Route::Discovery(v)) => return Reply(StatusCode::OK, v).into_response(),
        Ok(Route::Resource(t)) => *t,
    };
    if method == Method::GET
        && target.name.is_none()
        && query.get("watch").is_some_and(|w| w == "true" || w == "1")
    {
        return watch(shared, target, query, wants_metadata_only(&headers)).await;
    }
    let mut state = shared.0.lock().unwrap();
    state.current_user = authz::authenticate(&state.auth, &headers).ok();
    let tx = shared.1.clone();
    let reply = match (method.clone(), &target.name, target.sub.as_deref()) {
        (Method::GET, None, _) => list(&state, &target, &query, wants_metadata_only(&headers)),
        (Method::GET, Some(name), sub) => match state.get(&target, name) {
            Some(obj) if sub.is_none() || sub == Some("status") => Reply(
                StatusCode::OK,
                if wants_metadata_only(&headers) {
                    as_metadata(&obj)
                } else {
                    obj
                },
            ),
            Some(_) => bad_request(format!("unsupported subresource {sub:?}")),
            None => not_found(&target.resource, name),
        },
        (Method::POST, None, _) => match parse_body(&body, &headers) {
            Ok(obj) => state.create(
                &tx,
                &target,
                obj,
                &manager(&query, &headers),
                query.contains_key("dryRun"),
            ),
            Err(r) => r,
        },
        (Method::POST, Some(name), Some("binding")) if target.resource.plural == "pods" => {
            match parse_body(&body, &headers) {
                Ok(binding) => state.bind(&tx, &target, name, &binding),
                Err(r) => r,
            }
        }
        (Method::PUT, Some(name), sub) => match parse_body(&body, &headers) {
            Ok(obj) => state.update(&tx, &target, name, sub, obj, &manager(&query, &headers)),
            Err(r) => r,
        },
        (Method::PATCH, Some(name), sub) => {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            state.patch(
                &tx,
                &target,
                name,
                sub,
                &ct,
                &body,
                &query,
                &manager(&query, &headers),
            )
        }
        (Method::DELETE, Some(name), None) => state.delete(&tx, &target, name),
        _ => status_error(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
            json!({}),
        ),
    };
    reply.into_response()
}

fn parse_body(body: &Bytes, headers: &HeaderMap) -> Result<Value, Reply> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("yaml") {
        serde_saphyr::from_slice(body).map_err(|e| bad_request(format!("invalid YAML body: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
    }
}

fn list(state: &State, t: &Target, query: &BTreeMap<String, String>, metadata_only: bool) -> Reply {
    let labels =
        match LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
            Ok(s) => s,
            Err(e) => return bad_request(e),
        };
    let fields =
        match FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or("")) {
            Ok(s) => s,
            Err(e) => return bad_request(e),
        };
    if query.get("resourceVersionMatch").map(String::as_str) == Some("Exact")
        && let Some(rv) = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
        && rv < state.floor
    {
        return status_error(
            410,
            "Expired",
            "The resourceVersion for the provided list is too old.".to_string(),
            Value::Null,
        );
    }
    let mut start = String::new();
    if let Some(token) = query.get("continue").filter(|c| !c.is_empty()) {
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let Some(decoded) = decoded else {
            return bad_request("continue key is not valid".into());
        };
        let rv = decoded["rv"].as_i64().unwrap_or(0);
        start = decoded["start"].as_str().unwrap_or_default().to_string();
        if rv >= 0 && (rv as u64) < state.floor {
            let fresh = continue_token(-1, &start);
            let mut reply = status_error(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into(), Value::Null);
            reply.1["metadata"] = json!({"continue": fresh});
            return reply;
        }
    }
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    // From the continue token's key on, in key order; only the page's objects are copied.
    let from = if start.is_empty() {
        Default::default()
    } else {
        match start.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => return bad_request("continue key is not valid".into()),
        }
    };
    let selected = query.get("labelSelector").is_some_and(|s| !s.is_empty())
        || query.get("fieldSelector").is_some_and(|s| !s.is_empty());
    let empty = BTreeMap::new();
    let mut matching = state
        .objects
        .get(&key(&t.resource))
        .unwrap_or(&empty)
        .range(from..)
        .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
        .map(|(_, o)| o)
        .filter(|o| labels.matches(o) && fields.matches(o));
    let mut metadata = json!({"resourceVersion": state.rv.to_string()});
    let page: Vec<Value> = match limit {
        Some(limit) => {
            let page: Vec<Value> = matching.by_ref().take(limit).cloned().collect();
            if let Some(next) = matching.next() {
                let next_key = format!(
                    "{}/{}",
                    next["metadata"]["namespace"].as_str().unwrap_or(""),
                    next["metadata"]["name"].as_str().unwrap_or("")
                );
                metadata["continue"] = json!(continue_token(state.rv as i64, &next_key));
                // Only an unselected list knows how many remain (as the API server).
                if !selected {
                    metadata["remainingItemCount"] = json!(1 + matching.count());
                }
            } else if t.resource.custom {
                metadata["continue"] = json!("");
            }
            page
        }
        None => {
            if t.resource.custom {
                metadata["continue"] = json!("");
            }
            matching.cloned().collect()
        }
    };
    let (kind, api_version, page) = if metadata_only {
        (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
            page.iter().map(as_metadata).collect(),
        )
    } else {
        (
            format!("{}List", t.resource.kind),
            t.resource.api_version(),
            page,
        )
    };
    Reply(
        StatusCode::OK,
        json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": page}),
    )
}

fn continue_token(rv: i64, start: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).to_string())
}

/// Drops the fields of `v` that CRD schemas never validate (server-owned metadata).
fn strip_volatile(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for k in [
            "resourceVersion",
            "managedFields",
            "generation",
            "uid",
            "creationTimestamp",
        ] {
            meta.remove(k);
        }
    }
    v
}

/// Compares everything but metadata and status: a change here bumps `generation`.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

impl State {
    fn get(&self, t: &Target, name: &str) -> Option<Value> {
        let ns = if t.resource.namespaced {
            t.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        };
        self.objects
            .get(&key(&t.resource))
            .and_then(|m| m.get(&(ns, name.to_string())))
            .cloned()
    }

    fn ns_of(&self, t: &Target) -> String {
        if t.resource.namespaced {
            t.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        }
    }

    /// Writes an object under a new resourceVersion and tells watchers: ADDED, or MODIFIED
    /// when `previous` is given.
    fn store(
        &mut self,
        tx: &broadcast::Sender<Arc<Change>>,
        r: &ResourceType,
        at: (String, String),
        mut obj: Value,
        previous: Option<Value>,
    ) -> Value {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects
            .entry(key(r))
            .or_default()
            .insert(at, obj.clone());
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.emit(tx, r, kind, obj.clone(), previous);
        obj
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(
        &mut self,
        tx: &broadcast::Sender<Arc<Change>>,
        r: &ResourceType,
        kind: &'static str,
        object: Value,
        previous: Option<Value>,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            resource: key(r),
            namespace: object["metadata"]["namespace"].as_str().map(String::from),
            kind,
            object,
            previous,
        });
        self.log.push_back(change.clone());
        while self.log.len() > 20000 {
            if let Some(old) = self.log.pop_front() {
                let floor = self.watch_floor.entry(old.resource.clone()).or_default();
                *floor = (*floor).max(old.rv);
            }
        }
        let _ = tx.send(change);
    }

    /// An etcd compaction: exact lists and continue tokens from before now get 410; watches are
    /// still served from the watch cache.
    pub fn compact(&mut self) {
        self.floor = self.rv;
    }

    /// The watch cache forgets its history (as after an API server restart): open watches
    /// end, and watches from before now get 410 Expired.
    pub fn expire_watch_cache(&mut self, tx: &broadcast::Sender<Arc<Change>>) {
        for r in &self.resources {
            self.watch_floor.insert(key(r), self.rv);
        }
        self.log.clear();
        let _ = tx.send(Arc::new(Change {
            rv: u64::MAX,
            resource: String::new(),
            namespace: None,
            kind: "RESET",
            object: Value::Null,
            previous: None,
        }));
    }

    /// Applies CRD defaults and validates; returns the Status to send on failure.
    /// Schema, CEL and built-in checks, then the admission policies that apply to the sender.
    fn admit(
        &self,
        r: &ResourceType,
        sub: Option<&str>,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), Reply> {
        self.admit_schema(r, obj, old)?;
        match &self.current_user {
            Some(who) => super::policy::admit(self, who, r, sub, obj, old),
            None => Ok(()),
        }
    }

    fn admit_schema(
        &self,
        r: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), Reply> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut causes = Vec::new();
        let Some(schema) = &r.schema else {
            builtin_errors(r, obj, &mut causes);
            return invalid(r, &name, causes);
        };
        *obj = kube::core::cel::apply_defaults(schema, obj);
        schema_errors(schema, obj, "", &mut causes);
        if !causes.is_empty() {
            if has_rules(schema) {
                causes.push(json!({"reason": "FieldValueInvalid", "message": "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation", "field": "<nil>"}));
            }
        } else {
            let old = old.map(|o| strip_volatile(o.clone()));
            if let Err(errors) = kube::core::cel::Validator::new().validate(
                schema,
                &strip_volatile(obj.clone()),
                old.as_ref(),
            ) {
                for e in errors.into_vec() {
                    let field = if e.field_path.is_empty() {
                        "<nil>".to_string()
                    } else {
                        e.field_path.clone()
                    };
                    causes.push(json!({"reason": e.reason.clone().unwrap_or_else(|| "FieldValueInvalid".into()), "message": format!("Invalid value: {}", e.message), "field": field}));
                }
            }
        }
        invalid(r, &name, causes)
    }

    fn create(
        &mut self,
        tx: &broadcast::Sender<Arc<Change>>,
        t: &Target,
        mut obj: Value,
        manager: &str,
        dry_run: bool,
    ) -> Reply {
        let r = &t.resource;
        let ns = self.ns_of(t);
        if obj["metadata"]["name"].as_str().unwrap_or("").is_empty() {
            match obj["metadata"]["generateName"].as_str() {
                Some(prefix) => {
                    self.uid_counter += 1;
                    obj["metadata"]["name"] = json!(format!("{prefix}{:05x}", self.uid_counter));
                }
                None => {
                    return status_error(
                        422,
                        "Invalid",
                        format!(
                            "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                            r.qualified_kind()
                        ),
                        json!({"group": r.group, "kind": r.kind, "causes": [{"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"}]}),
                    );
                }
            }
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if r.namespaced {
            if !self
                .objects
                .get("/namespaces")
                .is_some_and(|m| m.contains_key(&(String::new(), ns.clone())))
            {
                return status_error(
                    404,
                    "NotFound",
                    format!("namespaces \"{ns}\" not found"),
                    json!({"name": ns, "kind": "namespaces"}),
                );
            }
            obj["metadata"]["namespace"] = json!(ns);
        }
        if self.get(t, &name).is_some() {
            return status_error(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", r.qualified()),
                json!({"name": name, "group": r.group, "kind": r.plural}),
            );
        }
        if r.status_subresource
            && r.custom
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if let Err(reply) = self.admit(r, None, &mut obj, None) {
            return reply;
        }
        obj["apiVersion"] = json!(r.api_version());
        obj["kind"] = json!(r.kind);
        self.uid_counter += 1;
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        meta.insert(
            "uid".into(),
            json!(format!(
                "{:08x}-0000-4000-8000-{:012x}",
                self.uid_prefix, self.uid_counter
            )),
        );
        meta.insert("creationTimestamp".into(), json!(now()));
        if has_generation(r) {
            meta.insert("generation".into(), json!(1));
        }
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        fields::record_update(
            None,
            &mut obj,
            manager,
            Scope::Main {
                status_is_subresource: r.status_subresource,
            },
            &r.api_version(),
            &now(),
        );
        if dry_run {
            return Reply(StatusCode::CREATED, obj);
        }
        if r.plural == "customresourcedefinitions" {
            self.register_crd(&mut obj);
        }
        if r.group.is_empty()
            && (r.plural == "persistentvolumes" || r.plural == "persistentvolumeclaims")
        {
            // As the storage-object-in-use-protection admission plugin does.
            let finalizer = if r.plural == "persistentvolumes" {
                "kubernetes.io/pv-protection"
            } else {
                "kubernetes.io/pvc-protection"
            };
            let finalizers = obj["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !finalizers.iter().any(|f| f == finalizer) {
                let mut finalizers = finalizers;
                finalizers.push(json!(finalizer));
                obj["metadata"]["finalizers"] = json!(finalizers);
            }
        }
        if r.plural == "nodes" {
            // As the node lifecycle controller does until a kubelet reports Ready.
            if obj.pointer("/spec/taints").is_none() {
                obj["spec"]["taints"] =
                    json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]);
            }
        }
        let obj = self.store(tx, r, (ns, name), obj, None);
        Reply(StatusCode::CREATED, obj)
    }

    fn register_crd(&mut self, crd: &mut Value) {
        for r in ResourceType::from_crd(crd) {
            // The watch cache of a new resource starts at the CRD's own revision.
            self.watch_floor.insert(key(&r), self.rv + 1);
            self.resources.retain(|x| {
                !(x.group == r.group && x.version == r.version && x.plural == r.plural)
            });
            self.resources.push(r);
        }
        crd["status"] = json!({
            "acceptedNames": crd["spec"]["names"],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
            ],
            "storedVersions": [crd["spec"]["versions"][0]["name"]],
        });
    }

    /// Stores `new` in place of `old` (same key), handling generation, no-ops, finalizers.
    fn commit(
        &mut self,
        tx: &broadcast::Sender<Arc<Change>>,
        t: &Target,
        old: Value,
        mut new: Value,
    ) -> Reply {
        let r = &t.resource;
        let name = old["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = self.ns_of(t);
        // Server-owned metadata survives any write.
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generation",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        new["apiVersion"] = json!(r.api_version());
        new["kind"] = json!(r.kind);
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if has_generation(r) && spec_part(&old) != spec_part(&new) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        if old["metadata"].get("deletionTimestamp").is_some()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty())
        {
            // The last finalizer is gone: the object goes, the writer gets its final state, and
            // watchers see DELETED with the content before this write.
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("finalizers");
            }
            self.remove(tx, t, &old);
            return Reply(StatusCode::OK, new);
        }
        let mut cmp_old = old.clone();
        let mut cmp_new = new.clone();
        for v in [&mut cmp_old, &mut cmp_new] {
            if let Some(m) = v["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
        }
        if cmp_old == cmp_new {
            return Reply(StatusCode::OK, old);
        }
        let new = self.store(tx, r, (ns, name), new, Some(old));
        Reply(StatusCode::OK, new)
    }

    fn update(
        &mut self,
        tx: &broadcast::Sender<Arc<Change>>,
        t: &Target,
        name: &str,
        sub: Option<&str>,
        body: Value,
        manager: &str,
    ) -> Reply {
        let r = &t.resource;
        let Some(old) = self.get(t, name) else {
            return not_found(r, name);
        };
        if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
            && !rv.is_empty()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return conflict(r, name);
        }
        let new = self.merge_scoped(r, &old, body, sub);
        self.finish_write(tx, t, old, new, sub, manager)
    }

    /// The object a write of `body` on `sub` produces: a main write keeps status, a status
    /// write keeps everything but status.
    fn merge_scoped(
        &self,
        r: &ResourceType,
        old: &Value,
        mut body: Value,
        sub: Option<&str>,
    ) -> Value {
        match sub {
            Some("status") => {
                let mut new = old.clone();
                new["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                if new["status"].is_null() {
                    new.as_object_mut().unwrap().remove("status");
                }
                new
            }
            _ => {
                if r.status_subresource {
                    match old.get("status") {
                        Some(s) => body["status"] = s.clone(),
                        None => {
                            body.as_object_mut().map(|m| m.remove("status"));
                        }
                    }
                }
                body
            }
        }
    }

    fn finish_write(
        &mut self,
        tx: &broadcast::Sender<Arc<Change>>,
        t: &Target,
        old: Value,
        mut new: Value,
        sub: Option<&str>,
        manager: &str,
    ) -> Reply {
        let r = &t.resource;
        if let Err(reply) = self.admit(r, sub, &mut new, Some(&old)) {
            return reply;
        }
        let scope = scope_of(r, sub);
        fields::record_update(
            Some(&old),
            &mut new,
            manager,
            scope,
            &r.api_version(),
            &now(),
        );
        self.commit(tx, t, old, new)
    }

    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        tx: &broadcast::Sender<Arc<Change>>,
        t: &Target,
        name: &str,
        sub: Option<&str>,
        content_type: &str,
        body: &Bytes,
        query: &BTreeMap<String, String>,
        manager: &str,
    ) -> Reply {
        let r = &t.resource;
        let old = self.get(t, name);
        if content_type.starts_with("application/apply-patch") {
            let config: Value = match serde_saphyr::from_slice(body) {
                Ok(v) => v,
                Err(e) => return bad_request(format!("invalid apply patch: {e}")),
            };
            if !query.contains_key("fieldManager") {
                return status_error(
                    400,
                    "BadRequest",
                    "PATCH, application/apply-patch+yaml requires fieldManager to be set".into(),
                    Value::Null,
                );
            }
            let force = query.get("force").is_some_and(|f| f == "true");
            let scope = scope_of(r, sub);
            let applied = fields::apply(
                old.as_ref(),
                &config,
                manager,
                force,
                scope,
                &r.api_version(),
                &now(),
            );
            return match applied {
                Err(conflicts) => {
                    let n = conflicts.len();
                    let describe = |c: &fields::Conflict| {
                        if c.operation == "Update" {
                            format!("conflict with \"{}\" using {}", c.manager, c.api_version)
                        } else {
                            format!("conflict with \"{}\"", c.manager)
                        }
                    };
                    let lines: Vec<String> = conflicts
                        .iter()
                        .map(|c| format!("{}: .{}", describe(c), c.path.join(".")))
                        .collect();
                    let causes: Vec<Value> = conflicts.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": describe(c), "field": format!(".{}", c.path.join("."))})).collect();
                    status_error(
                        409,
                        "Conflict",
                        format!(
                            "Apply failed with {n} conflict{}: {}",
                            if n == 1 { "" } else { "s" },
                            lines.join("\n")
                        ),
                        json!({"causes": causes}),
                    )
                }
                Ok(mut new) => match old {
                    None => {
                        if sub.is_some() {
                            return not_found(r, name);
                        }
                        new["metadata"]["name"] = json!(name);
                        let entries = fields::read_entries(&new);
                        let mut reply = self.create(tx, t, new, manager, false);
                        if reply.0 == StatusCode::CREATED {
                            // create() records its own Update entry; an apply-create is an Apply.
                            let ns = self.ns_of(t);
                            let stored = self
                                .objects
                                .get_mut(&key(r))
                                .and_then(|m| m.get_mut(&(ns, name.to_string())));
                            if let Some(stored) = stored {
                                fields::write_entries(stored, &entries);
                                reply.1 = stored.clone();
                            }
                        }
                        reply
                    }
                    Some(old) => {
                        if let Err(reply) = self.admit(r, sub, &mut new, Some(&old)) {
                            return reply;
                        }
                        self.commit(tx, t, old, new)
                    }
                },
            };
        }
        let Some(old) = old else {
            return not_found(r, name);
        };
        let patched = if content_type.starts_with("application/json-patch") {
            let ops: json_patch::Patch = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => return bad_request(format!("invalid JSON patch: {e}")),
            };
            let mut doc = old.clone();
            if json_patch::patch(&mut doc, &ops).is_err() {
                return status_error(
                    422,
                    "Invalid",
                    "the server rejected our request due to an error in our request".into(),
                    json!({}),
                );
            }
            doc
        } else {
            // merge-patch and strategic-merge-patch (treated as a merge patch: lists replace)
            let p: Value = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => return bad_request(format!("invalid merge patch: {e}")),
            };
            let mut doc = old.clone();
            json_patch::merge(&mut doc, &p);
            doc
        };
        if let Some(rv) = patched["metadata"]["resourceVersion"].as_str()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return conflict(r, name);
        }
        let new = self.merge_scoped(r, &old, patched, sub);
        self.finish_write(tx, t, old, new, sub, manager)
    }

    fn delete(&mut self, tx: &broadcast::Sender<Arc<Change>>, t: &Target, name: &str) -> Reply {
        let r = &t.resource;
        let Some(old) = self.get(t, name) else {
            return not_found(r, name);
        };
        let has_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old["metadata"].get("deletionTimestamp").is_some() {
                return Reply(StatusCode::OK, old);
            }
            let mut new = old.clone();
            new["metadata"]["deletionTimestamp"] = json!(now());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if has_generation(r) {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                new["metadata"]["generation"] = json!(g + 1);
            }
            let ns = self.ns_of(t);
            let new = self.store(tx, r, (ns, name.to_string()), new, Some(old));
            return Reply(StatusCode::OK, new);
        }
        self.remove(tx, t, &old)
    }

    /// Removes an object for good, then (as the garbage collector does, in the background)
    /// everything whose only owner it was.
    fn remove(&mut self, tx: &broadcast::Sender<Arc<Change>>, t: &Target, old: &Value) -> Reply {
        let r = &t.resource;
        let name = old["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = self.ns_of(t);
        self.objects
            .entry(key(r))
            .or_default()
            .remove(&(ns, name.clone()));
        let mut gone = old.clone();
        let rv = self.next_rv();
        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.emit(tx, r, "DELETED", gone.clone(), None);
        let uid = old["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.collect_garbage(tx, &uid);
        if r.custom {
            Reply(
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name, "group": r.group, "kind": r.plural, "uid": uid}}),
            )
        } else {
            Reply(StatusCode::OK, gone)
        }
    }

    fn collect_garbage(&mut self, tx: &broadcast::Sender<Arc<Change>>, owner_uid: &str) {
        let mut dependents = Vec::new();
        for (res_key, objects) in &self.objects {
            for ((ns, name), obj) in objects {
                let owners = obj["metadata"]["ownerReferences"].as_array();
                if owners.is_some_and(|o| {
                    !o.is_empty() && o.iter().all(|o| o["uid"].as_str() == Some(owner_uid))
                }) {
                    dependents.push((res_key.clone(), ns.clone(), name.clone()));
                }
            }
        }
        for (res_key, ns, name) in dependents {
            let Some(resource) = self.resources.iter().find(|r| key(r) == res_key).cloned() else {
                continue;
            };
            let t = Target {
                resource,
                namespace: Some(ns),
                name: Some(name.clone()),
                sub: None,
            };
            self.delete(tx, &t, &name);
        }
    }

    fn bind(
        &mut self,
        tx: &broadcast::Sender<Arc<Change>>,
        t: &Target,
        name: &str,
        binding: &Value,
    ) -> Reply {
        let Some(old) = self.get(t, name) else {
            return not_found(&t.resource, name);
        };
        let node = binding["target"]["name"].as_str().unwrap_or_default();
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        let mut conditions = new["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c["type"] != "PodScheduled");
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}));
        new["status"]["conditions"] = json!(conditions);
        self.commit(tx, t, old, new);
        Reply(
            StatusCode::CREATED,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }
}

/// Kinds whose spec changes bump `metadata.generation`.
fn has_generation(r: &ResourceType) -> bool {
    r.custom
        || r.group == "apps"
        || r.plural == "customresourcedefinitions"
        || (r.group.is_empty() && r.plural == "pods")
}

fn scope_of(r: &ResourceType, sub: Option<&str>) -> Scope {
    if sub == Some("status") {
        Scope::Status
    } else {
        Scope::Main {
            status_is_subresource: r.status_subresource,
        }
    }
}

fn has_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_rules),
        Value::Array(a) => a.iter().any(has_rules),
        _ => false,
    }
}

/// Structural checks the API server makes before CEL: enums, required fields, types, bounds.
fn schema_errors(schema: &Value, v: &Value, path: &str, out: &mut Vec<Value>) {
    let field = |p: &str| {
        if p.is_empty() {
            "<nil>".to_string()
        } else {
            p.to_string()
        }
    };
    if v.is_null() {
        return;
    }
    if let Some(values) = schema.get("enum").and_then(|e| e.as_array())
        && !values.contains(v)
    {
        let supported: Vec<String> = values.iter().map(|x| x.to_string()).collect();
        out.push(json!({"reason": "FieldValueNotSupported", "message": format!("Unsupported value: {v}: supported values: {}", supported.join(", ")), "field": field(path)}));
        return;
    }
    match (schema.get("type").and_then(|t| t.as_str()), v) {
        (Some("object"), Value::Object(m)) => {
            for req in schema
                .get("required")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
            {
                let req = req.as_str().unwrap_or_default();
                if !m.contains_key(req) {
                    let p = if path.is_empty() {
                        req.to_string()
                    } else {
                        format!("{path}.{req}")
                    };
                    out.push(json!({"reason": "FieldValueRequired", "message": "Required value", "field": p}));
                }
            }
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (k, child) in m {
                    if path.is_empty() && (k == "metadata" || k == "apiVersion" || k == "kind") {
                        continue;
                    }
                    if let Some(s) = props.get(k) {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        schema_errors(s, child, &p, out);
                    }
                }
            }
        }
        (Some("array"), Value::Array(items)) => {
            if let Some(max) = schema.get("maxItems").and_then(|m| m.as_u64())
                && items.len() as u64 > max
            {
                out.push(json!({"reason": "FieldValueTooMany", "message": format!("Too many: {}: must have at most {max} items", items.len()), "field": field(path)}));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    schema_errors(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        (Some("string"), Value::String(s)) => {
            if let Some(max) = schema.get("maxLength").and_then(|m| m.as_u64())
                && s.chars().count() as u64 > max
            {
                out.push(json!({"reason": "FieldValueTooLong", "message": format!("Too long: may not be more than {max} bytes"), "field": field(path)}));
            }
            if let Some(pattern) = schema.get("pattern").and_then(|p| p.as_str())
                && regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(s))
            {
                out.push(json!({"reason": "FieldValueInvalid", "message": format!("Invalid value: {}: {path} in body should match '{pattern}'", Value::String(s.clone())), "field": field(path)}));
            }
        }
        (Some("integer"), Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        (Some("number"), Value::Number(_)) | (Some("boolean"), Value::Bool(_)) => {}
        (Some(expected), other)
            if !(expected == "object"
                && schema.get("x-kubernetes-preserve-unknown-fields").is_some()) =>
        {
            let got = match other {
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "boolean",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
                Value::Null => "null",
            };
            out.push(json!({"reason": "FieldValueTypeInvalid", "message": format!("Invalid value: \"{got}\": {path} in body must be of type {expected}: \"{got}\""), "field": field(path)}));
        }
        _ => {}
    }
}

async fn watch(
    shared: Shared,
    t: Target,
    query: BTreeMap<String, String>,
    metadata_only: bool,
) -> Response {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .unwrap_or_default();
    let fields = FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .unwrap_or_default();
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let res_key = key(&t.resource);
    let ns_filter = if t.resource.namespaced {
        t.namespace.clone()
    } else {
        None
    };
    let matches = move |o: &Value| labels.matches(o) && fields.matches(o);
    let resource = t.resource.clone();
    let present = move |o: &Value| {
        if metadata_only {
            as_metadata(o)
        } else {
            o.clone()
        }
    };

    let (initial, mut rx, start_rv, interval) = {
        let mut state = shared.0.lock().unwrap();
        let rx = shared.1.subscribe();
        let mut initial: Vec<Value> = Vec::new();
        let in_ns = |o: &Value| {
            ns_filter
                .as_ref()
                .is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
        };
        let current = || -> Vec<Value> {
            state
                .objects
                .get(&res_key)
                .into_iter()
                .flat_map(|m| m.values())
                .filter(|o| in_ns(o) && matches(o))
                .cloned()
                .collect()
        };
        let rv_param = query.get("resourceVersion").cloned().unwrap_or_default();
        if query.get("sendInitialEvents").is_some_and(|s| s == "true") {
            for o in current() {
                initial.push(json!({"type": "ADDED", "object": present(&o)}));
            }
            initial.push(json!({"type": "BOOKMARK", "object": {"apiVersion": resource.api_version(), "kind": resource.kind, "metadata": {"resourceVersion": state.rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}));
        } else if rv_param.is_empty() || rv_param == "0" {
            for o in current() {
                initial.push(json!({"type": "ADDED", "object": present(&o)}));
            }
        } else {
            let from: u64 = rv_param.parse().unwrap_or(0);
            let floor = state.watch_floor.get(&res_key).copied().unwrap_or(0);
            if from < floor {
                state.expired_watches += 1;
                let error = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {from} ({floor})"), "reason": "Expired", "code": 410}});
                let line = format!("{error}\n");
                return Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(line))
                    .unwrap();
            }
            for change in state
                .log
                .iter()
                .filter(|c| c.rv > from && c.resource == res_key)
            {
                if let Some(e) = translate(change, &in_ns, &matches) {
                    initial.push(json!({"type": e.0, "object": present(&e.1)}));
                }
            }
        }
        (initial, rx, state.rv, state.bookmark_interval)
    };

    let ns_filter = if t.resource.namespaced {
        t.namespace.clone()
    } else {
        None
    };
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .unwrap_or_default();
    let fields = FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .unwrap_or_default();
    let matches = move |o: &Value| labels.matches(o) && fields.matches(o);
    let res_key = key(&t.resource);
    let stream = async_stream::stream! {
        for e in initial {
            yield Ok::<_, std::io::Error>(Bytes::from(format!("{e}\n")));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut last_rv = start_rv;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = ticker.tick(), if bookmarks => {
                    let b = json!({"type": "BOOKMARK", "object": {"apiVersion": resource.api_version(), "kind": resource.kind, "metadata": {"resourceVersion": last_rv.to_string()}}});
                    yield Ok(Bytes::from(format!("{b}\n")));
                }
                change = rx.recv() => {
                    let change = match change {
                        Ok(c) => c,
                        // Lagged or closed: end the watch; the client resumes from its last RV.
                        Err(_) => break,
                    };
                    if change.kind == "RESET" { break; }
                    if change.rv <= last_rv { continue; }
                    last_rv = last_rv.max(change.rv);
                    if change.resource != res_key { continue; }
                    let in_ns = |o: &Value| ns_filter.as_ref().is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns));
                    if let Some((kind, obj)) = translate(&change, &in_ns, &matches) {
                        let line = json!({"type": kind, "object": present(&obj)});
                        yield Ok(Bytes::from(format!("{line}\n")));
                    }
                }
            }
        }
    };
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// What a watcher with a selector sees of a change: objects entering the selection are ADDED,
/// objects leaving it are DELETED (with their previous content, stamped with the new RV).
fn translate(
    c: &Change,
    in_ns: &dyn Fn(&Value) -> bool,
    matches: &dyn Fn(&Value) -> bool,
) -> Option<(&'static str, Value)> {
    if !in_ns(&c.object) {
        return None;
    }
    let now = matches(&c.object);
    match (c.kind, &c.previous) {
        ("MODIFIED", Some(prev)) => {
            let before = matches(prev);
            match (before, now) {
                (true, true) => Some(("MODIFIED", c.object.clone())),
                (false, true) => Some(("ADDED", c.object.clone())),
                (true, false) => {
                    let mut gone = prev.clone();
                    gone["metadata"]["resourceVersion"] =
                        c.object["metadata"]["resourceVersion"].clone();
                    Some(("DELETED", gone))
                }
                (false, false) => None,
            }
        }
        (kind, _) => now.then(|| (kind, c.object.clone())),
    }
}

/// The 422 for `causes`, or Ok when there are none.
fn invalid(r: &ResourceType, name: &str, causes: Vec<Value>) -> Result<(), Reply> {
    if causes.is_empty() {
        return Ok(());
    }
    let text = |c: &Value| {
        format!(
            "{}: {}",
            c["field"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        )
    };
    let summary = if causes.len() == 1 {
        text(&causes[0])
    } else {
        format!(
            "[{}]",
            causes.iter().map(text).collect::<Vec<_>>().join(", ")
        )
    };
    Err(status_error(
        422,
        "Invalid",
        format!("{} \"{name}\" is invalid: {summary}", r.qualified_kind()),
        json!({"name": name, "group": r.group, "kind": r.kind, "causes": causes}),
    ))
}

/// The volume checks of built-in workloads that a real API server makes and our copies must
/// pass: each volume has exactly one source, and a claim volume names its claim.
fn builtin_errors(r: &ResourceType, obj: &Value, causes: &mut Vec<Value>) {
    if r.kind == "Service" {
        let cluster_ip = matches!(obj["spec"]["type"].as_str(), None | Some("ClusterIP"));
        for (i, p) in obj["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if cluster_ip && p.get("nodePort").is_some_and(|n| !n.is_null()) {
                causes.push(json!({"reason": "FieldValueForbidden", "message": "Forbidden: may not be used when `type` is 'ClusterIP'", "field": format!("spec.ports[{i}].nodePort")}));
            }
        }
        return;
    }
    let (volumes, path) = match r.kind.as_str() {
        "Pod" => (&obj["spec"]["volumes"], "spec.volumes"),
        "Deployment" | "StatefulSet" | "Job" => (
            &obj["spec"]["template"]["spec"]["volumes"],
            "spec.template.spec.volumes",
        ),
        _ => return,
    };
    for (i, v) in volumes.as_array().into_iter().flatten().enumerate() {
        let sources: Vec<&String> = v
            .as_object()
            .map(|m| m.keys().filter(|k| *k != "name").collect())
            .unwrap_or_default();
        if sources.len() > 1 {
            causes.push(json!({"reason": "FieldValueForbidden", "message": "Forbidden: may not specify more than 1 volume type", "field": format!("{path}[{i}].{}", sources[1])}));
        }
        if let Some(c) = v.get("persistentVolumeClaim")
            && c["claimName"].as_str().is_none_or(|n| n.is_empty())
        {
            causes.push(json!({"reason": "FieldValueRequired", "message": "Required value", "field": format!("{path}[{i}].persistentVolumeClaim.claimName")}));
        }
    }
}
