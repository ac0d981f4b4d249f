//! Replays the recorded exchanges with a real kube-apiserver (../shared/apiserver-transcripts,
//! vendored under tests/transcripts) against the rig and compares everything that carries
//! meaning: status codes, Status reasons, details and causes, messages with numbers masked,
//! objects without volatile fields, generation, resourceVersion relations (a no-op keeps the
//! RV, a write makes a new one), managedFields managers, watch event types and order,
//! bookmarks, 410 on too-old watches and lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::rig::Rig;

/// Exchanges that depend on controllers the rig plays through test helpers instead (PV
/// binder, StatefulSet controller) or on aggregated discovery, which kube clients do not use.
/// Their status codes are still compared.
const STATUS_ONLY: &[&str] = &[
    "03", "06", "07", "51", "52", "53", "54", "56", "57", "58", "59", "60", "61", "62", "63", "64",
    "65",
];

struct Replay {
    rig: Rig,
    /// real resourceVersion → rig resourceVersion
    rvs: BTreeMap<u64, String>,
    rig_rvs: BTreeSet<String>,
    tokens: BTreeMap<String, String>,
    /// real uid → rig uid, for objects created to stand in for unrecorded setup
    uids: BTreeMap<String, String>,
    problems: Vec<String>,
    compared: usize,
}

fn mask(s: &str) -> String {
    let mut out = String::new();
    let mut last_digit = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

/// Drops what differs on every run; managedFields become (manager, operation, subresource).
fn normalize(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
        ] {
            meta.remove(k);
        }
        if let Some(mf) = meta.remove("managedFields") {
            let mut managers: Vec<String> = mf
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    format!(
                        "{}/{}/{}",
                        e["manager"].as_str().unwrap_or(""),
                        e["operation"].as_str().unwrap_or(""),
                        e["subresource"].as_str().unwrap_or("")
                    )
                })
                .collect();
            managers.sort();
            meta.insert("managedFields".into(), json!(managers));
        }
        if let Some(owners) = meta
            .get_mut("ownerReferences")
            .and_then(|o| o.as_array_mut())
        {
            for o in owners {
                o.as_object_mut().map(|m| m.remove("uid"));
            }
        }
    }
    v
}

