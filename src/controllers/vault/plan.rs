//! The vault decision: a pure function of the spec, what was observed and the clock.

use std::time::Duration;

use crate::api::conditions::{Condition, ConditionStatus, find, transitioned};
use crate::api::policy::parse_duration;
use crate::api::reasons::{ConditionType as T, EventReason, VaultReason as R};
use crate::api::vault::{Location, RecoveryVaultSpec, RecoveryVaultStatus, Redundancy};
use crate::controllers::PlannedEvent;
use crate::controllers::error::InvalidSpec;

use super::observe::{KeyProbe, Observed, StorageProbe};

/// Minimum length of the key-encryption key.
pub const MIN_KEY_BYTES: usize = 32;
/// How often storage is probed again when nothing changes.
pub const RECHECK: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the directory of a filesystem location.
    CreateDirectory(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub conditions: Vec<Condition>,
    pub separation: Option<Redundancy>,
    pub cache_region: Option<String>,
    pub target_region: Option<String>,
    pub actions: Vec<Action>,
    pub events: Vec<PlannedEvent>,
    pub requeue: Duration,
}

/// The checks CEL cannot make (or that a CRD installed without validation skipped).
pub fn validate(spec: &RecoveryVaultSpec) -> Result<(), InvalidSpec> {
    let p = &spec.replication_policy;
    let duration = |field: &'static str, text: &str| {
        parse_duration(text).map_err(|problem| InvalidSpec::Unreadable { field, problem })
    };
    let field = "spec.replicationPolicy.crashConsistentFrequency";
    if duration(field, &p.crash_consistent_frequency)? < Duration::from_secs(30) {
        return Err(InvalidSpec::BelowMinimum {
            field,
            minimum: "30s",
        });
    }
    if p.app_consistent_frequency != "off" {
        duration(
            "spec.replicationPolicy.appConsistentFrequency",
            &p.app_consistent_frequency,
        )?;
    }
    duration(
        "spec.replicationPolicy.recoveryPointRetention",
        &p.recovery_point_retention,
    )?;
    let backends = |l: &Location| {
        let s = &l.storage;
        [
            s.filesystem.is_some(),
            s.volume_claim.is_some(),
            s.s3.is_some(),
            s.azure_blob.is_some(),
            s.gcs.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    };
    for (field, location) in [
        ("spec.cache.storage", &spec.cache),
        ("spec.target.storage", &spec.target),
    ] {
        if backends(location) != 1 {
            return Err(InvalidSpec::NotExactlyOne {
                field,
                choices: "filesystem, volumeClaim, s3, azureBlob or gcs",
            });
        }
    }
    Ok(())
}

/// StorageReachable, from both locations' probes; asks for a missing directory to be made.
fn storage_condition(
    spec: &RecoveryVaultSpec,
    observed: &Observed,
    actions: &mut Vec<Action>,
) -> Condition {
    let mut storage_problems = Vec::new();
    for (name, location, probe) in [
        ("cache", &spec.cache, &observed.cache),
        ("target", &spec.target, &observed.target),
    ] {
        match probe {
            StorageProbe::Invalid(m) => storage_problems.push((R::InvalidSpec, m.clone())),
            StorageProbe::Writable
            | StorageProbe::ClaimBound
            | StorageProbe::ObjectStoreReachable => {}
            StorageProbe::Missing => {
                if let Some(fs) = &location.storage.filesystem {
                    actions.push(Action::CreateDirectory(fs.path.clone()));
                }
                storage_problems.push((
                    R::StorageUnreachable,
                    format!("{name} directory does not exist yet; creating it"),
                ));
            }
            StorageProbe::Unusable(m) => {
                storage_problems.push((R::StorageUnreachable, format!("{name} location: {m}")))
            }
            StorageProbe::ClaimMissing => storage_problems.push((
                R::ClaimNotFound,
                format!(
                    "spec.{name}.storage.volumeClaim.claimName: PersistentVolumeClaim not found"
                ),
            )),
            StorageProbe::ClaimNotBound(phase) => storage_problems.push((
                R::ClaimNotBound,
                format!("spec.{name}.storage.volumeClaim.claimName: claim is {phase}, not Bound"),
            )),
            StorageProbe::SecretMissing(secret) => storage_problems.push((
                R::SecretNotFound,
                format!("spec.{name}.storage: credentials Secret {secret} not found"),
            )),
        }
    }
    let worst = storage_problems
        .iter()
        .find(|(r, _)| *r == R::InvalidSpec)
        .or(storage_problems.first());
    if let Some((reason, _)) = worst {
        let message = storage_problems
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Condition::new(
            T::StorageReachable,
            ConditionStatus::False,
            *reason,
            message,
        )
    } else {
        Condition::new(
            T::StorageReachable,
            ConditionStatus::True,
            R::StorageReachable,
            "cache and target locations answer",
        )
    }
}

