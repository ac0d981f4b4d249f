//! Where a point comes from ([`Origin`]): the protecting cluster and the workload's definition,
//! so that a standby cluster finds what to fail over in the target location alone. Manifests
//! written before origins existed still decode ([`decode_manifest_bytes`]); every origin read is
//! checked ([`check_origin`]); [`Repository::workloads`] lists the workloads a repository holds
//! points of.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::format::{Consistency, Manifest, Origin, Stats, VolumeContent, VolumeManifest, limits};
use super::{RepoError, Repository};

/// Longest cluster uid, failover uid or kind accepted; longest cluster name.
pub const UID_MAX: usize = 128;
pub const CLUSTER_NAME_MAX: usize = 253;
pub const KIND_MAX: usize = 63;

/// A manifest as it was written before origins: the same fields, without the last one. Kept
/// only to read such manifests (and, in tests, to make their bytes).
#[derive(Serialize, Deserialize)]
pub(crate) struct ManifestWithoutOrigin {
    pub id: String,
    pub time: String,
    pub workload: String,
    pub consistency: Consistency,
    pub source_zone: Option<String>,
    pub parent: Option<String>,
    pub volumes: Vec<VolumeManifest>,
    pub stats: Stats,
}

impl From<ManifestWithoutOrigin> for Manifest {
    fn from(m: ManifestWithoutOrigin) -> Self {
        Manifest {
            id: m.id,
            time: m.time,
            workload: m.workload,
            consistency: m.consistency,
            source_zone: m.source_zone,
            parent: m.parent,
            volumes: m.volumes,
            stats: m.stats,
            origin: None,
        }
    }
}

/// Decodes a manifest's postcard bytes, of either layout. The origin is the last field, so a
/// manifest written before it is the current encoding cut short just before the origin's tag:
/// decoding it as the current layout always ends in `DeserializeUnexpectedEnd`, and only then
/// is it decoded as the previous layout. Both decodes must consume every byte, so exactly one
/// layout accepts any input: a current manifest never passes for an old one, and damage is not
/// silently cut off.
pub fn decode_manifest_bytes(raw: &[u8]) -> Result<Manifest, String> {
    let rest = |n: usize| format!("manifest: {n} bytes after its end");
    let mut manifest = match postcard::take_from_bytes::<Manifest>(raw) {
        Ok((m, [])) => Ok(m),
        Ok((_, extra)) => Err(rest(extra.len())),
        Err(postcard::Error::DeserializeUnexpectedEnd) => {
            match postcard::take_from_bytes::<ManifestWithoutOrigin>(raw) {
                Ok((m, [])) => Ok(m.into()),
                Ok((_, extra)) => Err(rest(extra.len())),
                Err(e) => Err(format!("manifest: {e}")),
            }
        }
        Err(e) => Err(format!("manifest: {e}")),
    }?;
    // A decoded list grows by doubling (its length is not trusted for an allocation up front):
    // a tree's entries give back what they were not using, up to half of them.
    for v in &mut manifest.volumes {
        if let VolumeContent::Tree(nodes) = &mut v.content {
            nodes.shrink_to_fit();
        }
    }
    Ok(manifest)
}

/// A DNS-1123 label: at most 63 lowercase alphanumerics or '-', starting and ending with an
/// alphanumeric (what a namespace's name is).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: at most 253 characters, labels separated by '.' (what the name of a
/// StatefulSet or a Deployment is).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A bounded, non-empty string without control characters.
fn check_text(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(format!(
            "{what} {:?} is empty, longer than {max} bytes or has control characters",
            truncated(s)
        ));
    }
    Ok(())
}

/// At most 64 characters of `s`, for messages.
pub(crate) fn truncated(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// `namespace/name` split, both checked as Kubernetes names.
pub fn split_workload(workload: &str) -> Result<(&str, &str), String> {
    match workload.split_once('/') {
        Some((ns, name)) if is_dns1123_label(ns) && is_dns1123_subdomain(name) => Ok((ns, name)),
        _ => Err(format!(
            "workload {:?}: expected namespace/name, a DNS-1123 label and a DNS-1123 subdomain",
            truncated(workload)
        )),
    }
}

/// What an origin must be: bounded strings, Kubernetes names, a definition that is a JSON
/// object of at most [`limits::DEFINITION`] bytes.
pub fn check_origin(o: &Origin) -> Result<(), String> {
    let bad = |why: String| format!("origin: {why}");
    check_text("cluster uid", &o.cluster_uid, UID_MAX).map_err(bad)?;
    check_text("cluster name", &o.cluster_name, CLUSTER_NAME_MAX).map_err(bad)?;
    if o.kind.is_empty()
        || o.kind.len() > KIND_MAX
        || !o.kind.bytes().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(bad(format!(
            "kind {:?} is not 1 to {KIND_MAX} ASCII letters and digits",
            truncated(&o.kind)
        )));
    }
    if !is_dns1123_label(&o.namespace) {
        return Err(bad(format!(
            "namespace {:?} is not a DNS-1123 label",
            truncated(&o.namespace)
        )));
    }
    if !is_dns1123_subdomain(&o.name) {
        return Err(bad(format!(
            "name {:?} is not a DNS-1123 subdomain",
            truncated(&o.name)
        )));
    }
    if o.definition.len() > limits::DEFINITION {
        return Err(bad(format!(
            "the definition has {} bytes, more than {}",
            o.definition.len(),
            limits::DEFINITION
        )));
    }
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&o.definition)
        .map_err(|e| bad(format!("the definition is not a JSON object: {e}")))?;
    Ok(())
}

