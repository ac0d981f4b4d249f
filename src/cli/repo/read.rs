//! The `repo` verbs that only read a repository: points, show, verify and stats.

use super::Report;
use crate::repository::Repository;
use crate::repository::format::{Manifest, NodeKind, VolumeContent};
use crate::repository::verify::VerifyReport;
use crate::storage::Location;

pub(super) async fn points(location: Location, secret: &[u8]) -> anyhow::Result<Report> {
    let repo = Repository::open(location, secret).await?;
    Ok(points_report(&repo.manifests().await?))
}

fn points_report(manifests: &[Manifest]) -> Report {
    let rows: Vec<serde_json::Value> = manifests
        .iter()
        .map(|m| serde_json::json!({"id": m.id, "time": m.time, "workload": m.workload, "consistency": m.consistency.as_str(), "sourceZone": m.source_zone, "volumes": m.volumes.iter().map(|v| v.name.clone()).collect::<Vec<_>>(), "bytes": m.stats.bytes}))
        .collect();
    let mut text = format!(
        "{:<36} {:<26} {:<16} {:<16} {:>14}",
        "ID", "TIME", "WORKLOAD", "CONSISTENCY", "BYTES"
    );
    for m in manifests {
        text.push_str(&format!(
            "\n{:<36} {:<26} {:<16} {:<16} {:>14}",
            m.id,
            m.time,
            m.workload,
            m.consistency.as_str(),
            m.stats.bytes
        ));
    }
    Report::ok(serde_json::Value::Array(rows), text)
}

pub(super) async fn show(location: Location, secret: &[u8], point: &str) -> anyhow::Result<Report> {
    let repo = Repository::open(location, secret).await?;
    let m = repo.manifest(&repo.resolve_point(point).await?).await?;
    Ok(show_report(&m))
}

fn show_report(m: &Manifest) -> Report {
    let mut text = format!(
        "point {}\ntime {}\nworkload {}\nconsistency {}\nparent {}\n",
        m.id,
        m.time,
        m.workload,
        m.consistency.as_str(),
        m.parent.as_deref().unwrap_or("-")
    );
    for v in &m.volumes {
        match &v.content {
            VolumeContent::Raw(f) => {
                text.push_str(&format!("volume {} raw image, {} bytes\n", v.name, f.size))
            }
            VolumeContent::Tree(nodes) => {
                let files = nodes
                    .iter()
                    .filter(|n| matches!(n.kind, NodeKind::File(_)))
                    .count();
                text.push_str(&format!(
                    "volume {} tree, {} entries, {} files\n",
                    v.name,
                    nodes.len(),
                    files
                ));
            }
        }
    }
    Report::ok(
        serde_json::json!({"id": m.id, "time": m.time, "workload": m.workload, "consistency": m.consistency.as_str(), "parent": m.parent, "volumes": m.volumes.iter().map(|v| v.name.clone()).collect::<Vec<_>>()}),
        text.trim_end().to_string(),
    )
}

pub(super) async fn verify(
    location: Location,
    secret: &[u8],
    read_data: bool,
) -> anyhow::Result<Report> {
    let repo = Repository::open(location, secret).await?;
    let report = crate::repository::verify::verify(&repo, read_data).await?;
    Ok(verify_report(&report))
}

/// Fails (exit code 1) when any problem was found.
fn verify_report(report: &VerifyReport) -> Report {
    Report {
        json: serde_json::json!({"points": report.points, "packs": report.packs, "chunksChecked": report.chunks_checked, "fences": report.fences, "problems": report.problems}),
        text: if report.problems.is_empty() {
            format!(
                "ok: {} points, {} packs, {} chunks read",
                report.points, report.packs, report.chunks_checked
            )
        } else {
            report.problems.join("\n")
        },
        failed: !report.problems.is_empty(),
    }
}

pub(super) async fn stats(location: Location, secret: &[u8]) -> anyhow::Result<Report> {
    let repo = Repository::open(location, secret).await?;
    let packs = repo.list_packs().await?;
    let stored: u64 = packs.iter().map(|(_, s)| s).sum();
    let raw: u64 = repo.chunks.values().map(|c| c.raw_length as u64).sum();
    let points = repo.point_ids().await?.len();
    Ok(Report::ok(
        serde_json::json!({"id": repo.config.id, "points": points, "packs": packs.len(), "chunks": repo.chunks.len(), "storedBytes": stored, "uniqueRawBytes": raw}),
        format!(
            "repository {}: {} points, {} packs, {} chunks, {} bytes stored for {} unique bytes",
            repo.config.id,
            points,
            packs.len(),
            repo.chunks.len(),
            stored,
            raw
        ),
    ))
}
