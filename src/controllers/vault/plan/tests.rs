use serde_json::json;

use super::*;
use crate::api::reasons::ConditionType as T;
use crate::controllers::context::NodeTopology;

fn spec(v: serde_json::Value) -> RecoveryVaultSpec {
    let mut base = json!({
        "redundancy": "Zone",
        "cache": {"zone": "zone-a", "storage": {"filesystem": {"path": "/cache"}}},
        "target": {"zone": "zone-b", "storage": {"filesystem": {"path": "/target"}}},
        "encryption": {"keySecretRef": {"name": "key"}},
    });
    json_patch::merge(&mut base, &v);
    serde_json::from_value(base).expect("spec parses")
}

fn node(name: &str, zone: &str, region: &str) -> NodeTopology {
    NodeTopology {
        name: name.into(),
        zone: Some(zone.into()),
        region: Some(region.into()),
    }
}

fn observed() -> Observed {
    Observed {
        nodes: vec![
            node("n1", "zone-a", "eu"),
            node("n2", "zone-b", "eu"),
            node("n3", "zone-c", "us"),
        ],
        cache: StorageProbe::Writable,
        target: StorageProbe::Writable,
        encryption_key: KeyProbe::Present { len: 32 },
    }
}

#[test]
fn table_of_vault_decisions() {
    struct Case {
        name: &'static str,
        spec: serde_json::Value,
        observed: fn(&mut Observed),
        ready: (ConditionStatus, R),
        separated: Option<(ConditionStatus, R)>,
        message_has: &'static str,
    }
    let cases = [
        Case {
            name: "zone separated, writable",
            spec: json!({}),
            observed: |_| {},
            ready: (ConditionStatus::True, R::VaultReady),
            separated: Some((ConditionStatus::True, R::Separated)),
            message_has: "separated by Zone",
        },
        Case {
            name: "region required, both zones in one region",
            spec: json!({"redundancy": "Region"}),
            observed: |_| {},
            ready: (ConditionStatus::False, R::NotSeparated),
            separated: Some((ConditionStatus::False, R::SameRegion)),
            message_has: "both in region eu",
        },
        Case {
            name: "region required, same zone",
            spec: json!({"redundancy": "Region", "target": {"zone": "zone-a"}}),
            observed: |_| {},
            ready: (ConditionStatus::False, R::NotSeparated),
            separated: Some((ConditionStatus::False, R::SameZone)),
            message_has: "both in zone zone-a",
        },
        Case {
            name: "region required, regions from labels differ",
            spec: json!({"redundancy": "Region", "target": {"zone": "zone-c"}}),
            observed: |_| {},
            ready: (ConditionStatus::True, R::VaultReady),
            separated: Some((ConditionStatus::True, R::Separated)),
            message_has: "separated by Region",
        },
        Case {
            name: "region unknown",
            spec: json!({"redundancy": "Region"}),
            observed: |o| o.nodes.iter_mut().for_each(|n| n.region = None),
            ready: (ConditionStatus::False, R::NotSeparated),
            separated: Some((ConditionStatus::False, R::RegionUnknown)),
            message_has: "topology.kubernetes.io/region",
        },
        Case {
            name: "zone without nodes",
            spec: json!({"target": {"zone": "zone-x"}}),
            observed: |_| {},
            ready: (ConditionStatus::False, R::NotSeparated),
            separated: Some((ConditionStatus::False, R::ZoneNotFound)),
            message_has: "spec.target.zone: no node is labelled topology.kubernetes.io/zone=zone-x",
        },
        Case {
            name: "same storage for both",
            spec: json!({"target": {"storage": {"filesystem": {"path": "/cache"}}}}),
            observed: |_| {},
            ready: (ConditionStatus::False, R::NotSeparated),
            separated: Some((ConditionStatus::False, R::SameStorageLocation)),
            message_has: "same location",
        },
        Case {
            name: "missing directory is created",
            spec: json!({}),
            observed: |o| o.target = StorageProbe::Missing,
            ready: (ConditionStatus::False, R::StorageNotReady),
            separated: Some((ConditionStatus::True, R::Separated)),
            message_has: "target directory does not exist yet",
        },
        Case {
            name: "short key",
            spec: json!({}),
            observed: |o| o.encryption_key = KeyProbe::Present { len: 8 },
            ready: (ConditionStatus::False, R::SecretNotFound),
            separated: Some((ConditionStatus::True, R::Separated)),
            message_has: "at least 32 are required",
        },
        Case {
            name: "storage outside the installation's rules is the user's to fix",
            spec: json!({}),
            observed: |o| {
                o.cache = StorageProbe::Missing;
                o.target = StorageProbe::Invalid(
                    "spec.target.storage.filesystem.path: \"/etc\" is outside this namespace's storage".into(),
                )
            },
            ready: (ConditionStatus::False, R::InvalidSpec),
            separated: Some((ConditionStatus::True, R::Separated)),
            message_has: "spec.target.storage.filesystem.path: \"/etc\" is outside",
        },
        Case {
            name: "the examples' placeholder key is refused",
            spec: json!({}),
            observed: |o| o.encryption_key = KeyProbe::Placeholder,
            ready: (ConditionStatus::False, R::PlaceholderKey),
            separated: Some((ConditionStatus::True, R::Separated)),
            message_has: "is the examples' placeholder",
        },
        Case {
            name: "object store does not answer",
            spec: json!({"target": {"storage": {"filesystem": null, "s3": {"bucket": "bkt"}}}}),
            observed: |o| o.target = StorageProbe::Unusable("s3://bkt/: connection refused".into()),
            ready: (ConditionStatus::False, R::StorageNotReady),
            separated: Some((ConditionStatus::True, R::Separated)),
            message_has: "target location: s3://bkt/: connection refused",
        },
        Case {
            name: "spec bypassed admission",
            spec: json!({"replicationPolicy": {"crashConsistentFrequency": "10s"}}),
            observed: |_| {},
            ready: (ConditionStatus::False, R::InvalidSpec),
            separated: None,
            message_has: "spec.replicationPolicy.crashConsistentFrequency",
        },
    ];
    for case in cases {
        let mut o = observed();
        (case.observed)(&mut o);
        let p = plan(&spec(case.spec), None, &o);
        let ready = condition(&p, T::Ready);
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (case.ready.0, case.ready.1.as_str()),
            "{}",
            case.name
        );
        if let Some((status, reason)) = case.separated {
            let sep = condition(&p, T::Separated);
            assert_eq!(
                (sep.status, sep.reason.as_str()),
                (status, reason.as_str()),
                "{}",
                case.name
            );
        }
        let all: String = p
            .conditions
            .iter()
            .map(|c| c.message.clone())
            .collect::<Vec<_>>()
            .join(" | ");
        assert!(
            all.contains(case.message_has),
            "{}: {all:?} should mention {:?}",
            case.name,
            case.message_has
        );
    }
}

