//! The operator ↔ agent protocol, as data.
//!
//! - The operator starts a point by writing `status.pointInProgress` of the ReplicatedWorkload
//!   (id, requested consistency, capture method, claims).
//! - Each agent watches ReplicatedWorkloads, reads the claims of the point that are mounted on
//!   its node (the workload's own pods for `Live`, the reader pods of the point for `CSI`) and
//!   writes one *part* into the cache location under its node's name.
//! - The agent reports on its own registration Lease, in the `siterecovery.io/work` annotation:
//!   one entry per workload with a point in flight (Running, Done, Failed, bytes, message),
//!   and in `siterecovery.io/queued` the points that wait on its node for a capture slot.
//! - When reports cover every claim, the operator assembles the parts into the point, copies it
//!   to the target, prunes, and records the point in the workload's status.
//!
//! Every step is idempotent: a part is written with a conditional create (a restarted agent finds
//! its part and reports Done), assembly and replication skip what exists, temporary objects have
//! deterministic names.

use serde::{Deserialize, Serialize};

/// Annotation of a ReplicatedWorkload asking for a point now: any new value starts one (once
/// nothing is in flight), e.g. `kubectl annotate rw db siterecovery.io/request-point=$(date +%s) --overwrite`.
pub const POINT_REQUEST_ANNOTATION: &str = "siterecovery.io/request-point";

/// Annotation of the registration Lease that carries the agent's reports.
pub const WORK_ANNOTATION: &str = "siterecovery.io/work";
/// Annotation of the registration Lease that names the points whose claims the agent found
/// mounted on its node but has not started reading, for want of a capture slot: the random
/// suffixes of their ids (8 hex digits), space-separated. The operator waits for these rather
/// than giving them up as never started; a report per queued point would not fit on the Lease
/// when thousands wait.
pub const QUEUED_ANNOTATION: &str = "siterecovery.io/queued";
/// The most points one agent says are queued (9 bytes each on the Lease).
pub const MAX_QUEUED: usize = 8192;
/// Labels of the temporary objects of a CSI capture.
pub const POINT_LABEL: &str = "siterecovery.io/point";
pub const WORKLOAD_LABEL: &str = "siterecovery.io/replicated-workload";
pub const CLAIM_LABEL: &str = "siterecovery.io/claim";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkState {
    Running,
    Done,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WorkKind {
    /// A part of a ReplicatedWorkload's point (`workload` names the ReplicatedWorkload).
    #[default]
    Capture,
    /// Volumes of a Failover's restore (`workload` names the Failover).
    Restore,
    /// The filesystems of a point's claims on this node, frozen for its capture instant
    /// (`workload` names the ReplicatedWorkload): Running while frozen, Done once thawed (the
    /// message says for how long), Failed when they could not all be frozen.
    Freeze,
}

/// Annotation of a ReplicatedWorkload, set by the operator for the capture instant of a point
/// with `freezeFilesystems`: a [`FreezeRequest`] as JSON. Agents freeze the point's claims
/// mounted on their node while it asks, and thaw when it says `thaw`, when it goes, or at
/// `until`, whichever comes first.
pub const FREEZE_ANNOTATION: &str = "siterecovery.io/freeze";

/// What the operator asks of the agents for one point's freeze.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FreezeRequest {
    pub point: String,
    /// The workload's claims (their own names) whose filesystems are frozen.
    pub claims: Vec<String>,
    /// No filesystem stays frozen past this instant.
    pub until: jiff::Timestamp,
    /// The snapshots are cut: thaw now.
    #[serde(default)]
    pub thaw: bool,
}

impl FreezeRequest {
    /// The request an annotation holds; a malformed or oversized one asks for nothing.
    pub fn parse(text: Option<&String>) -> Option<Self> {
        let text = text.filter(|t| t.len() <= 64 * 1024)?;
        serde_json::from_str(text).ok()
    }
}

/// An agent's report on one workload's point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentWork {
    #[serde(default)]
    pub kind: WorkKind,
    pub namespace: String,
    pub workload: String,
    pub point: String,
    pub state: WorkState,
    /// Claims (the workload's names) this agent captured.
    #[serde(default)]
    pub claims: Vec<String>,
    /// The consistency the part really has.
    #[serde(default)]
    pub consistency: String,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// Bytes the part added to the cache (after deduplication, compression, encryption).
    #[serde(default)]
    pub stored_bytes: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Restores: the uid of the Failover, so that a report never counts for a later Failover
    /// that reuses the name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

