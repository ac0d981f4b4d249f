//! The replication policy shared by vaults and per-workload overrides, and the duration syntax
//! every duration field uses (Go's, as CEL's `duration()` parses it).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// CEL rule: at least 30s between crash-consistent points.
pub const CRASH_FREQUENCY_RULE: &str = "duration(self) >= duration('30s')";
pub const CRASH_FREQUENCY_MESSAGE: &str =
    "replicationPolicy.crashConsistentFrequency must be a duration of at least 30s, e.g. 5m";
pub const APP_FREQUENCY_RULE: &str = "self == 'off' || duration(self) >= duration('1m')";
pub const APP_FREQUENCY_MESSAGE: &str =
    "replicationPolicy.appConsistentFrequency must be 'off' or a duration of at least 1m, e.g. 4h";
pub const RETENTION_RULE: &str = "duration(self) >= duration('1m')";
pub const RETENTION_MESSAGE: &str =
    "replicationPolicy.recoveryPointRetention must be a duration of at least 1m, e.g. 24h";

/// How often recovery points are taken and how long they are kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("duration(self.recoveryPointRetention) >= duration(self.crashConsistentFrequency)").message("replicationPolicy.recoveryPointRetention must be at least replicationPolicy.crashConsistentFrequency"))]
pub struct ReplicationPolicy {
    /// Interval between crash-consistent recovery points (Go duration, minimum 30s).
    #[serde(default = "default_crash_frequency")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = kube::core::Rule::new(CRASH_FREQUENCY_RULE).message(CRASH_FREQUENCY_MESSAGE))]
    pub crash_consistent_frequency: String,
    /// Interval between app-consistent recovery points, or `off`.
    #[serde(default = "default_app_frequency")]
    #[schemars(length(max = 32), regex(pattern = r"^(off|([0-9]+(ms|s|m|h))+)$"))]
    #[x_kube(validation = kube::core::Rule::new(APP_FREQUENCY_RULE).message(APP_FREQUENCY_MESSAGE))]
    pub app_consistent_frequency: String,
    /// How long recovery points are kept (the newest app-consistent point is always kept).
    #[serde(default = "default_retention")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = kube::core::Rule::new(RETENTION_RULE).message(RETENTION_MESSAGE))]
    pub recovery_point_retention: String,
}

impl Default for ReplicationPolicy {
    fn default() -> Self {
        Self {
            crash_consistent_frequency: default_crash_frequency(),
            app_consistent_frequency: default_app_frequency(),
            recovery_point_retention: default_retention(),
        }
    }
}

/// Per-workload override of the vault's policy: each field set here wins.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationPolicyOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = kube::core::Rule::new(CRASH_FREQUENCY_RULE).message(CRASH_FREQUENCY_MESSAGE))]
    pub crash_consistent_frequency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^(off|([0-9]+(ms|s|m|h))+)$"))]
    #[x_kube(validation = kube::core::Rule::new(APP_FREQUENCY_RULE).message(APP_FREQUENCY_MESSAGE))]
    pub app_consistent_frequency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = kube::core::Rule::new(RETENTION_RULE).message(RETENTION_MESSAGE))]
    pub recovery_point_retention: Option<String>,
}

impl ReplicationPolicy {
    /// The effective policy of a workload: the vault's, with the override's fields on top.
    pub fn with_override(&self, o: Option<&ReplicationPolicyOverride>) -> Self {
        let Some(o) = o else { return self.clone() };
        Self {
            crash_consistent_frequency: o
                .crash_consistent_frequency
                .clone()
                .unwrap_or_else(|| self.crash_consistent_frequency.clone()),
            app_consistent_frequency: o
                .app_consistent_frequency
                .clone()
                .unwrap_or_else(|| self.app_consistent_frequency.clone()),
            recovery_point_retention: o
                .recovery_point_retention
                .clone()
                .unwrap_or_else(|| self.recovery_point_retention.clone()),
        }
    }
}

fn default_crash_frequency() -> String {
    "5m".into()
}
fn default_app_frequency() -> String {
    "4h".into()
}
fn default_retention() -> String {
    "24h".into()
}

/// The longest duration any field accepts: 100 years. Installs without CEL admit any string
/// the pattern allows (`99999999999h`); times computed from durations stay far inside the range
/// timestamps can hold.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a Go-style duration (`30s`, `5m`, `1h30m`, `250ms`) as the CRD's pattern admits it,
/// at most [`MAX_DURATION`]; never panics, whatever the text.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 30s, 5m or 1h30m");
    let too_long = || format!("{text:?} is longer than 876000h (100 years)");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        // Only digits: a parse error is an overflow.
        let value: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => std::time::Duration::from_millis(1),
            "s" => std::time::Duration::from_secs(1),
            "m" => std::time::Duration::from_secs(60),
            "h" => std::time::Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let value = u32::try_from(value).map_err(|_| too_long())?;
        total = unit
            .checked_mul(value)
            .and_then(|d| total.checked_add(d))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(too_long)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("876000h"), Ok(MAX_DURATION));
        for huge in [
            "876001h",
            "99999999999h",
            "4294967295h4294967295h",
            "9999999999999999999999h",
        ] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains("100 years"), "{huge}: {e}");
        }
        for bad in ["", "5", "m", "5d", "1.5h", "-5m", "5 m", "5ü", "ü"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn override_replaces_only_given_fields() {
        let base = ReplicationPolicy::default();
        let o = ReplicationPolicyOverride {
            crash_consistent_frequency: Some("1m".into()),
            ..Default::default()
        };
        let effective = base.with_override(Some(&o));
        assert_eq!(effective.crash_consistent_frequency, "1m");
        assert_eq!(effective.recovery_point_retention, "24h");
    }
}
