//! Points taken across nodes. One recovery point covers every volume of a workload (a
//! consistency group), but each node's agent reads only the volumes mounted on its node. Each
//! agent therefore writes a *part*: a manifest of its volumes under `parts/<point>/<part>`,
//! written last like a point. When every part is there, [`assemble`] merges them into the point's
//! manifest (a conditional create, so a second assembly is harmless) and removes the parts.
//! Garbage collection counts the chunks parts reference, so a prune between a part and its
//! assembly loses nothing.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::format::{self, Consistency, Manifest, Origin, Stats};
use super::origin::check_origin;
use super::{RepoError, Repository};
use crate::storage::{StorageError, layout};

/// Which point a snapshot is a part of.
#[derive(Clone, Debug)]
pub struct PartOf {
    pub point: String,
    /// The point's capture time, as the operator decided it.
    pub time: jiff::Timestamp,
    /// The part's name (the node's name).
    pub name: String,
}

fn bound(point: &str, part: &str) -> String {
    format!("{point}/{part}")
}

impl Repository {
    /// Names of the parts written so far for `point`.
    pub async fn part_names(&self, point: &str) -> Result<Vec<String>, RepoError> {
        let listed = self
            .location
            .list(&layout::parts_of(self.location.prefix(), point))
            .await?;
        let mut names: Vec<String> = listed
            .into_iter()
            .filter_map(|(k, _)| k.filename().map(String::from))
            .collect();
        names.sort();
        Ok(names)
    }

    /// A part's manifest, or `None` when it has not been written.
    pub async fn part(&self, point: &str, name: &str) -> Result<Option<Manifest>, RepoError> {
        let key = layout::part(self.location.prefix(), point, name);
        let bytes = match self.location.get_max(&key, format::limits::MANIFEST).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        format::decode_manifest_as(
            &self.keys,
            &bound(point, name),
            point,
            &format!("{}/{}", self.location.name(), key),
            &bytes,
        )
        .map(Some)
    }

    /// Writes a part (conditional create: an existing part is kept, and returned).
    pub async fn write_part(&self, name: &str, m: &Manifest) -> Result<Manifest, RepoError> {
        let key = layout::part(self.location.prefix(), &m.id, name);
        let bytes = format::encode_manifest_as(&self.keys, &bound(&m.id, name), m);
        match self.location.put_new(&key, Bytes::from(bytes)).await {
            Ok(()) => Ok(m.clone()),
            Err(StorageError::AlreadyExists { .. }) => self
                .part(&m.id, name)
                .await?
                .ok_or_else(|| RepoError::PointNotFound(bound(&m.id, name))),
            Err(e) => Err(e.into()),
        }
    }

