//! The repository's side of a region failover: points carry their origin (the protecting
//! cluster and the workload's definition) from assembly to the target, a repository lists the
//! workloads it holds points of, and fences survive everything that deletes.

use std::path::Path;
use std::time::Duration;

use site_recovery::repository::format::{Origin, limits};
use site_recovery::repository::parts::PartOf;
use site_recovery::repository::prune::{PruneOptions, forget_workload, prune};
use site_recovery::repository::replicate::replicate;
use site_recovery::repository::snapshot::{Source, snapshot};
use site_recovery::repository::verify::verify;
use site_recovery::repository::{RepoError, Repository, new_point_id};

use crate::repository::{KEY, fs_location, options};

fn origin(cluster: &str, namespace: &str, name: &str) -> Origin {
    Origin {
        cluster_uid: format!("{cluster}-0000-uid"),
        cluster_name: cluster.into(),
        kind: "StatefulSet".into(),
        namespace: namespace.into(),
        name: name.into(),
        definition: format!(
            r#"{{"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{{"name":"{name}","namespace":"{namespace}"}}}}"#
        )
        .into_bytes(),
    }
}

fn volume(dir: &Path, name: &str, content: &[u8]) -> (String, Source) {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("file"), content).unwrap();
    (name.to_string(), Source::Tree(root))
}