impl Replay {
    fn rv_for_request(&self, real: &str) -> String {
        let Ok(real) = real.parse::<u64>() else {
            return real.to_string();
        };
        self.rvs
            .range(..=real)
            .next_back()
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "1".into())
    }

    fn note(&mut self, file: &str, what: String) {
        self.problems.push(format!("{file}: {what}"));
    }

    /// Relates a real RV to the rig's: a real RV seen before must map to the same rig RV (a
    /// no-op), a new real RV to a new rig RV (a write).
    fn relate_rv(&mut self, file: &str, real: Option<&str>, rig: Option<&str>) {
        let (Some(real), Some(rig)) = (real.and_then(|r| r.parse::<u64>().ok()), rig) else {
            return;
        };
        match self.rvs.get(&real).cloned() {
            Some(mapped) if mapped != rig => {
                let what = format!(
                    "resourceVersion: the real server kept {real} (no write) but the rig answered {rig}, not {mapped}"
                );
                self.note(file, what);
            }
            Some(_) => {}
            None => {
                if self.rig_rvs.contains(rig) {
                    let what = format!(
                        "resourceVersion: the real server wrote (new RV {real}) but the rig kept {rig}"
                    );
                    self.note(file, what);
                }
                self.rvs.insert(real, rig.to_string());
            }
        }
        self.rig_rvs.insert(rig.to_string());
    }

    fn compare_status(&mut self, file: &str, real: &Value, rig: &Value) {
        for k in ["reason", "code", "status"] {
            if real[k] != rig[k] {
                self.note(file, format!("Status.{k}: real {} rig {}", real[k], rig[k]));
            }
        }
        let real_msg = real["message"].as_str().map(mask);
        let rig_msg = rig["message"].as_str().map(mask);
        if real_msg != rig_msg {
            self.note(
                file,
                format!("Status.message:\n    real {real_msg:?}\n    rig  {rig_msg:?}"),
            );
        }
        let keys = |v: &Value| -> Vec<String> {
            v["details"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        if keys(real) != keys(rig) {
            self.note(
                file,
                format!(
                    "Status.details keys: real {:?} rig {:?}",
                    keys(real),
                    keys(rig)
                ),
            );
        }
        for k in ["name", "group", "kind"] {
            if real["details"][k] != rig["details"][k] {
                self.note(
                    file,
                    format!(
                        "Status.details.{k}: real {} rig {}",
                        real["details"][k], rig["details"][k]
                    ),
                );
            }
        }
        let causes = |v: &Value| -> Vec<(String, String)> {
            v["details"]["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["reason"].as_str().unwrap_or("").into(),
                        c["field"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        };
        if causes(real) != causes(rig) {
            self.note(
                file,
                format!(
                    "Status causes: real {:?} rig {:?}",
                    causes(real),
                    causes(rig)
                ),
            );
        }
        if real["metadata"].get("continue").is_some() != rig["metadata"].get("continue").is_some() {
            self.note(file, "Status.metadata.continue presence differs".into());
        }
    }

    fn compare_object(&mut self, file: &str, real: &Value, rig: &Value) {
        let (a, b) = (normalize(real), normalize(rig));
        if a != b {
            self.note(file, format!("object differs:\n    real {a}\n    rig  {b}"));
        }
        self.relate_rv(
            file,
            real["metadata"]["resourceVersion"].as_str(),
            rig["metadata"]["resourceVersion"].as_str(),
        );
    }

    fn compare_list(&mut self, file: &str, real: &Value, rig: &Value) {
        let names = |v: &Value| -> Vec<String> {
            v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
                .collect()
        };
        if names(real) != names(rig) {
            self.note(
                file,
                format!("list items: real {:?} rig {:?}", names(real), names(rig)),
            );
        }
        for (a, b) in real["items"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(rig["items"].as_array().into_iter().flatten())
        {
            self.compare_object(file, a, b);
        }
        for k in ["remainingItemCount"] {
            if real["metadata"][k] != rig["metadata"][k] {
                self.note(
                    file,
                    format!(
                        "list metadata.{k}: real {} rig {}",
                        real["metadata"][k], rig["metadata"][k]
                    ),
                );
            }
        }
        let has_more = |v: &Value| {
            v["metadata"]["continue"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        };
        if has_more(real) != has_more(rig) {
            self.note(file, "list continue token presence differs".into());
        }
        if let (Some(a), Some(b)) = (
            real["metadata"]["continue"].as_str(),
            rig["metadata"]["continue"].as_str(),
        ) {
            self.tokens.insert(a.to_string(), b.to_string());
        }
        // The list RV is at least every item's.
        let list_rv = rig["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0);
        for item in rig["items"].as_array().into_iter().flatten() {
            let item_rv = item["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse::<u64>().ok())
                .unwrap_or(0);
            if item_rv > list_rv {
                self.note(
                    file,
                    format!("list resourceVersion {list_rv} is older than an item's {item_rv}"),
                );
            }
        }
        if let (Some(a), Some(b)) = (
            real["metadata"]["resourceVersion"].as_str(),
            rig["metadata"]["resourceVersion"].as_str(),
        ) && let Ok(a) = a.parse::<u64>()
        {
            self.rvs.entry(a).or_insert_with(|| b.to_string());
        }
    }

    /// The recording created some objects with requests it did not keep (vault-b, vault-o):
    /// create them in the rig from what the recorded responses show of them.
    async fn seed(&mut self, client: &kube::Client, t: &Value) {
        let mut wanted: Vec<Value> = t["response"]["body"]["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for owner in t["request"]["body"]["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
        {
            wanted.push(json!({
                "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                "metadata": {"name": owner["name"], "namespace": "fixtures", "uid": owner["uid"]},
                "spec": {"cache": {"zone": "zone-a"}, "target": {"zone": "zone-b"}},
            }));
        }
        for item in wanted {
            let Some(api_version) = item["apiVersion"]
                .as_str()
                .filter(|a| a.starts_with("siterecovery.io"))
            else {
                continue;
            };
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            let path = format!("/apis/{api_version}/namespaces/fixtures/recoveryvaults");
            let get = http::Request::get(format!("{path}/{name}"))
                .body(vec![])
                .unwrap();
            if send(client, get).await.0 == 200 {
                continue;
            }
            let real_uid = item["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let body = json!({"apiVersion": api_version, "kind": "RecoveryVault", "metadata": {"name": name, "labels": item["metadata"]["labels"]}, "spec": item["spec"]});
            let post = http::Request::post(path)
                .header("content-type", "application/json")
                .header("user-agent", "curl/8.5.0")
                .body(serde_json::to_vec(&body).unwrap())
                .unwrap();
            let (status, created) = send(client, post).await;
            assert_eq!(
                status,
                201,
                "seeding {name}: {}",
                String::from_utf8_lossy(&created)
            );
            let created: Value = serde_json::from_slice(&created).unwrap();
            self.uids.insert(
                real_uid,
                created["metadata"]["uid"].as_str().unwrap().to_string(),
            );
        }
    }

    fn request(&self, spec: &Value) -> http::Request<Vec<u8>> {
        let mut query: Vec<(String, String)> = Vec::new();
        for (k, v) in spec["query"].as_object().into_iter().flatten() {
            let v = v.as_str().unwrap_or_default().to_string();
            let v = match k.as_str() {
                "resourceVersion" => self.rv_for_request(&v),
                "continue" => self.tokens.get(&v).cloned().unwrap_or(v),
                _ => v,
            };
            query.push((k.clone(), v));
        }
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.replace('=', "%3D")
                        .replace(',', "%2C")
                        .replace(' ', "%20")
                )
            })
            .collect();
        let uri = if qs.is_empty() {
            spec["path"].as_str().unwrap().to_string()
        } else {
            format!("{}?{}", spec["path"].as_str().unwrap(), qs.join("&"))
        };
        // The recording was made with curl, whose User-Agent names the field manager.
        let mut builder = http::Request::builder()
            .method(spec["method"].as_str().unwrap())
            .uri(uri)
            .header("user-agent", "curl/8.5.0");
        for (k, v) in spec["headers"].as_object().into_iter().flatten() {
            builder = builder.header(k.as_str(), v.as_str().unwrap_or_default());
        }
        let body = match &spec["body"] {
            Value::Null => vec![],
            Value::String(yaml) => yaml.clone().into_bytes(),
            other => {
                let mut other = other.clone();
                if let Some(rv) = other
                    .pointer("/metadata/resourceVersion")
                    .and_then(|r| r.as_str())
                    .map(String::from)
                {
                    other["metadata"]["resourceVersion"] = json!(self.rv_for_request(&rv));
                }
                let owners = other
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(|o| o.as_array_mut());
                for owner in owners.into_iter().flatten() {
                    if let Some(uid) = owner["uid"].as_str().and_then(|u| self.uids.get(u)) {
                        owner["uid"] = json!(uid);
                    }
                }
                serde_json::to_vec(&other).unwrap()
            }
        };
        builder.body(body).unwrap()
    }
}

async fn send(client: &kube::Client, req: http::Request<Vec<u8>>) -> (u16, Vec<u8>) {
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .expect("request reaches the rig");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn rig_matches_the_recorded_apiserver() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 70,
        "the transcripts are vendored in {}",
        dir.display()
    );
    let rig = Rig::start().await;
    rig.set_bookmark_interval(Duration::from_millis(500));
    let mut replay = Replay {
        rig,
        rvs: BTreeMap::new(),
        rig_rvs: BTreeSet::new(),
        tokens: BTreeMap::new(),
        uids: BTreeMap::new(),
        problems: vec![],
        compared: 0,
    };
    let client = replay.rig.client();

    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let number = &name[..2];
        let t: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if number == "71" {
            // The recording compacted etcd before 71-73.
            replay.rig.compact();
        }
        replay.seed(&client, &t).await;
        let req = replay.request(&t["request"]);
        let real_status = t["response"]["status"].as_u64().unwrap() as u16;
        replay.compared += 1;

        if let Some(real_events) = t["response"]["events"].as_array() {
            // A watch: run the `during` requests while reading the stream.
            let during = t["during"].as_array().cloned().unwrap_or_default();
            let started = Instant::now();
            let resp = client
                .send(req.map(kube::client::Body::from))
                .await
                .unwrap();
            if resp.status().as_u16() != real_status {
                replay.note(
                    &name,
                    format!("status: real {real_status} rig {}", resp.status()),
                );
                continue;
            }
            let mut side = Vec::new();
            for d in &during {
                side.push((
                    d["at_seconds"].as_f64().unwrap_or(0.0),
                    replay.request(d),
                    d["response_status"].as_u64().unwrap_or(0) as u16,
                ));
            }
            let side_client = client.clone();
            let side_task = tokio::spawn(async move {
                let mut out = Vec::new();
                for (at, req, want) in side {
                    let wait = Duration::from_secs_f64(at).saturating_sub(started.elapsed());
                    tokio::time::sleep(wait).await;
                    let (status, _) = send(&side_client, req).await;
                    out.push((status, want));
                }
                out
            });
            let bytes = tokio::time::timeout(Duration::from_secs(15), resp.into_body().collect())
                .await
                .expect("the watch closes at timeoutSeconds")
                .unwrap()
                .to_bytes();
            for (status, want) in side_task.await.unwrap() {
                if want != 0 && status != want {
                    replay.note(
                        &name,
                        format!("during-request status: real {want} rig {status}"),
                    );
                }
            }
            let rig_events: Vec<Value> = bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            if STATUS_ONLY.contains(&number) {
                continue;
            }
            let types = |events: &[Value]| -> Vec<String> {
                events
                    .iter()
                    .filter(|e| e["type"] != "BOOKMARK")
                    .map(|e| e["type"].as_str().unwrap().to_string())
                    .collect()
            };
            if number == "73" {
                // The recording saw writes the transcripts do not keep; every event the rig
                // replays must appear, in order, among the real ones.
                let (real, rig) = (types(real_events), types(&rig_events));
                let mut it = real.iter();
                if rig.is_empty() || !rig.iter().all(|t| it.any(|r| r == t)) {
                    replay.note(
                        &name,
                        format!("watch replay: rig {rig:?} is not a subsequence of real {real:?}"),
                    );
                }
                continue;
            }
            if types(real_events) != types(&rig_events) {
                replay.note(
                    &name,
                    format!(
                        "watch event types: real {:?} rig {:?}",
                        types(real_events),
                        types(&rig_events)
                    ),
                );
            }
            let bookmarks =
                |events: &[Value]| events.iter().filter(|e| e["type"] == "BOOKMARK").count();
            if (bookmarks(real_events) > 0) != (bookmarks(&rig_events) > 0) {
                replay.note(
                    &name,
                    format!(
                        "bookmarks: real {} rig {}",
                        bookmarks(real_events),
                        bookmarks(&rig_events)
                    ),
                );
            }
            let ends = |events: &[Value]| {
                events.iter().any(|e| {
                    e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
                })
            };
            if ends(real_events) != ends(&rig_events) {
                replay.note(&name, "initial-events-end bookmark differs".into());
            }
            let real_objects: Vec<&Value> = real_events
                .iter()
                .filter(|e| e["type"] != "BOOKMARK")
                .collect();
            let rig_objects: Vec<&Value> = rig_events
                .iter()
                .filter(|e| e["type"] != "BOOKMARK")
                .collect();
            for (a, b) in real_objects.iter().zip(rig_objects.iter()) {
                if a["type"] == "ERROR" {
                    replay.compare_status(&name, &a["object"], &b["object"]);
                } else {
                    let (ra, rb) = (normalize(&a["object"]), normalize(&b["object"]));
                    if ra != rb {
                        replay.note(
                            &name,
                            format!(
                                "{} object differs:\n    real {ra}\n    rig  {rb}",
                                a["type"]
                            ),
                        );
                    }
                }
            }
            continue;
        }

        let (status, body) = send(&client, req).await;
        if status != real_status {
            replay.note(
                &name,
                format!(
                    "status: real {real_status} rig {status}: {}",
                    String::from_utf8_lossy(&body)
                ),
            );
            continue;
        }
        if STATUS_ONLY.contains(&number) {
            continue;
        }
        let real = &t["response"]["body"];
        let rig: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match real["kind"].as_str() {
            Some("Status") => replay.compare_status(&name, real, &rig),
            Some("APIResourceList") => {
                let names = |v: &Value| -> BTreeSet<String> {
                    v["resources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| r["name"].as_str().unwrap_or("").to_string())
                        .collect()
                };
                let missing: Vec<_> = names(real).difference(&names(&rig)).cloned().collect();
                if !missing.is_empty() {
                    replay.note(&name, format!("discovery lacks {missing:?}"));
                }
            }
            Some("APIGroupList") => {
                let names = |v: &Value| -> BTreeSet<String> {
                    v["groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| r["name"].as_str().unwrap_or("").to_string())
                        .collect()
                };
                let missing: Vec<_> = names(real).difference(&names(&rig)).cloned().collect();
                if !missing.is_empty() {
                    replay.note(&name, format!("discovery lacks groups {missing:?}"));
                }
            }
            Some("APIVersions") if real["versions"] != rig["versions"] => {
                replay.note(&name, "APIVersions differ".into());
            }
            Some(kind) if kind.ends_with("List") => replay.compare_list(&name, real, &rig),
            Some("CustomResourceDefinition") | Some("Namespace") => {
                replay.relate_rv(
                    &name,
                    real["metadata"]["resourceVersion"].as_str(),
                    rig["metadata"]["resourceVersion"].as_str(),
                );
            }
            Some(_)
                if real["apiVersion"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("siterecovery.io")) =>
            {
                replay.compare_object(&name, real, &rig)
            }
            Some(_) => {
                for k in ["name", "namespace", "generation", "labels", "finalizers"] {
                    if real["metadata"][k] != rig["metadata"][k] {
                        replay.note(
                            &name,
                            format!(
                                "metadata.{k}: real {} rig {}",
                                real["metadata"][k], rig["metadata"][k]
                            ),
                        );
                    }
                }
                replay.relate_rv(
                    &name,
                    real["metadata"]["resourceVersion"].as_str(),
                    rig["metadata"]["resourceVersion"].as_str(),
                );
            }
            None => {}
        }
    }
    assert!(
        replay.problems.is_empty(),
        "{} of {} exchanges differ from the real API server:\n{}",
        replay.problems.len(),
        replay.compared,
        replay.problems.join("\n")
    );
}