impl AgentWork {
    /// A report of `kind` on `object`'s (a ReplicatedWorkload's or a Failover's) `point`, with
    /// no claims or bytes yet.
    pub fn about<K: kube::Resource>(
        kind: WorkKind,
        object: &K,
        point: &str,
        state: WorkState,
        message: String,
    ) -> Self {
        use kube::ResourceExt;
        Self {
            kind,
            namespace: object.namespace().unwrap_or_default(),
            workload: object.name_any(),
            point: point.to_string(),
            state,
            claims: vec![],
            consistency: String::new(),
            bytes_done: 0,
            bytes_total: 0,
            stored_bytes: 0,
            message,
            owner: object.uid().unwrap_or_default(),
        }
    }
}

/// The largest report annotation read: what the API server allows for all of an object's
/// annotations together. Anything larger is not an agent's.
pub const MAX_REPORTS_BYTES: usize = 256 * 1024;
/// The most reports one annotation may carry, and the most claims one report may name.
pub const MAX_REPORTS: usize = 1024;
pub const MAX_CLAIMS_PER_REPORT: usize = 1024;
/// Longest report message kept (in characters): messages end up in conditions and events.
pub const MAX_REPORT_MESSAGE: usize = 1024;

/// Why a report annotation was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the reports are {0} bytes, more than {MAX_REPORTS_BYTES}")]
    TooLarge(usize),
    #[error("the reports are not a JSON list of reports: {0}")]
    Malformed(String),
    #[error("{0} reports, more than {MAX_REPORTS}")]
    TooMany(usize),
    #[error("a report names {0} claims, more than {MAX_CLAIMS_PER_REPORT}")]
    TooManyClaims(usize),
}

/// Decodes the `siterecovery.io/work` annotation. Pure and bounded (the fuzz target's entry
/// point): the size is checked before parsing, and counts and message lengths after; it never
/// panics on any input.
pub fn decode_reports(bytes: &[u8]) -> Result<Vec<AgentWork>, ReportError> {
    if bytes.len() > MAX_REPORTS_BYTES {
        return Err(ReportError::TooLarge(bytes.len()));
    }
    let mut reports: Vec<AgentWork> =
        serde_json::from_slice(bytes).map_err(|e| ReportError::Malformed(e.to_string()))?;
    if reports.len() > MAX_REPORTS {
        return Err(ReportError::TooMany(reports.len()));
    }
    for r in &mut reports {
        if r.claims.len() > MAX_CLAIMS_PER_REPORT {
            return Err(ReportError::TooManyClaims(r.claims.len()));
        }
        if r.message.chars().count() > MAX_REPORT_MESSAGE {
            r.message = r
                .message
                .chars()
                .take(MAX_REPORT_MESSAGE)
                .collect::<String>()
                + "…";
        }
    }
    Ok(reports)
}

/// Reads the reports in a Lease's annotations; a malformed or oversized annotation reads as
/// none (and is logged).
pub fn parse_reports(text: Option<&String>) -> Vec<AgentWork> {
    let Some(text) = text else { return vec![] };
    decode_reports(text.as_bytes()).unwrap_or_else(|e| {
        // Read at every reconcile: said once per read at debug level, not as a warning flood.
        tracing::debug!(error = %e, "ignoring an agent's report annotation");
        vec![]
    })
}

/// What a queued point is known by on the Lease: the random suffix of its id (8 lower-case hex
/// digits), or `None` for an id without one.
pub fn queued_key(point: &str) -> Option<&str> {
    let suffix = point.rsplit_once('-')?.1;
    is_queued_key(suffix).then_some(suffix)
}

/// Whether `s` is a queued point's key: 8 lower-case hex digits.
fn is_queued_key(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The queued annotation's value for `points` (ids): at most [`MAX_QUEUED`] of them, those
/// without a suffix left out.
pub fn encode_queued<'a>(points: impl IntoIterator<Item = &'a str>) -> String {
    let keys: Vec<&str> = points
        .into_iter()
        .filter_map(queued_key)
        .take(MAX_QUEUED)
        .collect();
    keys.join(" ")
}

/// Reads a queued annotation: a value longer than [`MAX_QUEUED`] keys can be is not an
/// agent's and names nothing; tokens that are not keys are skipped.
pub fn decode_queued(text: Option<&String>) -> std::collections::BTreeSet<String> {
    let Some(text) = text.filter(|t| t.len() < MAX_QUEUED * 9) else {
        return Default::default();
    };
    text.split(' ')
        .filter(|t| is_queued_key(t))
        .map(String::from)
        .collect()
}

/// Lower-case, DNS-safe form of a point id (point ids carry an upper-case `T` and `Z`).
pub fn point_label(point: &str) -> String {
    point.to_ascii_lowercase()
}

/// Name of the VolumeSnapshot, temporary claim and reader pod of one claim of a CSI point.
pub fn temporary_name(claim: &str, point: &str) -> String {
    let base = format!("sr-{}-{claim}", point_label(point));
    if base.len() <= 63 {
        return base;
    }
    // Pods and labels allow 63 characters: keep the point and a hash of the claim.
    let digest = blake3::hash(claim.as_bytes()).to_hex();
    format!("sr-{}-{}", point_label(point), &digest[..16])
}