    /// Every part of every point in flight (their chunks are in use).
    pub async fn all_parts(&self) -> Result<Vec<Manifest>, RepoError> {
        let listed = self
            .location
            .list(&layout::dir(self.location.prefix(), layout::PARTS))
            .await?;
        let mut out = Vec::new();
        for (key, _) in listed {
            let mut segments: Vec<String> = key.parts().map(|p| p.as_ref().to_string()).collect();
            let (Some(name), Some(point)) = (segments.pop(), segments.pop()) else {
                continue;
            };
            if let Some(m) = self.part(&point, &name).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Merges the parts `names` of `point` into its manifest, with `origin` (who protects the
    /// workload, and its definition: parts carry none), and removes the parts. A point already
    /// assembled is returned as it is. Fails, writing nothing, when a part is missing or the
    /// origin is not valid.
    pub async fn assemble(
        &self,
        point: &str,
        names: &[String],
        origin: Option<&Origin>,
    ) -> Result<Manifest, RepoError> {
        if let Some(o) = origin {
            check_origin(o).map_err(|e| RepoError::Invalid(format!("point {point}: {e}")))?;
        }
        match self.manifest(point).await {
            Ok(m) => {
                self.discard_parts(point).await?;
                return Ok(m);
            }
            Err(RepoError::PointNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let mut parts = Vec::with_capacity(names.len());
        for name in names {
            match self.part(point, name).await? {
                Some(m) => parts.push(m),
                None => {
                    return Err(RepoError::PointNotFound(format!(
                        "{point}: part {name} has not been written"
                    )));
                }
            }
        }
        let Some(first) = parts.first() else {
            return Err(RepoError::Invalid(format!(
                "{point}: a point needs at least one part"
            )));
        };
        let mut merged = Manifest {
            id: point.to_string(),
            time: first.time.clone(),
            workload: first.workload.clone(),
            consistency: weakest(parts.iter().map(|p| p.consistency)),
            source_zone: first.source_zone.clone(),
            parent: first.parent.clone(),
            volumes: Vec::new(),
            stats: Stats::default(),
            origin: origin.cloned(),
        };
        for p in parts {
            merged.volumes.extend(p.volumes);
            merged.stats.files += p.stats.files;
            merged.stats.bytes += p.stats.bytes;
            merged.stats.bytes_read += p.stats.bytes_read;
            merged.stats.new_chunks += p.stats.new_chunks;
            merged.stats.stored_bytes_added += p.stats.stored_bytes_added;
            merged.stats.note_skipped(p.stats.skipped, p.stats.warnings);
        }
        merged.volumes.sort_by(|a, b| a.name.cmp(&b.name));
        let key = layout::point(self.location.prefix(), point);
        match self
            .location
            .put_new(
                &key,
                Bytes::from(format::encode_manifest(&self.keys, &merged)),
            )
            .await
        {
            Ok(()) | Err(StorageError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.discard_parts(point).await?;
        Ok(merged)
    }

    /// Removes the parts of a point (after assembly, or when the point is abandoned). The data
    /// they referenced becomes garbage for the next prune, unless a point uses it.
    pub async fn discard_parts(&self, point: &str) -> Result<(), RepoError> {
        let listed = self
            .location
            .list(&layout::parts_of(self.location.prefix(), point))
            .await?;
        self.location
            .delete_all(listed.into_iter().map(|(k, _)| k).collect())
            .await?;
        Ok(())
    }
}

impl Repository {
    /// Removes the parts of `workload`'s points other than `keep`: parts written after their
    /// point was given up (an agent that finished after another agent failed).
    pub async fn discard_stale_parts(
        &self,
        workload: &str,
        keep: Option<&str>,
    ) -> Result<usize, RepoError> {
        self.discard_stale_parts_with(workload, keep, None, &mut HashMap::new())
            .await
    }

    /// [`Repository::discard_stale_parts`] with `owners`, which point's parts are of which
    /// workload, as learnt by earlier calls: the parts of every workload's points are listed,
    /// and one part is read only of a point not seen before (all parts of a point are of one
    /// workload), not every part of every point in flight at every call. With `before`, only
    /// the parts of points older than it (ids begin with their time) are stale: a later point
    /// may be in flight.
    pub async fn discard_stale_parts_with(
        &self,
        workload: &str,
        keep: Option<&str>,
        before: Option<&str>,
        owners: &mut HashMap<String, String>,
    ) -> Result<usize, RepoError> {
        let listed = self
            .location
            .list(&layout::dir(self.location.prefix(), layout::PARTS))
            .await?;
        let mut points: BTreeMap<String, String> = BTreeMap::new();
        for (key, _) in listed {
            let mut segments: Vec<String> = key.parts().map(|p| p.as_ref().to_string()).collect();
            if let (Some(name), Some(point)) = (segments.pop(), segments.pop()) {
                points.entry(point).or_insert(name);
            }
        }
        owners.retain(|point, _| points.contains_key(point));
        for (point, name) in &points {
            if owners.contains_key(point) {
                continue;
            }
            if let Some(m) = self.part(point, name).await? {
                owners.insert(point.clone(), m.workload);
            }
        }
        let stale: Vec<String> = owners
            .iter()
            .filter(|(point, w)| *w == workload && Some(point.as_str()) != keep)
            .filter(|(point, _)| before.is_none_or(|b| point.as_str() < b))
            .map(|(point, _)| point.clone())
            .collect();
        for point in &stale {
            self.discard_parts(point).await?;
            owners.remove(point);
        }
        Ok(stale.len())
    }
}

/// A point is only as consistent as its least consistent part.
fn weakest(all: impl Iterator<Item = Consistency>) -> Consistency {
    all.fold(Consistency::AppConsistent, |a, b| match (a, b) {
        (Consistency::FileLevel, _) | (_, Consistency::FileLevel) => Consistency::FileLevel,
        (Consistency::CrashConsistent, _) | (_, Consistency::CrashConsistent) => {
            Consistency::CrashConsistent
        }
        _ => Consistency::AppConsistent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_as_consistent_as_its_weakest_part() {
        use Consistency::*;
        assert_eq!(
            weakest([AppConsistent, AppConsistent].into_iter()),
            AppConsistent
        );
        assert_eq!(
            weakest([AppConsistent, CrashConsistent].into_iter()),
            CrashConsistent
        );
        assert_eq!(weakest([CrashConsistent, FileLevel].into_iter()), FileLevel);
    }
}
