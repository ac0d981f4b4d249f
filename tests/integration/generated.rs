//! Generated files match the types, CRD schemas are structural with bounded CEL rules, and
//! every example parses into our types and passes admission.

use std::path::Path;

use kube::core::cel::{ScopeContext, analyze_rule, compile_schema};
use serde_json::Value;
use site_recovery::api::{self, CHART_CRDS_FILE, CRDS_FILE};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crds_and_chart_copies_match_the_types() {
    for (file, expected) in [
        (CRDS_FILE, api::crds_yaml()),
        (CHART_CRDS_FILE, api::crds_chart_template()),
    ] {
        let on_disk = std::fs::read_to_string(root().join(file)).unwrap_or_default();
        assert!(
            on_disk == expected,
            "{file} is out of date with the Rust types; regenerate with\n  cargo run -- crd > {CRDS_FILE}\n  cargo run -- crd --chart > {CHART_CRDS_FILE}"
        );
    }
}

/// Every schema node says its type (a structural schema), except where Kubernetes allows not to.
fn assert_structural(schema: &Value, path: &str) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    let exempt = obj.contains_key("x-kubernetes-int-or-string")
        || obj.contains_key("x-kubernetes-preserve-unknown-fields");
    assert!(
        exempt || obj.contains_key("type"),
        "{path}: schema node without a type"
    );
    for forbidden in ["$ref", "anyOf", "oneOf", "allOf", "additionalItems"] {
        assert!(
            !obj.contains_key(forbidden),
            "{path}: {forbidden} is not allowed in a structural schema here"
        );
    }
    if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            assert_structural(v, &format!("{path}.{k}"));
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
}

/// Every CEL rule compiles and stays inside the API server's cost budget (kube-cel's estimate).
fn assert_rules_bounded(schema: &Value, path: &str, count: &mut usize) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    if let Some(rules) = obj
        .get("x-kubernetes-validations")
        .and_then(|r| r.as_array())
    {
        let compiled = compile_schema(schema);
        assert!(
            !compiled.has_errors(),
            "{path}: a CEL rule does not compile: {:?}",
            compiled.compilation_errors()
        );
        for rule in rules {
            let text = rule["rule"].as_str().unwrap();
            let warnings = analyze_rule(text, &compiled, ScopeContext::CrdValidation);
            assert!(warnings.is_empty(), "{path}: rule {text:?}: {warnings:?}");
            let message = rule["message"].as_str().unwrap_or_default();
            assert!(
                !message.is_empty(),
                "{path}: rule {text:?} needs a message that names the field"
            );
            *count += 1;
        }
    }
    for child in obj
        .get("properties")
        .and_then(|p| p.as_object())
        .into_iter()
        .flat_map(|p| p.values())
    {
        assert_rules_bounded(child, path, count);
    }
    if let Some(items) = obj.get("items") {
        assert_rules_bounded(items, path, count);
    }
}

/// Strings and lists that a CEL rule could iterate are bounded.
fn assert_bounded_lists(schema: &Value, path: &str) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    if obj.get("type").and_then(|t| t.as_str()) == Some("array") {
        assert!(
            obj.contains_key("maxItems"),
            "{path}: list without maxItems"
        );
    }
    for (k, v) in obj
        .get("properties")
        .and_then(|p| p.as_object())
        .into_iter()
        .flatten()
    {
        assert_bounded_lists(v, &format!("{path}.{k}"));
    }
    if let Some(items) = obj.get("items") {
        assert_bounded_lists(items, &format!("{path}[]"));
    }
}

#[test]
fn crd_schemas_are_structural_and_rules_bounded() {
    let mut rules = 0;
    for crd in api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: status subresource"
        );
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        assert_structural(&schema, &name);
        assert_bounded_lists(&schema, &name);
        assert_rules_bounded(&schema, &name, &mut rules);
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        for wanted in ["Ready", "Status", "Age"] {
            assert!(columns.contains(&wanted), "{name}: printer column {wanted}");
        }
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["siterecovery".to_string()][..])
        );
    }
    assert!(
        rules >= 15,
        "expected every admission rule to be checked, saw {rules}"
    );
}

#[test]
fn every_example_parses_and_passes_admission() {
    let dir = root().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !site_recovery::vault_access::is_placeholder_key(text.as_bytes()),
            "{}: an example must not carry a usable placeholder key or credential; show `kubectl create secret generic ... $(openssl rand -base64 48)` instead",
            path.display()
        );
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in docs.iter().filter(|d| !d.is_null()) {
            let kind = doc["kind"].as_str().unwrap_or_default();
            let parsed = match kind {
                "RecoveryVault" => {
                    serde_json::from_value::<api::RecoveryVault>(doc.clone()).map(|_| ())
                }
                "ReplicatedWorkload" => {
                    serde_json::from_value::<api::ReplicatedWorkload>(doc.clone()).map(|_| ())
                }
                "Failover" => serde_json::from_value::<api::Failover>(doc.clone()).map(|_| ()),
                _ => Ok(()),
            };
            parsed.unwrap_or_else(|e| panic!("{}: {kind}: {e}", path.display()));
            seen += 1;
        }
        let problems =
            site_recovery::validate::validate_text(&path.display().to_string(), &text).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
    }
    assert!(
        seen >= 6,
        "examples should cover every kind, saw {seen} documents"
    );
}

#[test]
fn validate_command_names_file_document_and_field() {
    let bad = "apiVersion: siterecovery.io/v1alpha1\nkind: Failover\nmetadata: {name: f}\nspec:\n  workloadName: db\n  recoveryPoint: {latest: true, id: p1}\n";
    let problems = site_recovery::validate::validate_text("bad.yaml", bad).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("bad.yaml: document 1 (Failover f): "),
        "{}",
        problems[0]
    );
    assert!(
        problems[0].contains("recoveryPoint must set exactly one of"),
        "{}",
        problems[0]
    );
}
