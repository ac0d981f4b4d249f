//! Offline validation of manifests: parses every document of a YAML file and runs the CRDs' CEL
//! admission rules on our kinds, so a GitOps pipeline can reject a bad spec before it reaches
//! a cluster. Documents of other kinds are skipped.

use std::path::Path;

use serde::Deserialize;

use crate::api::{Failover, RecoveryVault, ReplicatedWorkload};

/// Every problem found in `path`, each naming the file, the document and the field.
pub fn validate_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    validate_text(&path.display().to_string(), &text)
}

pub fn validate_text(origin: &str, text: &str) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| anyhow::anyhow!("{origin}: not valid YAML: {e}"))?;
    for (i, doc) in documents.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let name = doc
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("<unnamed>")
            .to_string();
        let at = format!("{origin}: document {} ({kind} {name})", i + 1);
        let result = match kind.as_str() {
            "RecoveryVault" => check::<RecoveryVault>(doc, |o| o.validate_cel()),
            "ReplicatedWorkload" => check::<ReplicatedWorkload>(doc, |o| o.validate_cel()),
            "Failover" => check::<Failover>(doc, |o| o.validate_cel()),
            _ => Ok(()),
        };
        if let Err(e) = result {
            problems.push(format!("{at}: {e}"));
        }
    }
    Ok(problems)
}

fn check<K>(
    doc: serde_json::Value,
    rules: impl Fn(&K) -> Result<(), kube::core::cel::ValidationErrors>,
) -> Result<(), String>
where
    K: for<'de> Deserialize<'de>,
{
    let obj: K =
        serde_json::from_value(doc).map_err(|e| format!("does not match the schema: {e}"))?;
    rules(&obj).map_err(|e| e.to_string())
}
