//! A point's workload definition comes from storage: parsing one is bounded and never panics,
//! and one that parses can be turned into the objects a failover from a vault creates (the
//! workload under its own name, its companions) without panicking either.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::api::Failover;
use site_recovery::api::workload::WorkloadKind;
use site_recovery::controllers::definition::Definition;
use site_recovery::controllers::failover::manifests::{Place, companions, found_workload};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let kind = if selector % 2 == 0 {
        WorkloadKind::StatefulSet
    } else {
        WorkloadKind::Deployment
    };
    let Ok(d) = Definition::parse(bytes, kind, "db") else {
        return;
    };
    let f: Failover = serde_json::from_value(serde_json::json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": "fo", "namespace": "apps", "uid": "u"},
        "spec": {"workloadName": "db", "vaultName": "v"},
    }))
    .unwrap();
    let place = Place::found(&f, kind, "db");
    let _ = found_workload(&d.workload, &f, &place, 1, Some("zone-b"));
    let _ = companions(&d, &f, &place.namespace);
    let _ = d.claim("data-db-0");
    let _ = d.to_bytes();
});