/// What a listing says of a point's origin: who protected it, not the definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginSummary {
    pub cluster_uid: String,
    pub cluster_name: String,
    pub kind: String,
}

impl From<&Origin> for OriginSummary {
    fn from(o: &Origin) -> Self {
        Self {
            cluster_uid: o.cluster_uid.clone(),
            cluster_name: o.cluster_name.clone(),
            kind: o.kind.clone(),
        }
    }
}

/// A workload a repository holds points of, described by its latest point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadPoints {
    /// `namespace/name`, as the manifests say.
    pub workload: String,
    /// From the latest point's origin; empty when it has none.
    pub kind: String,
    pub cluster_uid: String,
    pub cluster_name: String,
    pub points: usize,
    pub latest_id: String,
    /// RFC 3339, as the latest manifest holds it.
    pub latest_time: String,
}

impl Repository {
    /// The origin of `point`: `None` for a point written before origins, or without one.
    pub async fn origin(&self, point: &str) -> Result<Option<Origin>, RepoError> {
        Ok(self.manifest(point).await?.origin)
    }

    /// Every workload this location holds points of, by name, with its latest point. Reads
    /// every manifest (a few at a time, each dropped once counted).
    pub async fn workloads(&self) -> Result<Vec<WorkloadPoints>, RepoError> {
        let ids = self.point_ids().await?;
        let mut by_workload: BTreeMap<String, WorkloadPoints> = BTreeMap::new();
        let mut manifests = futures::stream::iter(ids)
            .map(|id| async move { self.manifest(&id).await })
            .buffered(8);
        // Ids sort by time and `buffered` keeps their order: each point is newer than the last.
        while let Some(m) = manifests.try_next().await? {
            let (kind, cluster_uid, cluster_name) = match &m.origin {
                Some(o) => (
                    o.kind.clone(),
                    o.cluster_uid.clone(),
                    o.cluster_name.clone(),
                ),
                None => Default::default(),
            };
            let entry = by_workload
                .entry(m.workload.clone())
                .or_insert_with(|| WorkloadPoints {
                    workload: m.workload.clone(),
                    kind: String::new(),
                    cluster_uid: String::new(),
                    cluster_name: String::new(),
                    points: 0,
                    latest_id: String::new(),
                    latest_time: String::new(),
                });
            entry.points += 1;
            entry.kind = kind;
            entry.cluster_uid = cluster_uid;
            entry.cluster_name = cluster_name;
            entry.latest_id = m.id;
            entry.latest_time = m.time;
        }
        Ok(by_workload.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::format::{self, VolumeContent};

    pub(crate) fn origin(cluster: &str, namespace: &str, name: &str) -> Origin {
        Origin {
            cluster_uid: format!("{cluster}-uid"),
            cluster_name: cluster.into(),
            kind: "StatefulSet".into(),
            namespace: namespace.into(),
            name: name.into(),
            definition: br#"{"apiVersion":"apps/v1","kind":"StatefulSet"}"#.to_vec(),
        }
    }

    fn old(id: &str) -> ManifestWithoutOrigin {
        ManifestWithoutOrigin {
            id: id.into(),
            time: "2026-01-01T00:00:00Z".into(),
            workload: "apps/db".into(),
            consistency: Consistency::AppConsistent,
            source_zone: Some("zone-a".into()),
            parent: None,
            volumes: vec![VolumeManifest {
                name: "data".into(),
                content: VolumeContent::Raw(format::FileData::default()),
            }],
            stats: Stats::default(),
        }
    }

    #[test]
    fn a_manifest_of_the_layout_before_origins_still_decodes() {
        // Bytes of the previous layout, written out by hand from postcard's rules: id "p1",
        // time "t", workload "ns/w", CrashConsistent, no zone, no parent, no volume, zero stats.
        let golden: &[u8] = &[
            2, b'p', b'1', 1, b't', 4, b'n', b's', b'/', b'w', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let m = decode_manifest_bytes(golden).unwrap();
        assert_eq!((m.id.as_str(), m.workload.as_str()), ("p1", "ns/w"));
        assert_eq!(m.consistency, Consistency::CrashConsistent);
        assert_eq!(m.origin, None);
        // And one made by the previous struct, with a volume, sealed and opened as stored.
        let bytes = postcard::to_stdvec(&old("p2")).unwrap();
        let m = decode_manifest_bytes(&bytes).unwrap();
        assert_eq!(m.volumes.len(), 1);
        assert_eq!(m.source_zone.as_deref(), Some("zone-a"));
        assert_eq!(m.origin, None);
        let mut sized = (bytes.len() as u64).to_le_bytes().to_vec();
        sized.extend(zstd::bulk::compress(&bytes, 3).unwrap());
        let keys = crate::repository::crypto::Keys::from_master(&[7; 32]);
        let sealed = crate::repository::crypto::seal(
            &keys.data_key,
            crate::repository::crypto::Kind::Manifest,
            b"p2",
            &sized,
        );
        let m = format::decode_manifest(&keys, "p2", "loc/points/p2", &sealed).unwrap();
        assert_eq!((m.id.as_str(), m.origin), ("p2", None));
    }

    #[test]
    fn the_current_layout_round_trips_and_neither_layout_passes_for_the_other() {
        let mut m: Manifest = old("p3").into();
        let old_len = postcard::to_stdvec(&old("p3")).unwrap().len();
        for origin in [None, Some(origin("east", "apps", "db"))] {
            m.origin = origin;
            let bytes = postcard::to_stdvec(&m).unwrap();
            assert_eq!(decode_manifest_bytes(&bytes).unwrap(), m);
            // Trailing bytes are refused, whichever layout they follow.
            let mut longer = bytes.clone();
            longer.push(0);
            let err = decode_manifest_bytes(&longer).unwrap_err();
            assert!(err.contains("after its end"), "{err}");
            // Cut short anywhere: refused, never a panic; except just before the origin's tag,
            // where what is left is exactly a manifest of the previous layout (a tenant holding
            // the key may write one: it is a point without an origin).
            for cut in 0..bytes.len() {
                match decode_manifest_bytes(&bytes[..cut]) {
                    Ok(short) if cut == old_len => assert_eq!(short.origin, None),
                    Ok(_) => panic!("cut at {cut} decoded"),
                    Err(_) => {}
                }
            }
        }
        let mut old_bytes = postcard::to_stdvec(&old("p4")).unwrap();
        old_bytes.push(7);
        assert!(decode_manifest_bytes(&old_bytes).is_err());
    }

    #[test]
    fn origins_are_bounded_and_checked() {
        check_origin(&origin("east", "apps", "db.v1")).unwrap();
        type Change = Box<dyn Fn(&mut Origin)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|o| o.cluster_uid.clear()), "cluster uid"),
            (Box::new(|o| o.cluster_uid = "u".repeat(129)), "cluster uid"),
            (Box::new(|o| o.cluster_name = "a\nb".into()), "cluster name"),
            (Box::new(|o| o.kind = "Stateful Set".into()), "kind"),
            (Box::new(|o| o.kind.clear()), "kind"),
            (Box::new(|o| o.namespace = "Apps".into()), "namespace"),
            (Box::new(|o| o.namespace = "a".repeat(64)), "namespace"),
            (Box::new(|o| o.name = "../etc".into()), "name"),
            (Box::new(|o| o.name = "a".repeat(254)), "name"),
            (Box::new(|o| o.name = "-db".into()), "name"),
            (
                Box::new(|o| o.definition = vec![b' '; limits::DEFINITION + 1]),
                "more than 1048576",
            ),
            (
                Box::new(|o| o.definition = b"[1,2]".to_vec()),
                "JSON object",
            ),
            (
                Box::new(|o| o.definition = b"{\"a\":".to_vec()),
                "JSON object",
            ),
            (Box::new(|o| o.definition = b"{} x".to_vec()), "JSON object"),
            (
                Box::new(|o| o.definition = vec![b'{', 0xff, b'}']),
                "JSON object",
            ),
            (
                Box::new(|o| {
                    o.definition = format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into()
                }),
                "JSON object",
            ),
        ];
        for (change, expected) in cases {
            let mut o = origin("east", "apps", "db");
            change(&mut o);
            let err = check_origin(&o).unwrap_err();
            assert!(
                err.starts_with("origin: ") && err.contains(expected),
                "{err}"
            );
        }
    }

    #[test]
    fn kubernetes_names() {
        let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(longest.len(), 253);
        for ok in ["a", "db-0", "a.b-c.d", &longest] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        let too_long = format!("{longest}b");
        for bad in [
            "",
            "A",
            "a_b",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a/b",
            &"a".repeat(64),
            &too_long,
        ] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
        assert!(is_dns1123_label("kube-system"));
        assert!(!is_dns1123_label("a.b"));
        assert_eq!(split_workload("apps/db").unwrap(), ("apps", "db"));
        for bad in ["apps", "apps/", "/db", "apps/db/x", "Apps/db", "a/../b"] {
            assert!(split_workload(bad).is_err(), "{bad}");
        }
    }
}
