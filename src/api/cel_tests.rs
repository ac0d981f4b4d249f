//! Each admission rule of the CRDs, with a passing and a failing case, evaluated by kube's CEL
//! implementation exactly as the rules are embedded in the generated schemas.

use serde_json::{Value, json};

use super::{Failover, RecoveryVault, ReplicatedWorkload};

fn vault(spec: Value) -> RecoveryVault {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
        "metadata": {"name": "v", "namespace": "ns"}, "spec": spec,
    }))
    .expect("vault parses")
}

fn fs(path: &str) -> Value {
    json!({"filesystem": {"path": path}})
}

fn vault_spec() -> Value {
    json!({
        "redundancy": "Zone",
        "cache": {"zone": "zone-a", "storage": fs("/cache")},
        "target": {"zone": "zone-b", "storage": fs("/target")},
        "encryption": {"keySecretRef": {"name": "key"}},
    })
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    *base
        .pointer_mut(pointer)
        .expect("pointer exists in the base spec") = value;
    base
}

fn rejected_with(result: Result<(), kube::core::cel::ValidationErrors>, needle: &str) {
    let err = result.expect_err("the rule should reject this object");
    let text = err.to_string();
    assert!(
        text.contains(needle),
        "error {text:?} should mention {needle:?}"
    );
}

#[test]
fn valid_vault_passes() {
    vault(vault_spec()).validate_cel().expect("valid vault");
}

