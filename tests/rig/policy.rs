//! ValidatingAdmissionPolicies, evaluated as the API server does: a policy applies to a write
//! when one of its bindings (validationActions Deny) names it, its resource rules match the
//! request, and every match condition holds; then each validation is a CEL expression over
//! `object`, `oldObject` and `request` (with the sender's `userInfo`, extra included), and the
//! first that is false denies the request with the policy's message and reason.

use serde_json::{Value, json};

use super::authz::Identity;
use super::resources::ResourceType;
use super::server::{Reply, State, status_error};

const GROUP: &str = "admissionregistration.k8s.io";

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

fn rules_match(policy: &Value, r: &ResourceType, operation: &str) -> bool {
    policy["spec"]["matchConstraints"]["resourceRules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|rule| {
            has(&rule["apiGroups"], &r.group)
                && has(&rule["apiVersions"], &r.version)
                && has(&rule["operations"], operation)
                && has(&rule["resources"], &r.plural)
        })
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
    let labels = state
        .objects
        .get("/namespaces")
        .and_then(|m| m.get(&(String::new(), ns.to_string())))
        .map(|n| n["metadata"]["labels"].clone())
        .unwrap_or(Value::Null);
    wanted.iter().all(|(k, v)| {
        labels[k] == *v || (k == "kubernetes.io/metadata.name" && v.as_str() == Some(ns))
    })
}

fn eval(expression: &str, vars: &[(&str, &Value)]) -> Result<bool, String> {
    let program =
        cel::Program::compile(expression).map_err(|e| format!("compiling {expression:?}: {e}"))?;
    let mut context = cel::Context::default();
    for (name, value) in vars {
        context
            .add_variable(*name, (*value).clone())
            .map_err(|e| format!("{name}: {e}"))?;
    }
    match program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("{expression:?} gave {other:?}, not a bool")),
        Err(e) => Err(format!("{expression:?}: {e}")),
    }
}

/// Denies the write of `object` (with `old` for an update) when an admission policy says so.
pub fn admit(
    state: &State,
    who: &Identity,
    r: &ResourceType,
    object: &Value,
    old: Option<&Value>,
) -> Result<(), Reply> {
    let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
    let namespace = object["metadata"]["namespace"].as_str();
    let request = json!({
        "operation": operation,
        "namespace": namespace,
        "name": object["metadata"]["name"],
        "userInfo": {"username": who.user, "groups": who.groups, "extra": who.extra},
    });
    let old_object = old.cloned().unwrap_or(Value::Null);
    let vars = [
        ("object", object),
        ("oldObject", &old_object),
        ("request", &request),
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
        if !rules_match(policy, r, operation) {
            continue;
        }
        let conditions = policy["spec"]["matchConditions"]
            .as_array()
            .into_iter()
            .flatten();
        let mut applies = true;
        for c in conditions {
            match eval(c["expression"].as_str().unwrap_or("false"), &vars) {
                Ok(b) => applies &= b,
                Err(e) => return Err(failed(r, object, name, binding, &e)),
            }
        }
        if !applies {
            continue;
        }
        for v in policy["spec"]["validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let holds = eval(v["expression"].as_str().unwrap_or("false"), &vars)
                .map_err(|e| failed(r, object, name, binding, &e))?;
            if !holds {
                let message = v["message"].as_str().unwrap_or("failed expression");
                let (code, reason) = match v["reason"].as_str() {
                    Some("Forbidden") => (403, "Forbidden"),
                    Some("Unauthorized") => (401, "Unauthorized"),
                    _ => (422, "Invalid"),
                };
                return Err(status_error(
                    code,
                    reason,
                    format!(
                        "{} \"{}\" is forbidden: ValidatingAdmissionPolicy '{name}' with binding '{}' denied request: {message}",
                        r.qualified(),
                        object["metadata"]["name"].as_str().unwrap_or_default(),
                        binding["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                    json!({"name": object["metadata"]["name"], "group": r.group, "kind": r.plural}),
                ));
            }
        }
    }
    Ok(())
}

/// failurePolicy Fail: an expression that cannot be evaluated denies the request.
fn failed(r: &ResourceType, object: &Value, policy: &str, binding: &Value, why: &str) -> Reply {
    status_error(
        500,
        "InternalError",
        format!(
            "{} \"{}\": ValidatingAdmissionPolicy '{policy}' with binding '{}' could not be evaluated: {why}",
            r.qualified(),
            object["metadata"]["name"].as_str().unwrap_or_default(),
            binding["metadata"]["name"].as_str().unwrap_or_default()
        ),
        Value::Null,
    )
}
