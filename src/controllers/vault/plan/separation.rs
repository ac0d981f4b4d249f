//! How far apart cache and target are, as the vault's spec and the nodes' labels show it.

use crate::api::reasons::VaultReason as R;
use crate::api::vault::{Location, RecoveryVaultSpec, Redundancy};
use crate::controllers::context::NodeTopology;

/// The separation of cache and target as node labels show it.
#[derive(Clone, Debug, PartialEq)]
pub struct Separation {
    pub measured: Redundancy,
    pub cache_region: Option<String>,
    pub target_region: Option<String>,
    /// Why the required separation is not met.
    pub problem: Option<(R, String)>,
}

pub fn separation(spec: &RecoveryVaultSpec, nodes: &[NodeTopology]) -> Separation {
    let region_of = |l: &Location| {
        l.region.clone().or_else(|| {
            let zone = l.zone.as_ref()?;
            nodes
                .iter()
                .filter(|n| n.zone.as_ref() == Some(zone))
                .find_map(|n| n.region.clone())
        })
    };
    let cache_region = region_of(&spec.cache);
    let target_region = region_of(&spec.target);
    let measured = match (
        &cache_region,
        &target_region,
        &spec.cache.zone,
        &spec.target.zone,
    ) {
        (Some(a), Some(b), _, _) if a != b => Redundancy::Region,
        (_, _, Some(a), Some(b)) if a != b => Redundancy::Zone,
        _ => Redundancy::Machine,
    };
    let mut problem = None;
    if spec.cache.storage == spec.target.storage {
        problem = Some((
            R::SameStorageLocation,
            "spec.cache.storage and spec.target.storage are the same location: a failure of it loses both copies; point the target at other storage".to_string(),
        ));
    }
    for (field, zone) in [
        ("spec.cache.zone", &spec.cache.zone),
        ("spec.target.zone", &spec.target.zone),
    ] {
        if let Some(zone) = zone
            && problem.is_none()
            && !nodes.iter().any(|n| n.zone.as_ref() == Some(zone))
        {
            problem = Some((
                R::ZoneNotFound,
                format!("{field}: no node is labelled topology.kubernetes.io/zone={zone}"),
            ));
        }
    }
    if problem.is_none() && measured < spec.redundancy {
        problem = Some(too_close(spec, &cache_region, &target_region));
    }
    Separation {
        measured,
        cache_region,
        target_region,
        problem,
    }
}

/// Why cache and target are not as far apart as `spec.redundancy` asks.
fn too_close(
    spec: &RecoveryVaultSpec,
    cache_region: &Option<String>,
    target_region: &Option<String>,
) -> (R, String) {
    let zones = (
        spec.cache.zone.as_deref().unwrap_or("?"),
        spec.target.zone.as_deref().unwrap_or("?"),
    );
    if zones.0 == zones.1 {
        (
            R::SameZone,
            format!(
                "cache and target are both in zone {}; redundancy {} needs them in different {}s",
                zones.0,
                spec.redundancy.as_str(),
                spec.redundancy.as_str().to_lowercase()
            ),
        )
    } else {
        match (&cache_region, &target_region) {
            (Some(a), Some(_)) => (
                R::SameRegion,
                format!(
                    "cache zone {} and target zone {} are both in region {a}; redundancy Region needs different regions",
                    zones.0, zones.1
                ),
            ),
            _ => (
                R::RegionUnknown,
                format!(
                    "the region of zone {} is unknown: set spec.{}.region or label its nodes with topology.kubernetes.io/region",
                    if cache_region.is_none() {
                        zones.0
                    } else {
                        zones.1
                    },
                    if cache_region.is_none() {
                        "cache"
                    } else {
                        "target"
                    }
                ),
            ),
        }
    }
}