#[test]
fn filesystem_paths_are_plain() {
    for good in [
        "/var/lib/site-recovery/apps/cache",
        "/a/.hidden/b",
        "/a/..b/c/",
        "/a/b..",
        "/x",
    ] {
        vault(with(vault_spec(), "/cache/storage", fs(good)))
            .validate_cel()
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in [
        "/var/lib/site-recovery/apps/../other",
        "/var/lib/site-recovery/apps/./cache",
        "/var/lib/site-recovery//apps/cache",
        "/var/lib/site-recovery/apps/cache/..",
        "/",
    ] {
        rejected_with(
            vault(with(vault_spec(), "/target/storage", fs(bad))).validate_cel(),
            "without '.', '..' or empty ('//') components",
        );
    }
}

#[test]
fn storage_needs_exactly_one_backend() {
    let two = json!({"filesystem": {"path": "/x"}, "s3": {"bucket": "bkt"}});
    rejected_with(
        vault(with(vault_spec(), "/cache/storage", two)).validate_cel(),
        "exactly one of filesystem, volumeClaim, s3, azureBlob or gcs",
    );
    rejected_with(
        vault(with(vault_spec(), "/target/storage", json!({}))).validate_cel(),
        "exactly one of",
    );
    let s3 = json!({"s3": {"bucket": "bkt", "endpoint": "http://127.0.0.1:9000"}});
    vault(with(vault_spec(), "/target/storage", s3))
        .validate_cel()
        .expect("one backend");
}

#[test]
fn zone_redundancy_needs_different_zones() {
    rejected_with(
        vault(with(vault_spec(), "/target/zone", json!("zone-a"))).validate_cel(),
        "spec.target.zone must differ from spec.cache.zone",
    );
    // Machine redundancy accepts one zone for both.
    let machine = with(vault_spec(), "/redundancy", json!("Machine"));
    vault(with(machine, "/target/zone", json!("zone-a")))
        .validate_cel()
        .expect("machine");
}

#[test]
fn zone_and_region_redundancy_need_zones() {
    let mut spec = vault_spec();
    spec["target"].as_object_mut().unwrap().remove("zone");
    rejected_with(
        vault(spec.clone()).validate_cel(),
        "spec.cache.zone and spec.target.zone are required",
    );
    vault(with(spec, "/redundancy", json!("Machine")))
        .validate_cel()
        .expect("machine needs no zones");
}

#[test]
fn region_redundancy_needs_different_regions() {
    let mut spec = with(vault_spec(), "/redundancy", json!("Region"));
    spec["cache"]["region"] = json!("eu-west");
    spec["target"]["region"] = json!("eu-west");
    rejected_with(
        vault(spec.clone()).validate_cel(),
        "spec.target.region must differ",
    );
    spec["target"]["region"] = json!("us-east");
    vault(spec).validate_cel().expect("different regions");
}

#[test]
fn snapshot_class_only_with_csi() {
    let mut spec = with(vault_spec(), "/redundancy", json!("Zone"));
    spec["snapshotMethod"] = json!("Live");
    spec["volumeSnapshotClassName"] = json!("csi-snap");
    rejected_with(
        vault(spec.clone()).validate_cel(),
        "spec.volumeSnapshotClassName",
    );
    spec["snapshotMethod"] = json!("CSI");
    vault(spec).validate_cel().expect("CSI with a class");
}

#[test]
fn crash_frequency_at_least_30s() {
    let mut spec = vault_spec();
    spec["replicationPolicy"] = json!({"crashConsistentFrequency": "10s", "appConsistentFrequency": "4h", "recoveryPointRetention": "24h"});
    rejected_with(
        vault(spec.clone()).validate_cel(),
        "crashConsistentFrequency must be a duration of at least 30s",
    );
    spec["replicationPolicy"]["crashConsistentFrequency"] = json!("30s");
    vault(spec).validate_cel().expect("30s is the minimum");
}

#[test]
fn durations_must_parse() {
    let mut spec = vault_spec();
    spec["replicationPolicy"] = json!({"crashConsistentFrequency": "5m", "appConsistentFrequency": "often", "recoveryPointRetention": "24h"});
    assert!(
        vault(spec.clone()).validate_cel().is_err(),
        "'often' is not a duration"
    );
    spec["replicationPolicy"]["appConsistentFrequency"] = json!("off");
    vault(spec.clone())
        .validate_cel()
        .expect("off disables app-consistent points");
    spec["replicationPolicy"]["appConsistentFrequency"] = json!("30s");
    rejected_with(
        vault(spec).validate_cel(),
        "appConsistentFrequency must be 'off' or a duration of at least 1m",
    );
}

#[test]
fn retention_covers_crash_frequency() {
    let mut spec = vault_spec();
    spec["replicationPolicy"] = json!({"crashConsistentFrequency": "1h", "appConsistentFrequency": "off", "recoveryPointRetention": "30m"});
    rejected_with(
        vault(spec.clone()).validate_cel(),
        "recoveryPointRetention must be at least",
    );
    spec["replicationPolicy"]["recoveryPointRetention"] = json!("2h");
    vault(spec)
        .validate_cel()
        .expect("retention longer than frequency");
}

fn workload(spec: Value) -> ReplicatedWorkload {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": "w", "namespace": "ns"}, "spec": spec,
    }))
    .expect("workload parses")
}

fn workload_spec() -> Value {
    json!({"vaultName": "vault", "workloadRef": {"kind": "StatefulSet", "name": "db"}})
}

#[test]
fn workload_ref_and_vault_are_immutable() {
    let old = workload(workload_spec());
    old.validate_cel().expect("valid workload");
    workload(workload_spec())
        .validate_cel_update(&old)
        .expect("unchanged");
    rejected_with(
        workload(with(workload_spec(), "/workloadRef/name", json!("other")))
            .validate_cel_update(&old),
        "spec.workloadRef is immutable",
    );
    rejected_with(
        workload(with(workload_spec(), "/vaultName", json!("other"))).validate_cel_update(&old),
        "spec.vaultName is immutable",
    );
}

