//! Authentication by bearer token and authorization as the Kubernetes RBAC authorizer decides:
//! from the Roles, ClusterRoles, RoleBindings and ClusterRoleBindings the rig stores. A request
//! is described the way kube-apiserver's RequestInfo does (verb, API group, resource,
//! subresource, namespace, name); a denial is the real 403 Status. `system:masters` (the test's
//! own admin) is allowed everything, as on a cluster.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::server::{Reply, State, status_error};

/// Who sent a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    /// What a bound ServiceAccount token adds, e.g. the node its pod runs on.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Identity {
    pub fn admin() -> Self {
        Self {
            user: "rig-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        }
    }

    /// A ServiceAccount token bound to a pod on `node`, as the kubelet's projected tokens are
    /// (the node name becomes `authentication.kubernetes.io/node-name` in the user's extra).
    pub fn service_account_on_node(namespace: &str, name: &str, node: &str) -> Self {
        let mut who = Self::service_account(namespace, name);
        who.extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            vec![node.to_string()],
        );
        who
    }
}

/// Tokens the rig accepts, and whether it checks them at all (a rig that does not enforce
/// treats every request as the admin's).
#[derive(Default)]
pub struct Auth {
    pub enforce: bool,
    pub tokens: BTreeMap<String, Identity>,
    /// Every request denied, as (user, what was asked): for tests and for their failure output.
    pub denied: Vec<(String, String)>,
    /// A test that provokes denials on purpose sets this; otherwise a denial fails the test.
    pub denials_expected: bool,
}

/// What a request asks to do, as RBAC sees it.
#[derive(Clone, Debug)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Requests outside any resource (discovery): their path.
    pub path: Option<String>,
}

/// One kind of request as counted per sender: the user, the verb (`list` and `watch` apart
/// from `get`), and the resource with its subresource (`pods/exec`, `failovers/status`), or
/// the path of a request outside any resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    pub user: String,
    pub verb: String,
    pub resource: String,
}

impl Call {
    pub fn of(who: &Identity, a: &Attributes) -> Self {
        let resource = match (&a.path, &a.subresource) {
            (Some(path), _) => path.clone(),
            (None, Some(sub)) => format!("{}/{sub}", a.resource),
            (None, None) => a.resource.clone(),
        };
        Self {
            user: who.user.clone(),
            verb: a.verb.clone(),
            resource,
        }
    }
}

/// The identity a request's bearer token names; `Err` is the 401 the real server answers.
pub fn authenticate(auth: &Auth, headers: &axum::http::HeaderMap) -> Result<Identity, Reply> {
    if !auth.enforce {
        return Ok(Identity::admin());
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token.and_then(|t| auth.tokens.get(t)) {
        Some(who) => Ok(who.clone()),
        None => Err(status_error(
            401,
            "Unauthorized",
            "Unauthorized".into(),
            Value::Null,
        )),
    }
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default()
}

fn matches(list: &[&str], wanted: &str) -> bool {
    list.iter().any(|x| *x == "*" || *x == wanted)
}

/// Whether one PolicyRule allows the request.
fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strs(&rule["verbs"]);
    if !matches(&verbs, &a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return strs(&rule["nonResourceURLs"]).iter().any(|u| {
            *u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
        });
    }
    if !matches(&strs(&rule["apiGroups"]), &a.group) {
        return false;
    }
    let resources = strs(&rule["resources"]);
    let resource_ok = match &a.subresource {
        None => matches(&resources, &a.resource),
        Some(sub) => resources.iter().any(|r| {
            *r == "*" || *r == format!("{}/{sub}", a.resource) || *r == format!("*/{sub}")
        }),
    };
    if !resource_ok {
        return false;
    }
    let names = strs(&rule["resourceNames"]);
    names.is_empty() || a.name.as_deref().is_some_and(|n| names.contains(&n))
}

fn subject_is(subject: &Value, who: &Identity) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("ServiceAccount") => {
            who.user
                == format!(
                    "system:serviceaccount:{}:{name}",
                    subject["namespace"].as_str().unwrap_or_default()
                )
        }
        Some("User") => who.user == name,
        Some("Group") => who.groups.iter().any(|g| g == name),
        _ => false,
    }
}

fn objects<'a>(
    state: &'a State,
    plural: &str,
) -> impl Iterator<Item = (&'a (String, String), &'a Value)> {
    state
        .objects
        .get(&format!("rbac.authorization.k8s.io/{plural}"))
        .into_iter()
        .flat_map(|m| m.iter())
}

/// The rules a role reference grants: a ClusterRole's (with its aggregated roles), or a Role's
/// in the binding's namespace.
fn rules_of<'a>(state: &'a State, role_ref: &Value, namespace: &str) -> Vec<&'a Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let (plural, ns) = match role_ref["kind"].as_str() {
        Some("ClusterRole") => ("clusterroles", String::new()),
        _ => ("roles", namespace.to_string()),
    };
    objects(state, plural)
        .filter(|((n, obj_name), _)| *n == ns && obj_name == name)
        .flat_map(|(_, role)| role["rules"].as_array().into_iter().flatten())
        .collect()
}

/// Whether RBAC allows the request: a ClusterRoleBinding anywhere, or a RoleBinding in the
/// request's namespace.
pub fn allowed(state: &State, who: &Identity, a: &Attributes) -> bool {
    if who.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    // Discovery is open to every authenticated user (system:discovery, system:basic-user).
    if a.path.is_some() && a.verb == "get" {
        return true;
    }
    let bound = |binding: &Value| {
        binding["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| subject_is(s, who)))
    };
    let cluster = objects(state, "clusterrolebindings")
        .filter(|(_, b)| bound(b))
        .any(|(_, b)| {
            rules_of(state, &b["roleRef"], "")
                .iter()
                .any(|r| rule_allows(r, a))
        });
    if cluster {
        return true;
    }
    let Some(ns) = &a.namespace else {
        return false;
    };
    objects(state, "rolebindings")
        .filter(|((n, _), b)| n == ns && bound(b))
        .any(|(_, b)| {
            rules_of(state, &b["roleRef"], ns)
                .iter()
                .any(|r| rule_allows(r, a))
        })
}

/// The 403 a real API server answers.
pub fn forbidden(who: &Identity, a: &Attributes) -> Reply {
    if let Some(path) = &a.path {
        return status_error(
            403,
            "Forbidden",
            format!(
                "forbidden: User \"{}\" cannot {} path \"{path}\"",
                who.user, a.verb
            ),
            json!({}),
        );
    }
    let resource = match &a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.clone(),
    };
    let qualified = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let what = match &a.name {
        Some(n) => format!("{qualified} \"{n}\""),
        None => qualified,
    };
    let scope = match &a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    let mut details = json!({"kind": a.resource});
    if let Some(n) = &a.name {
        details["name"] = json!(n);
    }
    if !a.group.is_empty() {
        details["group"] = json!(a.group);
    }
    status_error(
        403,
        "Forbidden",
        format!(
            "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            who.user, a.verb, a.group
        ),
        details,
    )
}

/// The RBAC verb of an HTTP request on a resource.
pub fn verb(method: &axum::http::Method, named: bool, watch: bool) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}