/// Writes one part per volume of a new point of `workload` (as the agents do) and returns the
/// point's id and the part names.
async fn parts(
    repo: &mut Repository,
    dir: &Path,
    workload: &str,
    volumes: &[&str],
) -> (String, Vec<String>) {
    let time = jiff::Timestamp::now();
    let point = new_point_id(time);
    let mut names = vec![];
    for (i, v) in volumes.iter().enumerate() {
        let name = format!("node-{i}");
        let mut o = options(workload);
        o.part = Some(PartOf {
            point: point.clone(),
            time,
            name: name.clone(),
        });
        let part = snapshot(
            repo,
            vec![volume(dir, &format!("{point}-{v}"), v.as_bytes())],
            &o,
            None,
        )
        .await
        .unwrap();
        assert_eq!(part.origin, None, "agents write parts without an origin");
        names.push(name);
    }
    (point, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_travels_from_assembly_through_replication_to_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cache = Repository::init(fs_location(&tmp.path().join("cache")), KEY)
        .await
        .unwrap();
    let (point, names) = parts(&mut cache, tmp.path(), "apps/db", &["data", "logs"]).await;

    // A definition over the bound, or not a JSON object, is refused naming the point, and
    // nothing is written: the parts stay for a corrected assembly.
    let mut huge = origin("east", "apps", "db");
    huge.definition = vec![b' '; limits::DEFINITION + 1];
    let mut not_json = origin("east", "apps", "db");
    not_json.definition = b"kind: StatefulSet".to_vec();
    let mut bad_name = origin("east", "apps", "db");
    bad_name.namespace = "../kube-system".into();
    for (bad, expected) in [
        (huge, "more than 1048576"),
        (not_json, "not a JSON object"),
        (bad_name, "namespace"),
    ] {
        let err = cache
            .assemble(&point, &names, Some(&bad))
            .await
            .unwrap_err();
        assert!(matches!(err, RepoError::Invalid(_)), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(&point) && message.contains(expected),
            "{message}"
        );
    }
    assert!(cache.point_ids().await.unwrap().is_empty());
    assert_eq!(cache.part_names(&point).await.unwrap(), names);

    let east = origin("east", "apps", "db");
    let assembled = cache.assemble(&point, &names, Some(&east)).await.unwrap();
    assert_eq!(assembled.origin.as_ref(), Some(&east));
    assert_eq!(assembled.volumes.len(), 2);
    assert_eq!(
        cache.manifest(&point).await.unwrap().origin,
        Some(east.clone())
    );
    // Assembling again returns the point as it is.
    let again = cache.assemble(&point, &names, None).await.unwrap();
    assert_eq!(again.origin.as_ref(), Some(&east));

    let target_location = fs_location(&tmp.path().join("target"));
    cache.init_replica(target_location.clone()).await.unwrap();
    let mut target = Repository::open(target_location.clone(), KEY)
        .await
        .unwrap();
    replicate(&cache, &mut target, std::slice::from_ref(&point))
        .await
        .unwrap();
    // The source region is gone: the target alone says who protected what, and how.
    std::fs::remove_dir_all(tmp.path().join("cache")).unwrap();
    let target = Repository::open(target_location, KEY).await.unwrap();
    assert_eq!(target.origin(&point).await.unwrap(), Some(east.clone()));
    let listed = target.workloads().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].workload.as_str(),
            listed[0].kind.as_str(),
            listed[0].cluster_uid.as_str(),
            listed[0].cluster_name.as_str(),
            listed[0].points,
            listed[0].latest_id.as_str(),
        ),
        (
            "apps/db",
            "StatefulSet",
            "east-0000-uid",
            "east",
            1,
            point.as_str()
        )
    );
    assert!(verify(&target, true).await.unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_lists_every_workload_with_its_latest_point_and_protector() {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY)
        .await
        .unwrap();
    let east = origin("east", "apps", "db");
    let west = origin("west", "shop", "web");
    let mut ids = vec![];
    for (workload, o) in [("apps/db", &east), ("shop/web", &west), ("apps/db", &east)] {
        let (point, names) = parts(&mut repo, tmp.path(), workload, &["data"]).await;
        repo.assemble(&point, &names, Some(o)).await.unwrap();
        ids.push(point);
        // Ids are by the millisecond: keep them apart.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // A point written before origins (or without one) lists with an empty protector.
    let legacy = snapshot(
        &mut repo,
        vec![volume(tmp.path(), "legacy", b"old")],
        &options("legacy/app"),
        None,
    )
    .await
    .unwrap();
    let listed = repo.workloads().await.unwrap();
    let rows: Vec<_> = listed
        .iter()
        .map(|w| {
            (
                w.workload.as_str(),
                w.cluster_name.as_str(),
                w.cluster_uid.as_str(),
                w.kind.as_str(),
                w.points,
                w.latest_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "apps/db",
                "east",
                "east-0000-uid",
                "StatefulSet",
                2,
                ids[2].as_str()
            ),
            ("legacy/app", "", "", "", 1, legacy.id.as_str()),
            (
                "shop/web",
                "west",
                "west-0000-uid",
                "StatefulSet",
                1,
                ids[1].as_str()
            ),
        ]
    );
    assert_eq!(
        listed[0].latest_time,
        repo.manifest(&ids[2]).await.unwrap().time
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_survive_prune_forget_verify_and_replication() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cache = Repository::init(fs_location(&tmp.path().join("cache")), KEY)
        .await
        .unwrap();
    let (point, names) = parts(&mut cache, tmp.path(), "apps/db", &["data"]).await;
    cache
        .assemble(&point, &names, Some(&origin("east", "apps", "db")))
        .await
        .unwrap();
    let now = jiff::Timestamp::now();
    let fence = cache
        .write_fence("apps/db", "west-0000-uid", "west", "failover-1", now)
        .await
        .unwrap();
    assert_eq!(fence.epoch, 1);

    let target_location = fs_location(&tmp.path().join("target"));
    cache.init_replica(target_location.clone()).await.unwrap();
    let mut target = Repository::open(target_location, KEY).await.unwrap();
    target
        .write_fence("apps/db", "west-0000-uid", "west", "failover-1", now)
        .await
        .unwrap();
    replicate(&cache, &mut target, std::slice::from_ref(&point))
        .await
        .unwrap();

    let report = verify(&cache, true).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.fences, 1);

    forget_workload(&mut target, "apps/db").await.unwrap();
    forget_workload(&mut cache, "apps/db").await.unwrap();
    let everything = PruneOptions {
        keep_within: Duration::ZERO,
        keep_last: 0,
        dry_run: false,
        workload: None,
    };
    for repo in [&mut cache, &mut target] {
        let report = prune(repo, &everything).await.unwrap();
        assert_eq!(report.gc_skipped, None);
        assert!(repo.point_ids().await.unwrap().is_empty());
        assert_eq!(
            repo.latest_fence("apps/db").await.unwrap().as_ref(),
            Some(&fence),
            "fences stay"
        );
        assert_eq!(verify(repo, false).await.unwrap().fences, 1);
    }
}

/// The parts of given-up points are removed workload by workload, and a point's parts are read
/// only the first time the point is seen: later calls learn from the listing alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_parts_are_discarded_per_workload_reading_each_point_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cache = Repository::init(fs_location(&tmp.path().join("cache")), KEY)
        .await
        .unwrap();
    let (db_old, _) = parts(&mut cache, tmp.path(), "apps/db", &["data", "logs"]).await;
    // Point ids begin with their time, to the millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (db_now, _) = parts(&mut cache, tmp.path(), "apps/db", &["data"]).await;
    let (web, _) = parts(&mut cache, tmp.path(), "apps/web", &["data"]).await;
    let mut owners = std::collections::HashMap::new();
    // Finishing the older point leaves the newer one's parts alone.
    let removed = cache
        .discard_stale_parts_with("apps/db", Some(&db_old), Some(&db_old), &mut owners)
        .await
        .unwrap();
    assert_eq!(removed, 0);
    assert_eq!(cache.part_names(&db_now).await.unwrap().len(), 1);
    let removed = cache
        .discard_stale_parts_with("apps/db", Some(&db_now), None, &mut owners)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(cache.part_names(&db_old).await.unwrap().is_empty());
    assert_eq!(cache.part_names(&db_now).await.unwrap().len(), 1);
    assert_eq!(cache.part_names(&web).await.unwrap().len(), 1);
    assert_eq!(owners.get(&web).map(String::as_str), Some("apps/web"));
    assert!(
        !owners.contains_key(&db_old),
        "a discarded point is forgotten"
    );

    // What is known is not read again: a point whose part can no longer be read is still
    // attributed to its workload by what the first call learnt.
    let part_dir = tmp.path().join("cache/parts").join(&web);
    for f in std::fs::read_dir(&part_dir).unwrap() {
        std::fs::write(f.unwrap().path(), b"not a part").unwrap();
    }
    let removed = cache
        .discard_stale_parts_with("apps/web", None, None, &mut owners)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(cache.part_names(&web).await.unwrap().is_empty());
    assert_eq!(owners.keys().collect::<Vec<_>>(), vec![&db_now]);
}