#[test]
fn workload_policy_override_and_hook_timeout_are_checked() {
    let mut spec = workload_spec();
    spec["replicationPolicy"] = json!({"crashConsistentFrequency": "5s"});
    rejected_with(workload(spec.clone()).validate_cel(), "at least 30s");
    spec["replicationPolicy"] = json!({"crashConsistentFrequency": "45s"});
    workload(spec.clone())
        .validate_cel()
        .expect("override above minimum");
    spec["appConsistency"] =
        json!({"hooks": {"pre": [{"container": "db", "command": ["sync"], "timeout": "2h"}]}});
    rejected_with(workload(spec.clone()).validate_cel(), "hook timeout");
    spec["appConsistency"]["hooks"]["pre"][0]["timeout"] = json!("10s");
    workload(spec)
        .validate_cel()
        .expect("hook timeout within bounds");
}

fn failover(spec: Value) -> Failover {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": "f", "namespace": "ns"}, "spec": spec,
    }))
    .expect("failover parses")
}

#[test]
fn point_selector_needs_exactly_one() {
    failover(json!({"workloadName": "w"}))
        .validate_cel()
        .expect("omitted means latest");
    failover(json!({"workloadName": "w", "recoveryPoint": {"id": "p1"}}))
        .validate_cel()
        .expect("id");
    failover(json!({"workloadName": "w", "recoveryPoint": {"time": "2026-11-27T10:00:00Z"}}))
        .validate_cel()
        .expect("time");
    rejected_with(
        failover(json!({"workloadName": "w", "recoveryPoint": {"latest": true, "id": "p1"}}))
            .validate_cel(),
        "recoveryPoint must set exactly one of",
    );
    rejected_with(
        failover(json!({"workloadName": "w", "recoveryPoint": {}})).validate_cel(),
        "recoveryPoint must set exactly one of",
    );
    rejected_with(
        failover(json!({"workloadName": "w", "recoveryPoint": {"latest": false}})).validate_cel(),
        "can only be true",
    );
}

#[test]
fn commit_cannot_be_undone() {
    let committed = failover(json!({"workloadName": "w", "commit": true}));
    let open = failover(json!({"workloadName": "w", "commit": false}));
    committed
        .validate_cel_update(&open)
        .expect("committing is allowed");
    rejected_with(
        open.validate_cel_update(&committed),
        "spec.commit cannot change from true to false",
    );
}

#[test]
fn point_is_frozen_once_committed() {
    let before = failover(json!({"workloadName": "w", "recoveryPoint": {"id": "p1"}}));
    let switched = failover(json!({"workloadName": "w", "recoveryPoint": {"id": "p2"}}));
    switched
        .validate_cel_update(&before)
        .expect("switching points before commit is allowed");
    let committed =
        failover(json!({"workloadName": "w", "commit": true, "recoveryPoint": {"id": "p1"}}));
    let moved =
        failover(json!({"workloadName": "w", "commit": true, "recoveryPoint": {"id": "p2"}}));
    rejected_with(
        moved.validate_cel_update(&committed),
        "spec.recoveryPoint cannot change once spec.commit is true",
    );
    let dropped = failover(json!({"workloadName": "w", "commit": true}));
    rejected_with(
        dropped.validate_cel_update(&committed),
        "spec.recoveryPoint cannot change",
    );
}

#[test]
fn failover_mode_and_workload_are_immutable_and_drills_never_commit() {
    let old = failover(json!({"workloadName": "w", "mode": "Planned"}));
    rejected_with(
        failover(json!({"workloadName": "w", "mode": "Unplanned"})).validate_cel_update(&old),
        "spec.mode is immutable",
    );
    rejected_with(
        failover(json!({"workloadName": "x", "mode": "Planned"})).validate_cel_update(&old),
        "spec.workloadName is immutable",
    );
    rejected_with(
        failover(json!({"workloadName": "w", "mode": "Test", "commit": true})).validate_cel(),
        "a drill is never committed",
    );
}

