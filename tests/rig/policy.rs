//! ValidatingAdmissionPolicies, evaluated as the API server's validating policy plugin does: a
//! policy applies to a write when one of its bindings (validationActions Deny) names it, its
//! resource rules match the request (`statefulsets` is the main resource only, a subresource
//! needs `statefulsets/scale` or `*/scale`), and no match condition is false; then each
//! validation is a CEL expression over `object`, `oldObject`, `request` (operation, kind,
//! resource, subResource, the sender's `userInfo` with extra) and `namespaceObject`. A false
//! validation denies with its `messageExpression` (if it gives a one-line string), else its
//! message, else `failed expression: <expression>`, and its reason (Invalid when unset). An
//! expression that cannot be evaluated denies the same way under failurePolicy Fail (the
//! default) and is ignored under Ignore. Not modelled: params, variables, auditAnnotations,
//! object and namespace selectors of the policy itself.

use serde_json::{Value, json};

use super::authz::Identity;
use super::resources::ResourceType;
use super::server::{Reply, State, status_error};

const GROUP: &str = "admissionregistration.k8s.io";

/// The longest message a messageExpression may produce (celconfig's
/// MaxEvaluatedMessageExpressionSizeBytes).
const MAX_MESSAGE: usize = 5 * 1024;

fn list<'a>(state: &'a State, plural: &str) -> impl Iterator<Item = &'a Value> {
    state
        .objects
        .get(&format!("{GROUP}/{plural}"))
        .into_iter()
        .flat_map(|m| m.values())
}

fn has(list: &Value, wanted: &str) -> bool {
    list.as_array()
        .is_some_and(|a| a.iter().any(|v| v == "*" || v == wanted))
}

/// A rule's resource `res[/sub]` matches as the admission rule matcher's: `*` is any resource,
/// a missing `/sub` is the main resource only, `/*` any subresource.
fn resource_matches(resources: &Value, plural: &str, sub: Option<&str>) -> bool {
    resources.as_array().into_iter().flatten().any(|entry| {
        let entry = entry.as_str().unwrap_or_default();
        let (res, want_sub) = entry.split_once('/').unwrap_or((entry, ""));
        (res == "*" || res == plural) && (want_sub == "*" || want_sub == sub.unwrap_or(""))
    })
}

fn rules_match(policy: &Value, r: &ResourceType, sub: Option<&str>, operation: &str) -> bool {
    policy["spec"]["matchConstraints"]["resourceRules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|rule| {
            has(&rule["apiGroups"], &r.group)
                && has(&rule["apiVersions"], &r.version)
                && has(&rule["operations"], operation)
                && resource_matches(&rule["resources"], &r.plural, sub)
        })
}

fn namespace_object(state: &State, namespace: Option<&str>) -> Value {
    namespace
        .and_then(|ns| {
            state
                .objects
                .get("/namespaces")
                .and_then(|m| m.get(&(String::new(), ns.to_string())))
        })
        .cloned()
        .unwrap_or(Value::Null)
}

fn namespace_matches(state: &State, binding: &Value, namespace: Option<&str>) -> bool {
    let Some(wanted) =
        binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"].as_object()
    else {
        return true;
    };
    let Some(ns) = namespace else {
        return false;
    };
    let labels = namespace_object(state, Some(ns))["metadata"]["labels"].clone();
    wanted.iter().all(|(k, v)| {
        labels[k] == *v || (k == "kubernetes.io/metadata.name" && v.as_str() == Some(ns))
    })
}

fn evaluate(expression: &str, vars: &[(&str, &Value)]) -> Result<cel::Value, String> {
    let program =
        cel::Program::compile(expression).map_err(|e| format!("compilation failed: {e}"))?;
    let mut context = cel::Context::default();
    for (name, value) in vars {
        context
            .add_variable(*name, (*value).clone())
            .map_err(|e| format!("{name}: {e}"))?;
    }
    program
        .execute(&context)
        .map_err(|e| format!("expression '{expression}' resulted in error: {e}"))
}

fn eval(expression: &str, vars: &[(&str, &Value)]) -> Result<bool, String> {
    match evaluate(expression, vars)? {
        cel::Value::Bool(b) => Ok(b),
        other => Err(format!(
            "expression '{expression}' gave {other:?}, not a bool"
        )),
    }
}

