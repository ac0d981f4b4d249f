//! The repository on real object-store servers: an S3-compatible server (moto) as the cache
//! location and the Azure Storage emulator (Azurite) as the target. `scripts/test.sh` starts
//! both and exports their endpoints; GCS is covered by configuration only (no emulator here
//! accepts object_store's uploads).

use site_recovery::repository::Repository;
use site_recovery::repository::replicate::replicate;
use site_recovery::repository::restore::{RestoreOptions, restore};
use site_recovery::repository::snapshot::{Source, snapshot};
use site_recovery::repository::verify::verify;
use site_recovery::storage::location::Options;
use site_recovery::storage::{Location, LocationSpec, StorageError};

use crate::repository::{KEY, describe, options};

pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn endpoint(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run the tests with `bash scripts/test.sh`, which starts the S3 and Azure servers"))
}

fn unique_prefix(name: &str) -> String {
    format!(
        "{name}-{}",
        hex::encode(site_recovery::repository::crypto::random_bytes::<6>())
    )
}

fn s3(prefix: &str) -> Location {
    let options: Options = [
        (
            "endpoint".to_string(),
            endpoint("SITE_RECOVERY_TEST_S3_ENDPOINT"),
        ),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ]
    .into();
    Location::open(
        &LocationSpec::S3 {
            bucket: "sr-test".into(),
            prefix: prefix.into(),
        },
        &options,
    )
    .unwrap()
}