#[test]
fn planned_failovers_pick_no_point_and_only_drills_take_drill_settings() {
    rejected_with(
        failover(
            json!({"workloadName": "w", "mode": "Planned", "recoveryPoint": {"id": "20261127T"}}),
        )
        .validate_cel(),
        "spec.recoveryPoint does not apply to mode Planned",
    );
    failover(json!({"workloadName": "w", "mode": "Planned", "recoveryPoint": {"latest": true}}))
        .validate_cel()
        .expect("latest is what a planned failover takes anyway");
    rejected_with(
        failover(json!({"workloadName": "w", "testNamespace": "w-drill"})).validate_cel(),
        "apply to mode Test only",
    );
    failover(
        json!({"workloadName": "w", "mode": "Test", "testNamespace": "w-drill",
        "verification": {"image": "busybox", "command": ["true"]}}),
    )
    .validate_cel()
    .expect("a drill with its namespace and check");
    rejected_with(
        failover(json!({"workloadName": "w", "mode": "Test", "testNamespace": "W_Drill"}))
            .validate_cel(),
        "spec.testNamespace must be a DNS label",
    );
}

#[test]
fn retention_is_at_least_a_minute() {
    let mut spec = vault_spec();
    spec["replicationPolicy"] = json!({"crashConsistentFrequency": "30s", "appConsistentFrequency": "off", "recoveryPointRetention": "30s"});
    rejected_with(
        vault(spec.clone()).validate_cel(),
        "recoveryPointRetention must be a duration of at least 1m",
    );
    spec["replicationPolicy"]["recoveryPointRetention"] = json!("1m");
    vault(spec)
        .validate_cel()
        .expect("one minute is the minimum");
}

#[test]
fn target_zone_is_immutable() {
    let old = failover(json!({"workloadName": "w", "targetZone": "zone-b"}));
    failover(json!({"workloadName": "w", "targetZone": "zone-b"}))
        .validate_cel_update(&old)
        .expect("unchanged");
    rejected_with(
        failover(json!({"workloadName": "w", "targetZone": "zone-c"})).validate_cel_update(&old),
        "spec.targetZone is immutable",
    );
}

#[test]
fn a_failover_from_a_vault_is_unplanned_or_a_drill_and_keeps_its_vault() {
    rejected_with(
        failover(json!({"workloadName": "w", "vaultName": "v", "mode": "Planned"})).validate_cel(),
        "a failover from spec.vaultName alone is Unplanned or Test",
    );
    failover(json!({"workloadName": "w", "vaultName": "v", "existingObjects": "Refuse"}))
        .validate_cel()
        .expect("an unplanned failover from a vault");
    rejected_with(
        failover(json!({"workloadName": "w", "existingObjects": "Use"})).validate_cel(),
        "spec.existingObjects applies only with spec.vaultName",
    );
    rejected_with(
        failover(json!({"workloadName": "w", "workloadNamespace": "shop"})).validate_cel(),
        "spec.workloadNamespace applies only with spec.vaultName",
    );
    rejected_with(
        failover(json!({"workloadName": "w", "vaultName": "v", "workloadNamespace": "Shop_1"}))
            .validate_cel(),
        "spec.workloadNamespace must be a DNS label",
    );
    let into_shop =
        failover(json!({"workloadName": "w", "vaultName": "v", "workloadNamespace": "shop"}));
    into_shop
        .validate_cel()
        .expect("a failover from a vault into namespace shop");
    for changed in [
        json!({"workloadName": "w", "vaultName": "v", "workloadNamespace": "other"}),
        json!({"workloadName": "w", "vaultName": "v"}),
    ] {
        rejected_with(
            failover(changed).validate_cel_update(&into_shop),
            "spec.workloadNamespace is immutable",
        );
    }
    let old = failover(json!({"workloadName": "w", "vaultName": "v"}));
    for changed in [
        json!({"workloadName": "w", "vaultName": "other"}),
        json!({"workloadName": "w"}),
    ] {
        rejected_with(
            failover(changed).validate_cel_update(&old),
            "spec.vaultName is immutable",
        );
    }
    rejected_with(
        failover(json!({"workloadName": "w", "vaultName": "v"}))
            .validate_cel_update(&failover(json!({"workloadName": "w"}))),
        "spec.vaultName is immutable",
    );
}
