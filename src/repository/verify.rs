//! Checking a repository: every chunk a point references is indexed and its pack exists; with
//! `read_data`, every pack is read, its header must match the index and every chunk must open
//! and hash to its id. Every fence record must open. Problems name the object.

use std::collections::HashMap;

use futures::StreamExt;

use super::format;
use super::{RepoError, Repository, pack_name};
use crate::storage::layout;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifyReport {
    pub points: u64,
    pub packs: u64,
    pub chunks_checked: u64,
    /// Fence records that opened (`fences/`); the others are problems.
    pub fences: u64,
    pub problems: Vec<String>,
}

pub async fn verify(repo: &Repository, read_data: bool) -> Result<VerifyReport, RepoError> {
    let mut report = VerifyReport::default();
    let stored: HashMap<format::ChunkId, u64> = repo.list_packs().await?.into_iter().collect();
    report.packs = stored.len() as u64;
    for id in repo.point_ids().await? {
        report.points += 1;
        let manifest = match repo.manifest(&id).await {
            Ok(m) => m,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        for chunk in manifest.chunks() {
            match repo.chunks.get(chunk) {
                None => report.problems.push(format!(
                    "point {id}: chunk {} is in no index",
                    hex::encode(chunk)
                )),
                Some(at) => {
                    let pack = repo.packs[at.pack as usize];
                    if !stored.contains_key(&pack) {
                        report.problems.push(format!(
                            "point {id}: pack {} is missing",
                            layout::pack(repo.location.prefix(), &pack_name(&pack))
                        ));
                    }
                }
            }
        }
    }
    let (fences, problems) = repo.check_fences().await?;
    report.fences = fences;
    report.problems.extend(problems);
    if read_data {
        let results: Vec<(u64, Vec<String>)> = futures::stream::iter(stored.keys().copied())
            .map(|pack| async move { check_pack(repo, pack).await })
            .buffer_unordered(4)
            .collect()
            .await;
        for (chunks, problems) in results {
            report.chunks_checked += chunks;
            report.problems.extend(problems);
        }
    }
    report.problems.sort();
    report.problems.dedup();
    Ok(report)
}

async fn check_pack(repo: &Repository, pack: format::ChunkId) -> (u64, Vec<String>) {
    let key = layout::pack(repo.location.prefix(), &pack_name(&pack));
    let name = format!("{}/{}", repo.location.name(), key);
    let bytes = match repo.location.get_max(&key, format::limits::PACK).await {
        Ok(b) => b,
        Err(e) => return (0, vec![e.to_string()]),
    };
    let mut problems = Vec::new();
    if blake3::hash(&bytes).as_bytes() != &pack {
        problems.push(format!(
            "{name}: content does not match its name (modified or truncated)"
        ));
    }
    let entries = match format::read_pack_header(&repo.keys, &name, &bytes) {
        Ok(e) => e,
        Err(e) => {
            problems.push(e.to_string());
            return (0, problems);
        }
    };
    let keys = repo.keys.clone();
    let pack_label = name.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let name = pack_label;
        let mut problems = Vec::new();
        for e in &entries {
            let sealed = &bytes[e.offset as usize..(e.offset + e.length) as usize];
            match format::open_chunk(&keys, &e.id, e.raw_length, sealed) {
                Ok(data) if keys.chunk_id(&data) == e.id => {}
                Ok(_) => problems.push(format!(
                    "{name}: chunk {} does not hash to its id",
                    hex::encode(e.id)
                )),
                Err(err) => problems.push(format!("{name}: chunk {}: {err}", hex::encode(e.id))),
            }
        }
        (entries.len() as u64, problems)
    })
    .await;
    match checked {
        Ok((n, more)) => {
            problems.extend(more);
            (n, problems)
        }
        Err(e) => (0, vec![format!("{name}: check failed: {e}")]),
    }
}