#[test]
fn missing_directory_plans_its_creation_and_a_quick_recheck() {
    let mut o = observed();
    o.cache = StorageProbe::Missing;
    let p = plan(&spec(json!({})), None, &o);
    assert_eq!(p.actions, vec![Action::CreateDirectory("/cache".into())]);
    assert!(p.requeue < RECHECK);
}

#[test]
fn events_only_when_ready_changes() {
    let o = observed();
    let s = spec(json!({}));
    let first = plan(&s, None, &o);
    assert_eq!(first.events.len(), 1);
    assert!(!first.events[0].warning);
    let status = RecoveryVaultStatus {
        conditions: first.conditions.clone(),
        ..Default::default()
    };
    let again = plan(&s, Some(&status), &o);
    assert!(again.events.is_empty(), "no event when nothing changed");
    let mut broken = o.clone();
    broken.encryption_key = KeyProbe::SecretMissing;
    let worse = plan(&s, Some(&status), &broken);
    assert_eq!(worse.events.len(), 1);
    assert!(worse.events[0].warning);
}

#[test]
fn the_placeholder_key_and_variants_are_recognised() {
    use crate::vault_access::{PLACEHOLDER_KEY, is_placeholder_key};
    assert!(is_placeholder_key(PLACEHOLDER_KEY.as_bytes()));
    assert!(is_placeholder_key(
        format!("{PLACEHOLDER_KEY}\n").as_bytes()
    ));
    assert!(is_placeholder_key(b"REPLACE-ME"));
    assert!(!is_placeholder_key(&[7u8; 32]));
    assert!(!is_placeholder_key(
        b"c2VjcmV0LXJhbmRvbS1ieXRlcy1mcm9tLW9wZW5zc2w="
    ));
}

#[test]
fn validation_names_the_field_to_fix() {
    let field = |v: serde_json::Value| validate(&spec(v)).err().map(|e| e.field());
    assert_eq!(field(json!({})), None);
    assert_eq!(
        field(json!({"replicationPolicy": {"crashConsistentFrequency": "10s"}})),
        Some("spec.replicationPolicy.crashConsistentFrequency")
    );
    assert_eq!(
        field(json!({"replicationPolicy": {"appConsistentFrequency": "often"}})),
        Some("spec.replicationPolicy.appConsistentFrequency")
    );
    assert_eq!(
        field(json!({"replicationPolicy": {"recoveryPointRetention": "1x"}})),
        Some("spec.replicationPolicy.recoveryPointRetention")
    );
    let both = json!({"target": {"storage": {"s3": {"bucket": "b", "region": "r"}}}});
    let invalid = validate(&spec(both)).unwrap_err();
    assert_eq!(
        invalid.to_string(),
        "spec.target.storage must set exactly one of filesystem, volumeClaim, s3, azureBlob or gcs"
    );
    let short = json!({"replicationPolicy": {"crashConsistentFrequency": "10s"}});
    assert_eq!(
        validate(&spec(short)).unwrap_err().to_string(),
        "spec.replicationPolicy.crashConsistentFrequency must be at least 30s"
    );
}
