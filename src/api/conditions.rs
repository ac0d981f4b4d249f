//! `metav1.Condition`-shaped conditions, kept as a list-map keyed by `type`.
//!
//! `lastTransitionTime` moves only when a condition's status flips, and every condition records
//! the generation it was computed from; the rest of the operator builds conditions with the
//! small constructors here and never edits the list by hand.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// True, False or Unknown, as in `metav1.ConditionStatus`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn from_bool(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }

    /// As the API writes it: `True`, `False` or `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// One observation of the object's state, shaped like `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type in CamelCase, e.g. `Ready`.
    #[schemars(length(max = 316))]
    pub r#type: String,
    pub status: ConditionStatus,
    /// The generation of the spec this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// When the status last changed.
    pub last_transition_time: Timestamp,
    /// Machine-readable CamelCase reason.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// What happened and what to do about it.
    #[schemars(length(max = 32768))]
    pub message: String,
}

impl Condition {
    pub fn new(
        r#type: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            r#type: r#type.into(),
            status,
            observed_generation: None,
            last_transition_time: Timestamp::UNIX_EPOCH,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Merges freshly computed conditions into the previous list: each condition gets
/// `observedGeneration`, and keeps its old `lastTransitionTime` unless its status flipped.
/// Conditions the new set does not mention are dropped. The result is sorted by type so that a
/// recomputation that changes nothing yields an identical list (and no status write).
pub fn merge_conditions(
    previous: &[Condition],
    fresh: Vec<Condition>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut merged: Vec<Condition> = fresh
        .into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            c.last_transition_time = match previous.iter().find(|p| p.r#type == c.r#type) {
                Some(p) if p.status == c.status => p.last_transition_time,
                _ => now,
            };
            c
        })
        .collect();
    merged.sort_by(|a, b| a.r#type.cmp(&b.r#type));
    merged
}

/// Whether `fresh` says something new compared with the previous condition of its type (its
/// status or reason changed, or it is the first): what deserves an Event.
pub fn transitioned(previous: Option<&[Condition]>, fresh: &Condition) -> bool {
    let before = previous.and_then(|p| find(p, &fresh.r#type));
    !before.is_some_and(|b| b.status == fresh.status && b.reason == fresh.reason)
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], r#type: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.r#type == r#type)
}

/// The JSON schema attributes of a conditions list: a list-map keyed by `type`, bounded so CEL
/// cost estimation stays small.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let obj = schema.ensure_object();
    obj.insert("x-kubernetes-list-type".into(), "map".into());
    obj.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    obj.insert("maxItems".into(), 16.into());
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let t1 = ts("2026-01-01T00:05:00Z");
        let first = merge_conditions(
            &[],
            vec![Condition::new(
                "Ready",
                ConditionStatus::False,
                "Pending",
                "a",
            )],
            Some(1),
            t0,
        );
        assert_eq!(first[0].last_transition_time, t0);
        assert_eq!(first[0].observed_generation, Some(1));

        let same = merge_conditions(
            &first,
            vec![Condition::new(
                "Ready",
                ConditionStatus::False,
                "Other",
                "b",
            )],
            Some(2),
            t1,
        );
        assert_eq!(
            same[0].last_transition_time, t0,
            "reason change alone keeps the time"
        );
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge_conditions(
            &same,
            vec![Condition::new("Ready", ConditionStatus::True, "Ok", "c")],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, t1);
    }

    #[test]
    fn merged_list_is_sorted_and_drops_stale_types() {
        let now = ts("2026-01-01T00:00:00Z");
        let prev = vec![Condition::new("Old", ConditionStatus::True, "X", "")];
        let merged = merge_conditions(
            &prev,
            vec![
                Condition::new("Ready", ConditionStatus::True, "A", ""),
                Condition::new("Beta", ConditionStatus::True, "B", ""),
            ],
            None,
            now,
        );
        let types: Vec<_> = merged.iter().map(|c| c.r#type.as_str()).collect();
        assert_eq!(types, ["Beta", "Ready"]);
    }
}