/// What a false validation says: its messageExpression's one-line string, else its message,
/// else the expression.
fn message_of(validation: &Value, vars: &[(&str, &Value)]) -> String {
    let from_expression = validation["messageExpression"]
        .as_str()
        .and_then(|e| match evaluate(e, vars) {
            Ok(cel::Value::String(s)) => Some(s.trim().to_string()),
            _ => None,
        })
        .filter(|m| !m.is_empty() && m.len() <= MAX_MESSAGE && !m.contains('\n'));
    let message = validation["message"]
        .as_str()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    from_expression
        .or(message.map(String::from))
        .unwrap_or_else(|| {
            format!(
                "failed expression: {}",
                validation["expression"].as_str().unwrap_or_default().trim()
            )
        })
}

/// The policy's verdict on a request it matched: `Some((message, reason))` denies.
fn verdict(policy: &Value, vars: &[(&str, &Value)]) -> Option<(String, Option<String>)> {
    let ignore = policy["spec"]["failurePolicy"] == "Ignore";
    let mut errors = Vec::new();
    for c in policy["spec"]["matchConditions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        match eval(c["expression"].as_str().unwrap_or("false"), vars) {
            // Any false condition skips the policy, errors elsewhere or not.
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return (!ignore).then(|| (errors.join(", "), None));
    }
    for v in policy["spec"]["validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        match eval(v["expression"].as_str().unwrap_or("false"), vars) {
            Ok(true) => {}
            Ok(false) => {
                let reason = v["reason"].as_str().map(String::from);
                return Some((message_of(v, vars), reason));
            }
            Err(e) if !ignore => return Some((e, None)),
            Err(_) => {}
        }
    }
    None
}

/// Denies the write of `object` (with `old` for an update) on the resource or its subresource
/// `sub` when an admission policy says so.
pub fn admit(
    state: &State,
    who: &Identity,
    r: &ResourceType,
    sub: Option<&str>,
    object: &Value,
    old: Option<&Value>,
) -> Result<(), Reply> {
    let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
    let namespace = object["metadata"]["namespace"].as_str();
    let request = json!({
        "operation": operation,
        "namespace": namespace,
        "name": object["metadata"]["name"],
        "kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "resource": {"group": r.group, "version": r.version, "resource": r.plural},
        "subResource": sub,
        "userInfo": {"username": who.user, "groups": who.groups, "extra": who.extra},
        "dryRun": false,
    });
    let old_object = old.cloned().unwrap_or(Value::Null);
    let namespace_object = namespace_object(state, namespace);
    let vars = [
        ("object", object),
        ("oldObject", &old_object),
        ("request", &request),
        ("namespaceObject", &namespace_object),
    ];
    for binding in list(state, "validatingadmissionpolicybindings") {
        if !has(&binding["spec"]["validationActions"], "Deny")
            || !namespace_matches(state, binding, namespace)
        {
            continue;
        }
        let name = binding["spec"]["policyName"].as_str().unwrap_or_default();
        let Some(policy) =
            list(state, "validatingadmissionpolicies").find(|p| p["metadata"]["name"] == name)
        else {
            continue;
        };
        if !rules_match(policy, r, sub, operation) {
            continue;
        }
        if let Some((message, reason)) = verdict(policy, &vars) {
            return Err(denied(
                r,
                object,
                name,
                binding,
                &message,
                reason.as_deref(),
            ));
        }
    }
    Ok(())
}

/// The Status the plugin answers: admission's Forbidden error with the validation's reason and
/// its code (Invalid, 422, when no reason is set), the message also as the one cause.
fn denied(
    r: &ResourceType,
    object: &Value,
    policy: &str,
    binding: &Value,
    message: &str,
    reason: Option<&str>,
) -> Reply {
    let (code, reason) = match reason {
        Some("Forbidden") => (403, "Forbidden"),
        Some("Unauthorized") => (401, "Unauthorized"),
        Some("RequestEntityTooLarge") => (413, "RequestEntityTooLarge"),
        Some(other) if other != "Invalid" => (422, other),
        _ => (422, "Invalid"),
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let message = format!(
        "ValidatingAdmissionPolicy '{policy}' with binding '{}' denied request: {message}",
        binding["metadata"]["name"].as_str().unwrap_or_default()
    );
    status_error(
        code,
        reason,
        format!("{} \"{name}\" is forbidden: {message}", r.qualified()),
        json!({"name": name, "group": r.group, "kind": r.plural, "causes": [{"message": message}]}),
    )
}