/// Separated: cache and target as far apart as `spec.redundancy` asks.
fn separated_condition(spec: &RecoveryVaultSpec, sep: &Separation) -> Condition {
    match &sep.problem {
        None => Condition::new(
            T::Separated,
            ConditionStatus::True,
            R::Separated,
            format!(
                "cache and target are separated by {} (required: {})",
                sep.measured.as_str(),
                spec.redundancy.as_str()
            ),
        ),
        Some((reason, message)) => Condition::new(
            T::Separated,
            ConditionStatus::False,
            *reason,
            message.clone(),
        ),
    }
}

/// What is wrong with the encryption key, if anything (reported through Ready).
fn key_problem(spec: &RecoveryVaultSpec, key: &KeyProbe) -> Option<(R, String)> {
    match key {
        KeyProbe::Placeholder => Some((
            R::PlaceholderKey,
            crate::vault_access::placeholder_key_message(
                &spec.encryption.key_secret_ref.name,
                &spec.encryption.key_secret_ref.key,
            ),
        )),
        KeyProbe::Present { len } if *len >= MIN_KEY_BYTES => None,
        KeyProbe::Present { len } => Some((
            R::SecretNotFound,
            format!(
                "spec.encryption.keySecretRef: key {:?} of Secret {} has {len} bytes; at least {MIN_KEY_BYTES} are required",
                spec.encryption.key_secret_ref.key, spec.encryption.key_secret_ref.name
            ),
        )),
        KeyProbe::SecretMissing => Some((
            R::SecretNotFound,
            format!(
                "spec.encryption.keySecretRef: Secret {} not found",
                spec.encryption.key_secret_ref.name
            ),
        )),
        KeyProbe::KeyMissing => Some((
            R::SecretNotFound,
            format!(
                "spec.encryption.keySecretRef: Secret {} has no key {:?}",
                spec.encryption.key_secret_ref.name, spec.encryption.key_secret_ref.key
            ),
        )),
    }
}

/// Ready: the key, then storage, then separation.
fn ready_condition(
    key_problem: Option<(R, String)>,
    storage: &Condition,
    separated: &Condition,
) -> Condition {
    if let Some((reason, message)) = key_problem {
        Condition::new(T::Ready, ConditionStatus::False, reason, message)
    } else if !storage.is_true() {
        // A spec the installation's rules refuse is the user's to fix, not storage to wait for.
        let reason = if storage.reason == R::InvalidSpec.as_str() {
            R::InvalidSpec
        } else {
            R::StorageNotReady
        };
        Condition::new(
            T::Ready,
            ConditionStatus::False,
            reason,
            storage.message.clone(),
        )
    } else if !separated.is_true() {
        Condition::new(
            T::Ready,
            ConditionStatus::False,
            R::NotSeparated,
            separated.message.clone(),
        )
    } else {
        Condition::new(
            T::Ready,
            ConditionStatus::True,
            R::VaultReady,
            separated.message.clone(),
        )
    }
}

pub fn plan(
    spec: &RecoveryVaultSpec,
    previous: Option<&RecoveryVaultStatus>,
    observed: &Observed,
) -> Plan {
    let mut actions = Vec::new();
    let mut conditions = Vec::new();

    if let Err(invalid) = validate(spec) {
        conditions.push(Condition::new(
            T::Ready,
            ConditionStatus::False,
            R::InvalidSpec,
            invalid.to_string(),
        ));
        let events = ready_events(previous, &conditions);
        return Plan {
            conditions,
            separation: None,
            cache_region: None,
            target_region: None,
            actions,
            events,
            requeue: RECHECK,
        };
    }

    let storage = storage_condition(spec, observed, &mut actions);
    let sep = separation(spec, &observed.nodes);
    let separated = separated_condition(spec, &sep);
    let ready = ready_condition(
        key_problem(spec, &observed.encryption_key),
        &storage,
        &separated,
    );
    conditions.extend([ready, storage, separated]);
    let events = ready_events(previous, &conditions);
    let requeue = if actions.is_empty() {
        RECHECK
    } else {
        Duration::from_secs(1)
    };
    Plan {
        conditions,
        separation: Some(sep.measured),
        cache_region: sep.cache_region,
        target_region: sep.target_region,
        actions,
        events,
        requeue,
    }
}

/// An event when Ready changes status or reason.
fn ready_events(
    previous: Option<&RecoveryVaultStatus>,
    conditions: &[Condition],
) -> Vec<PlannedEvent> {
    let Some(ready) = find(conditions, T::Ready.as_str()) else {
        return vec![];
    };
    if !transitioned(previous.map(|p| p.conditions.as_slice()), ready) {
        return vec![];
    }
    if ready.is_true() {
        vec![PlannedEvent::normal(
            EventReason::VaultReady,
            "Validate",
            ready.message.clone(),
        )]
    } else {
        vec![PlannedEvent::warning(
            EventReason::VaultNotReady,
            "Validate",
            format!("{}: {}", ready.reason, ready.message),
        )]
    }
}

/// The condition of one type, for tests and callers that read plans.
pub fn condition(plan: &Plan, t: T) -> &Condition {
    find(&plan.conditions, t.as_str()).expect("every plan sets every vault condition it reports")
}

mod separation;
pub use separation::{Separation, separation};

#[cfg(test)]
mod tests;
