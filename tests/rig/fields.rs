//! managedFields: field sets per manager, as server-side apply keeps them. Lists are atomic
//! (owned as a whole), which is what the fields our code applies need.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

pub type Path = Vec<String>;

/// Which part of the object a write may touch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scope {
    /// Everything but status (when status is a subresource) and server-owned metadata.
    Main { status_is_subresource: bool },
    /// Only `.status`.
    Status,
}

const USER_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

fn in_scope(path: &[String], scope: Scope) -> bool {
    match (path.first().map(String::as_str), scope) {
        (Some("apiVersion" | "kind"), _) => false,
        (Some("status"), Scope::Status) => true,
        (_, Scope::Status) => false,
        (
            Some("status"),
            Scope::Main {
                status_is_subresource,
            },
        ) => !status_is_subresource,
        (Some("metadata"), Scope::Main { .. }) => path
            .get(1)
            .is_some_and(|f| USER_METADATA.contains(&f.as_str())),
        (Some(_), Scope::Main { .. }) => true,
        (None, _) => false,
    }
}

/// The leaf paths of `v` within `scope`. Lists and empty objects are leaves.
pub fn leaves(v: &Value, scope: Scope) -> BTreeSet<Path> {
    fn walk(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            _ => {
                out.insert(prefix.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out.into_iter().filter(|p| in_scope(p, scope)).collect()
}

pub fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

pub fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Deep-merges `patch` into `target`: objects merge, everything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

pub fn to_fields_v1(set: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for (i, k) in path.iter().enumerate() {
            let entry = cur.entry(format!("f:{k}")).or_insert_with(|| json!({}));
            let m = entry.as_object_mut().expect("fieldsV1 nodes are objects");
            if i + 1 < path.len() {
                m.entry(".".to_string()).or_insert_with(|| json!({}));
            }
            cur = m;
        }
    }
    Value::Object(root)
}

pub fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        let Some(m) = v.as_object() else { return };
        let children: Vec<_> = m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
        if children.is_empty() && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        for (k, child) in children {
            prefix.push(k[2..].to_string());
            walk(child, prefix, out);
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One managedFields entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub subresource: Option<String>,
    pub api_version: String,
    pub time: String,
    pub fields: BTreeSet<Path>,
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or_default().to_string(),
            subresource: e
                .get("subresource")
                .and_then(|s| s.as_str())
                .map(String::from),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn subresource_of(scope: Scope) -> Option<String> {
    matches!(scope, Scope::Status).then(|| "status".to_string())
}

/// Records a non-apply write by `manager`: it takes ownership of the fields it changed; fields
/// that disappeared are owned by nobody.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    scope: Scope,
    api_version: &str,
    now: &str,
) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let old_leaves = old.map(|o| leaves(o, scope)).unwrap_or_default();
    let new_leaves = leaves(new, scope);
    let changed: BTreeSet<Path> = new_leaves
        .iter()
        .filter(|p| old.and_then(|o| get(o, p)) != get(new, p))
        .cloned()
        .collect();
    let removed: Vec<&Path> = old_leaves.difference(&new_leaves).collect();
    for e in entries.iter_mut() {
        e.fields.retain(|p| {
            !changed.iter().any(|c| related(c, p)) && !removed.iter().any(|r| related(r, p))
        });
    }
    if !changed.is_empty() {
        let sub = subresource_of(scope);
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub)
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now.into();
            }
            None => entries.push(Entry {
                manager: manager.into(),
                operation: "Update".into(),
                subresource: sub,
                api_version: api_version.into(),
                time: now.into(),
                fields: changed,
            }),
        }
    }
    write_entries(new, &entries);
}

/// A field another manager owns with a different value.
pub struct Conflict {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub path: Path,
}

/// Server-side apply of `config` by `manager` onto `current` (`None`: create). Returns the new
/// object, or the conflicts when not forced.
pub fn apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
    api_version: &str,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let mut obj = current.cloned().unwrap_or_else(|| json!({}));
    let mut entries = current.map(read_entries).unwrap_or_default();
    let sub = subresource_of(scope);
    let applied = leaves(config, scope);
    let previous: BTreeSet<Path> = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource == sub)
        .map(|e| e.fields.clone())
        .unwrap_or_default();

    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| e.manager != manager) {
        for p in &applied {
            if e.fields.iter().any(|q| related(q, p)) && get(&obj, p) != get(config, p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    operation: e.operation.clone(),
                    api_version: e.api_version.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Forced or uncontested: the applier takes the fields it set to a new value.
    for e in entries.iter_mut().filter(|e| e.manager != manager) {
        e.fields.retain(|q| {
            !applied
                .iter()
                .any(|p| related(p, q) && get(current.unwrap_or(&Value::Null), p) != get(config, p))
        });
    }
    // Fields this manager applied before and now omits are removed, unless someone else owns them.
    for p in previous.difference(&applied) {
        let shared = entries
            .iter()
            .any(|e| e.manager != manager && e.fields.iter().any(|q| related(q, p)));
        if !shared {
            remove(&mut obj, p);
            // A map the manager created and no longer applies goes with its last field (the
            // manager owned the map itself, `.` in fieldsV1); top-level fields stay.
            for depth in (2..p.len()).rev() {
                if get(&obj, &p[..depth])
                    .is_some_and(|v| v.as_object().is_some_and(|m| m.is_empty()))
                {
                    remove(&mut obj, &p[..depth]);
                } else {
                    break;
                }
            }
        }
    }
    let mut scoped = config.clone();
    if let Some(m) = scoped.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        match scope {
            Scope::Status => m.retain(|k, _| k == "status"),
            Scope::Main {
                status_is_subresource: true,
            } => {
                m.remove("status");
            }
            Scope::Main { .. } => {}
        }
        if let Some(meta) = m.get_mut("metadata").and_then(|v| v.as_object_mut()) {
            meta.retain(|k, _| USER_METADATA.contains(&k.as_str()));
        }
    }
    merge(&mut obj, &scoped);
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply" && e.subresource == sub));
    entries.push(Entry {
        manager: manager.into(),
        operation: "Apply".into(),
        subresource: sub,
        api_version: api_version.into(),
        time: now.into(),
        fields: applied,
    });
    write_entries(&mut obj, &entries);
    Ok(obj)
}