/// The claim the agent reads for `claim`: the claim itself (Live) or the point's temporary claim
/// restored from its VolumeSnapshot (CSI).
pub fn read_claim(method: crate::api::vault::SnapshotMethod, claim: &str, point: &str) -> String {
    match method {
        crate::api::vault::SnapshotMethod::Live => claim.to_string(),
        crate::api::vault::SnapshotMethod::Csi => temporary_name(claim, point),
    }
}

/// Label of a Failover's writer pods and target claims.
pub const FAILOVER_LABEL: &str = "siterecovery.io/failover";
/// The uid of the Failover that made an object: an object left by an earlier Failover of the
/// same name is never taken for this one's.
pub const FAILOVER_UID_LABEL: &str = "siterecovery.io/failover-uid";
/// On a pod that holds a stopped workload's claims mounted (read-only) so that its final
/// point can be read: the ReplicatedWorkload it holds them for.
pub const HOLD_LABEL: &str = "siterecovery.io/holds-for";

/// The holder pod of volume `index` of a planned failover.
pub fn holder_name(failover: &str, index: usize) -> String {
    format!("sr-hold-{failover}-{index}")
}

/// Name of the writer pod that fills `target_claim` for a failover.
pub fn writer_name(failover: &str, index: usize) -> String {
    format!("sr-restore-{failover}-{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_points_are_named_by_their_suffix_and_crafted_values_name_nothing_else() {
        assert_eq!(queued_key("20261203T182934000Z-08fced59"), Some("08fced59"));
        for odd in [
            "p1",
            "x-08FCED59",
            "x-08fced5",
            "x-08fced590",
            "x-08fced5g",
            "",
        ] {
            assert_eq!(queued_key(odd), None, "{odd}");
        }
        let value = encode_queued(["a-00000001", "b-0000000f", "no suffix"]);
        assert_eq!(value, "00000001 0000000f");
        let read = decode_queued(Some(&value));
        assert_eq!(read, ["00000001", "0000000f"].map(String::from).into());
        // Tokens that are not suffixes are skipped; a value longer than any agent writes is
        // not an agent's and names nothing.
        let mixed = "00000001 ../../etc x 0000000F  0000000e".to_string();
        assert_eq!(
            decode_queued(Some(&mixed)),
            ["00000001", "0000000e"].map(String::from).into()
        );
        let huge = "00000001 ".repeat(MAX_QUEUED + 1);
        assert!(decode_queued(Some(&huge)).is_empty());
        assert!(decode_queued(None).is_empty());
        let many: Vec<String> = (0..MAX_QUEUED as u32 + 10)
            .map(|i| format!("p-{i:08x}"))
            .collect();
        let value = encode_queued(many.iter().map(String::as_str));
        assert_eq!(decode_queued(Some(&value)).len(), MAX_QUEUED);
    }

    #[test]
    fn crafted_report_annotations_are_refused_without_panicking() {
        let one = r#"{"namespace":"apps","workload":"db","point":"p","state":"Running"}"#;
        assert_eq!(
            decode_reports(format!("[{one}]").as_bytes()).unwrap().len(),
            1
        );
        let huge = vec![b' '; MAX_REPORTS_BYTES + 1];
        assert_eq!(
            decode_reports(&huge),
            Err(ReportError::TooLarge(MAX_REPORTS_BYTES + 1))
        );
        let many = format!("[{}]", vec![one; MAX_REPORTS + 1].join(","));
        assert!(matches!(
            decode_reports(many.as_bytes()),
            Err(ReportError::TooMany(_))
        ));
        let deep = "[".repeat(MAX_REPORTS_BYTES + 1);
        assert!(matches!(
            decode_reports(deep.as_bytes()),
            Err(ReportError::TooLarge(_))
        ));
        let nested = "[".repeat(10_000);
        assert!(matches!(
            decode_reports(nested.as_bytes()),
            Err(ReportError::Malformed(_))
        ));
        for bad in [
            &b"\xff\xfe"[..],
            b"{}",
            b"null",
            b"[{\"state\":\"Bogus\"}]",
            b"",
        ] {
            assert!(decode_reports(bad).is_err(), "{bad:?}");
        }
        let long = format!(
            r#"[{{"namespace":"a","workload":"b","point":"p","state":"Failed","message":"{}","bytesDone":18446744073709551615}}]"#,
            "x".repeat(100_000)
        );
        let r = decode_reports(long.as_bytes()).unwrap();
        assert!(r[0].message.chars().count() <= MAX_REPORT_MESSAGE + 1);
        assert_eq!(r[0].bytes_done, u64::MAX);
    }
}