fn azure(prefix: &str, key: &str) -> Location {
    let options: Options = [
        (
            "endpoint".to_string(),
            endpoint("SITE_RECOVERY_TEST_AZURE_ENDPOINT"),
        ),
        ("accountName".into(), "devstoreaccount1".into()),
        ("accountKey".into(), key.into()),
    ]
    .into();
    Location::open(
        &LocationSpec::Azure {
            container: "sr-test".into(),
            prefix: prefix.into(),
        },
        &options,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_cache_replicates_to_azure_target_and_restores_from_it_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/small"), b"hello from the source zone").unwrap();
    let big: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    std::fs::write(src.join("big.img"), &big).unwrap();

    let prefix = unique_prefix("vault");
    let mut cache = Repository::init(s3(&prefix), KEY).await.unwrap();
    // Conditional create: a second init cannot overwrite the config.
    let again = Repository::init(s3(&prefix), KEY)
        .await
        .err()
        .expect("init on an existing repository is refused");
    assert!(again.to_string().contains("already exists"), "{again}");
    let point = snapshot(
        &mut cache,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("db"),
        None,
    )
    .await
    .unwrap();

    let target_location = azure(&prefix, AZURITE_KEY);
    cache.init_replica(target_location.clone()).await.unwrap();
    let mut target = Repository::open(target_location, KEY).await.unwrap();
    let stats = replicate(&cache, &mut target, std::slice::from_ref(&point.id))
        .await
        .unwrap();
    assert_eq!(stats.points_copied, 1);
    let again = replicate(&cache, &mut target, std::slice::from_ref(&point.id))
        .await
        .unwrap();
    assert_eq!(again.bytes_copied, 0);

    // Only the target location is used from here on.
    drop(cache);
    let target = Repository::open(azure(&prefix, AZURITE_KEY), KEY)
        .await
        .unwrap();
    let out = tmp.path().join("out");
    restore(&target, &point.id, &out, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(describe(&out), describe(&src));
    let report = verify(&target, true).await.unwrap();
    assert!(
        report.problems.is_empty() && report.chunks_checked > 0,
        "{report:?}"
    );
    let report = verify(&Repository::open(s3(&prefix), KEY).await.unwrap(), true)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
}

#[tokio::test]
async fn storage_errors_never_carry_secrets() {
    let wrong = "d3JvbmctYnV0LXBsYXVzaWJsZS1rZXktdGhhdC1tdXN0LW5vdC1sZWFr";
    let location = azure(&unique_prefix("denied"), wrong);
    let err = Repository::open(location, KEY)
        .await
        .err()
        .expect("a wrong account key is refused");
    let text = err.to_string();
    assert!(!text.contains(wrong), "the key leaked into: {text}");
    assert!(
        text.contains("az://devstoreaccount1/sr-test"),
        "the message names the location: {text}"
    );

    // A SAS token in the location is cleaned from errors too.
    let options: Options = [
        ("endpoint".to_string(), endpoint("SITE_RECOVERY_TEST_AZURE_ENDPOINT")),
        ("accountName".into(), "devstoreaccount1".into()),
        ("sasToken".into(), "sv=2022-11-02&ss=b&srt=sco&sp=rl&se=2000-01-01T00:00:00Z&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D".into()),
    ]
    .into();
    let location = Location::open(
        &LocationSpec::Azure {
            container: "sr-test".into(),
            prefix: unique_prefix("sas"),
        },
        &options,
    )
    .unwrap();
    let err = Repository::open(location, KEY)
        .await
        .err()
        .expect("an expired SAS is refused");
    assert!(!err.to_string().contains("c2VjcmV0LXNpZ25hdHVyZQ"), "{err}");
}

#[test]
fn gcs_locations_are_configured_from_a_vault_spec() {
    use site_recovery::storage::StorageRules;
    let storage: site_recovery::api::vault::Storage = serde_json::from_value(
        serde_json::json!({"gcs": {"bucket": "dr-target", "prefix": "site-recovery"}}),
    )
    .unwrap();
    let open =
        |storage: &site_recovery::api::vault::Storage, options: &Options, rules: &StorageRules| {
            Location::from_vault_storage(storage, options, "apps", "spec.target.storage", rules)
        };
    let strict = StorageRules::default();
    // Without a Secret, the operator's own identity is never lent to the vault...
    let err = open(&storage, &Options::new(), &strict).unwrap_err();
    assert!(
        matches!(&err, StorageError::NotAllowed(m) if m.starts_with("spec.target.storage.gcs.credentialsSecretRef: required")),
        "{err}"
    );
    // ...unless the installation allows it.
    let ambient = StorageRules {
        allow_ambient_credentials: true,
        ..Default::default()
    };
    let location = open(&storage, &Options::new(), &ambient).unwrap();
    assert_eq!(location.name(), "gs://dr-target/site-recovery");
    let with_secret: site_recovery::api::vault::Storage = serde_json::from_value(
        serde_json::json!({"gcs": {"bucket": "dr-target", "credentialsSecretRef": {"name": "gcs"}}}),
    )
    .unwrap();
    let bad: Options = [("serviceAccountKey".to_string(), "{not json".to_string())].into();
    let err = open(&with_secret, &bad, &strict).unwrap_err();
    assert!(matches!(err, StorageError::Config(_)), "{err}");
    // A Secret without the key is said as such, and the environment is not consulted.
    let err = open(&with_secret, &Options::new(), &strict).unwrap_err();
    assert!(
        err.to_string().contains("has no serviceAccountKey"),
        "{err}"
    );
}

#[test]
fn vault_s3_locations_use_only_their_secret_and_https() {
    use site_recovery::storage::StorageRules;
    let storage = |endpoint: &str| -> site_recovery::api::vault::Storage {
        serde_json::from_value(serde_json::json!({"s3": {"bucket": "bkt", "endpoint": endpoint, "credentialsSecretRef": {"name": "s3"}}}))
            .unwrap()
    };
    let field = "spec.cache.storage";
    let creds: Options = [
        ("AWS_ACCESS_KEY_ID".to_string(), "id".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "secret".to_string()),
    ]
    .into();
    let strict = StorageRules::default();
    let err = Location::from_vault_storage(
        &storage("http://169.254.169.254"),
        &creds,
        "apps",
        field,
        &strict,
    )
    .unwrap_err();
    assert!(
        matches!(&err, StorageError::NotAllowed(m) if m.starts_with("spec.cache.storage.s3.endpoint: ") && m.contains("not https")),
        "{err}"
    );
    Location::from_vault_storage(
        &storage("https://s3.example"),
        &creds,
        "apps",
        field,
        &strict,
    )
    .unwrap();
    // The process environment has AWS credentials; a vault whose Secret lacks them is refused
    // rather than signed with the platform's.
    // SAFETY: set before any thread of this test reads the environment; the value is a dummy.
    unsafe { std::env::set_var("AWS_ACCESS_KEY_ID", "platform-identity") };
    unsafe { std::env::set_var("AWS_SECRET_ACCESS_KEY", "platform-secret") };
    let err = Location::from_vault_storage(
        &storage("https://s3.example"),
        &Options::new(),
        "apps",
        field,
        &strict,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("has no AWS_ACCESS_KEY_ID"),
        "{err}"
    );
}

/// `read_once_blocking` (the restore's pack reads) on a directory (a file read in place) and on
/// S3 (a body streamed): the object's exact bytes into a reused buffer, and an object over the
/// limit refused by name before its body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_read_once_into_a_kept_buffer_are_exact_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let locations = [
        crate::repository::fs_location(&tmp.path().join("dir")),
        s3(&unique_prefix("read-once")),
    ];
    for location in locations {
        let key = object_store::path::Path::from("data/ab/object");
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        location
            .put(&key, bytes::Bytes::from(body.clone()))
            .await
            .unwrap();
        let runtime = tokio::runtime::Handle::current();
        let (location, key, body) = tokio::task::spawn_blocking(move || {
            // A buffer that held a larger object before: what it ends up holding is this one.
            let mut buf = vec![7u8; 1_000_000];
            location
                .read_once_blocking(&runtime, &key, 300_000, &mut buf)
                .unwrap();
            assert!(buf == body, "{}: the bytes differ", location.name());
            let err = location
                .read_once_blocking(&runtime, &key, 299_999, &mut buf)
                .unwrap_err();
            assert!(
                matches!(
                    &err,
                    StorageError::TooLarge {
                        size: 300_000,
                        max: 299_999,
                        ..
                    }
                ),
                "{}: {err}",
                location.name()
            );
            assert!(err.to_string().contains("data/ab/object"), "{err}");
            (location, key, body)
        })
        .await
        .unwrap();
        // Still readable afterwards (read once drops cached pages, never the object).
        assert_eq!(location.get(&key).await.unwrap().as_ref(), body.as_slice());
    }
}
