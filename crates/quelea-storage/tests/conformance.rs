//! One set of checks, run against every storage backend: local directory,
//! memory, (with the `s3-tests` feature) an S3 server started by
//! `scripts/s3-server.sh`, also through the `minio` and `ibm_cos` flavours,
//! and (with `emulator-tests`) the GCS and Azure Blob emulators started by
//! `scripts/cloud-emulators.sh` (Azure: all of it; GCS: the reads, see
//! `gcs_seed`).

use std::time::{Duration, Instant};

use quelea_core::config::ConfigBuilder;
use quelea_storage::{Error, Storage, MULTIPART_PART_SIZE};

fn check_store(storage: &Storage, prefix: &str) {
    let key = |k: &str| format!("{prefix}{k}");
    storage
        .put_blocking(&key("a"), &b"hello world"[..])
        .unwrap();
    storage.put_blocking(&key("b/c"), &b"xyz"[..]).unwrap();
    assert_eq!(
        &storage.get_blocking(&key("a")).unwrap()[..],
        b"hello world"
    );
    assert_eq!(
        &storage.get_range_blocking(&key("a"), 6..11).unwrap()[..],
        b"world"
    );
    assert_eq!(
        &storage.get_range_blocking(&key("a"), 0..1).unwrap()[..],
        b"h"
    );
    assert!(storage
        .get_range_blocking(&key("a"), 4..4)
        .unwrap()
        .is_empty());
    assert_eq!(storage.head_blocking(&key("a")).unwrap().size, 11);
    let keys: Vec<_> = storage
        .list_blocking(prefix)
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, vec![key("a"), key("b/c")]);
    assert!(matches!(
        storage.get_blocking(&key("zz")),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        storage.head_blocking(&key("zz")),
        Err(Error::NotFound { .. })
    ));
    let err = storage.get_blocking(&key("zz")).unwrap_err().to_string();
    assert!(err.contains(&key("zz")), "{err}");
    assert!(storage.list_blocking(&key("nothing/")).unwrap().is_empty());

    // A zero-byte object is an object like any other.
    storage.put_blocking(&key("empty"), &b""[..]).unwrap();
    assert_eq!(storage.head_blocking(&key("empty")).unwrap().size, 0);
    assert!(storage.get_blocking(&key("empty")).unwrap().is_empty());

    check_put_if_absent(storage, &key("claim"));

    assert_eq!(storage.delete_prefix_blocking(prefix).unwrap(), 4);
    assert!(storage.list_blocking(prefix).unwrap().is_empty());
    storage.delete_blocking(&key("a")).unwrap();
}

/// A create-if-absent (what worker runtimes claim Invocations with): of 8
/// racing creators exactly one wins, the object holds the winner's bytes,
/// and a later create finds it there and changes nothing.
fn check_put_if_absent(storage: &Storage, key: &str) {
    let barrier = std::sync::Barrier::new(8);
    let winners: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    storage
                        .put_if_absent_blocking(key, format!("creator {i}").into_bytes())
                        .unwrap()
                        .then_some(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let held = storage.get_blocking(key).unwrap();
    assert_eq!(held, format!("creator {}", winners[0]).into_bytes());
    assert!(!storage.put_if_absent_blocking(key, &b"late"[..]).unwrap());
    assert_eq!(storage.get_blocking(key).unwrap(), held);
}

/// Bytes that differ from part to part, so a part out of place shows.
fn patterned(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect()
}

/// A 20 MiB object over a lowered threshold goes up in three parts and reads
/// back identical, across part boundaries too.
fn check_multipart(storage: &Storage, prefix: &str) -> String {
    let key = format!("{prefix}large");
    let data = patterned(20 * 1024 * 1024);
    let storage = storage.clone().with_multipart_threshold(6 * 1024 * 1024);
    storage.put_blocking(&key, data.clone()).unwrap();
    assert_eq!(storage.head_blocking(&key).unwrap().size, data.len() as u64);
    let back = storage.get_blocking(&key).unwrap();
    assert!(back[..] == data[..], "multipart object differs");
    let boundary = MULTIPART_PART_SIZE as u64;
    assert_eq!(
        &storage
            .get_range_blocking(&key, boundary - 3..boundary + 3)
            .unwrap()[..],
        &data[boundary as usize - 3..boundary as usize + 3]
    );
    // Under the threshold, a plain put still works.
    storage.put_blocking(&key, &b"small"[..]).unwrap();
    assert_eq!(&storage.get_blocking(&key).unwrap()[..], b"small");
    storage.put_blocking(&key, data).unwrap();
    key
}

fn localdisk(dir: &std::path::Path) -> Storage {
    let config = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("localdisk.root", dir.to_str().unwrap())
        .build()
        .unwrap();
    Storage::from_config(&config).unwrap()
}

fn memory(bucket: &str) -> Storage {
    let config = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("storage", "memory")
        .set("bucket", bucket)
        .build()
        .unwrap();
    Storage::from_config(&config).unwrap()
}

#[test]
fn localdisk_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let storage = localdisk(dir.path());
    check_store(&storage, "quelea/t/");
    assert!(storage
        .location()
        .describe()
        .contains(dir.path().to_str().unwrap()));
}

#[test]
fn memory_conformance() {
    check_store(&memory("conformance"), "quelea/t/");
}

#[test]
fn localdisk_multipart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = localdisk(dir.path());
    let key = check_multipart(&storage, "quelea/m/");
    assert_eq!(
        storage.list_blocking("quelea/m/").unwrap().len(),
        1,
        "{key}"
    );
}

#[test]
fn memory_multipart() {
    check_multipart(&memory("conformance-multipart"), "quelea/m/");
}

/// A closed port on 127.0.0.1: every request is refused.
fn closed_local_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[test]
fn s3_server_down_is_an_error_in_bounded_time() {
    let endpoint = closed_local_endpoint();
    let config = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("storage", "s3")
        .set("bucket", "quelea-test")
        .set("s3.endpoint", endpoint.clone())
        .set("s3.access_key_id", "testkey")
        .set("s3.secret_access_key", "testsecret")
        .set("s3.path_style", true)
        .set("s3.allow_http", true)
        .build()
        .unwrap();
    let storage = Storage::from_config(&config).unwrap();
    let started = Instant::now();
    let err = storage
        .put_blocking("quelea/down/x", &b"x"[..])
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");
    assert!(
        err.contains("put") && err.contains("quelea/down/x") && err.contains(&endpoint),
        "{err}"
    );
    // The root cause is named, once.
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    let started = Instant::now();
    let err = storage
        .list_blocking("quelea/down/")
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");
    assert!(err.contains("list"), "{err}");
}

/// A server that accepts connections and never answers, as a stopped
/// (SIGSTOP) or wedged S3 server looks from the client: the kernel completes
/// the handshake, nothing reads or writes. `storage_client` bounds the wait:
/// a request fails after `read_timeout` without a byte, retries stop after
/// `retry_timeout`, and the error names the operation, key and storage.
#[test]
fn a_frozen_s3_server_is_an_error_within_the_storage_client_deadlines() {
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", frozen.local_addr().unwrap());
    let config = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("storage", "s3")
        .set("bucket", "quelea-test")
        .set("s3.endpoint", endpoint.clone())
        .set("s3.access_key_id", "testkey")
        .set("s3.secret_access_key", "testsecret")
        .set("s3.path_style", true)
        .set("s3.allow_http", true)
        .set("storage_client.read_timeout", 1.0)
        .set("storage_client.retry_timeout", 2.0)
        .build()
        .unwrap();
    let storage = Storage::from_config(&config).unwrap();
    let started = Instant::now();
    let put = storage.put_blocking("quelea/frozen/x", &b"x"[..]);
    let waited = started.elapsed();
    let err = put.expect_err("a frozen server cannot succeed").to_string();
    assert!(
        err.contains("put") && err.contains("quelea/frozen/x") && err.contains(&endpoint),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}: {err}"
    );
    let started = Instant::now();
    let err = storage
        .list_blocking("quelea/frozen/")
        .unwrap_err()
        .to_string();
    let waited = started.elapsed();
    assert!(
        err.contains("list") && waited < Duration::from_secs(10),
        "{waited:?}: {err}"
    );
    drop(frozen);
}

#[cfg(feature = "s3-tests")]
mod s3 {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    use object_store::ObjectStoreExt;
    use quelea_core::config::Config;

    /// Differs between runs and processes, so runs against a shared server
    /// cannot see each other's objects.
    fn unique(name: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("{name}-{}-{nanos}", std::process::id())
    }

    fn unique_prefix(name: &str) -> String {
        format!("quelea-conformance/{}/", unique(name))
    }

    /// The test bucket `scripts/s3-server.sh` creates.
    const BUCKET: &str = "quelea-test";

    /// `bucket` on the S3 server from the process environment
    /// (`QUELEA_S3_*`), with `builder`'s settings.
    fn s3_config(bucket: &str, builder: ConfigBuilder) -> Config {
        assert!(
            std::env::var_os("QUELEA_S3_ENDPOINT").is_some(),
            "QUELEA_S3_ENDPOINT is not set: the `s3-tests` feature needs a running S3 server. \
             Start one with `eval \"$(scripts/s3-server.sh start /tmp/quelea-s3)\"`, and stop it \
             afterwards with `scripts/s3-server.sh stop /tmp/quelea-s3`."
        );
        builder
            .no_file()
            .set("storage", "s3")
            .set("bucket", bucket)
            .build()
            .unwrap()
    }

    fn s3_storage() -> Storage {
        Storage::from_config(&s3_config(BUCKET, ConfigBuilder::new())).unwrap()
    }

    #[test]
    fn s3_conformance() {
        let storage = s3_storage();
        check_store(&storage, &unique_prefix("store"));
        assert!(storage.location().describe().contains(BUCKET));
    }

    #[test]
    fn s3_multipart_upload_uses_parts() {
        let storage = s3_storage();
        let prefix = unique_prefix("multipart");
        let key = check_multipart(&storage, &prefix);

        // Ask S3 itself: a multipart object's ETag ends in `-<parts>`.
        let config = s3_config(BUCKET, ConfigBuilder::new());
        let s3 = &config.s3;
        let raw = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(s3.endpoint.clone().unwrap())
            .with_region(s3.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_access_key_id(s3.access_key_id.clone().unwrap())
            .with_secret_access_key(s3.secret_access_key.as_ref().unwrap().expose())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap();
        let meta = quelea_storage::io_runtime()
            .block_on(raw.head(&object_store::path::Path::from(key.as_str())))
            .unwrap();
        let etag = meta.e_tag.unwrap_or_default();
        assert!(etag.trim_matches('"').ends_with("-3"), "ETag {etag}");
        storage.delete_prefix_blocking(&prefix).unwrap();
    }

    #[test]
    fn s3_wrong_secret_is_a_clear_error() {
        let config = s3_config(
            BUCKET,
            ConfigBuilder::new().set("s3.secret_access_key", "not-the-secret"),
        );
        let storage = Storage::from_config(&config).unwrap();
        let key = format!("{}x", unique_prefix("wrong-secret"));
        let started = Instant::now();
        let err = storage.put_blocking(&key, &b"x"[..]).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        assert!(
            matches!(
                err,
                Error::Backend {
                    operation: "put",
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&key) && message.contains("SignatureDoesNotMatch"),
            "{message}"
        );
        let err = storage.get_blocking(&key).unwrap_err();
        assert!(!matches!(err, Error::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("get"), "{err}");
    }

    /// MinIO and IBM COS are S3 with their own sections: the same server
    /// through each flavour's settings.
    #[test]
    fn s3_flavours_conformance() {
        let base = s3_config(BUCKET, ConfigBuilder::new());
        let s3 = &base.s3;
        let endpoint = s3.endpoint.clone().unwrap();
        let key_id = s3.access_key_id.clone().unwrap();
        let secret = s3.secret_access_key.as_ref().unwrap().expose().to_owned();
        for flavour in ["minio", "ibm_cos"] {
            let config = ConfigBuilder::new()
                .no_file()
                .env(Vec::new())
                .set("storage", flavour)
                .set("bucket", BUCKET)
                .set(&format!("{flavour}.endpoint"), endpoint.clone())
                .set(&format!("{flavour}.access_key_id"), key_id.clone())
                .set(&format!("{flavour}.secret_access_key"), secret.clone())
                .build()
                .unwrap();
            let storage = Storage::from_config(&config).unwrap();
            check_store(&storage, &unique_prefix(flavour));
            let described = storage.location().describe();
            assert!(
                described.starts_with(flavour) && described.contains(&endpoint),
                "{described}"
            );
        }
    }

    #[test]
    fn s3_missing_bucket_is_a_clear_error() {
        // A fresh name each run: SeaweedFS creates a missing bucket on PUT
        // (AWS answers NoSuchBucket), so only reads are checked here.
        let bucket = unique("quelea-missing");
        let config = s3_config(&bucket, ConfigBuilder::new());
        let storage = Storage::from_config(&config).unwrap();
        let started = Instant::now();
        let err = storage.list_blocking("quelea/").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        assert!(
            matches!(
                err,
                Error::Backend {
                    operation: "list",
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&bucket) && message.contains("NoSuchBucket"),
            "{message}"
        );
        // In words, not the server's XML.
        assert!(
            message.contains(&format!("the bucket `{bucket}` does not exist")),
            "{message}"
        );
        assert!(!message.contains("<Code>"), "{message}");
        let err = storage.get_blocking("quelea/x").unwrap_err();
        // Not "object not found": the bucket is what is missing.
        assert!(!matches!(err, Error::NotFound { .. }), "{err}");
        let err = err.to_string();
        assert!(err.contains(&bucket) && err.contains("quelea/x"), "{err}");
        assert!(
            err.contains(&format!("the bucket `{bucket}` does not exist")),
            "{err}"
        );
    }
}

/// The same checks against the GCS and Azure Blob emulators that
/// `scripts/cloud-emulators.sh` starts (fake-gcs-server and Azurite).
#[cfg(feature = "emulator-tests")]
mod emulators {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    use quelea_core::config::Config;

    fn unique(name: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("{name}-{}-{nanos}", std::process::id())
    }

    fn unique_prefix(name: &str) -> String {
        format!("quelea-conformance/{}/", unique(name))
    }

    /// The bucket and container the script creates.
    const BUCKET: &str = "quelea-test";

    fn emulator_config(kind: &str, bucket: &str, builder: ConfigBuilder) -> Config {
        assert!(
            std::env::var_os("QUELEA_GCS_ENDPOINT").is_some()
                && std::env::var_os("QUELEA_AZURE_ENDPOINT").is_some(),
            "QUELEA_GCS_ENDPOINT / QUELEA_AZURE_ENDPOINT are not set: the `emulator-tests` \
             feature needs the emulators running. Start them with \
             `eval \"$(scripts/cloud-emulators.sh start /tmp/quelea-emu)\"`, and stop them \
             afterwards with `scripts/cloud-emulators.sh stop /tmp/quelea-emu`."
        );
        builder
            .no_file()
            .set("storage", kind)
            .set("bucket", bucket)
            .build()
            .unwrap()
    }

    fn storage(kind: &str) -> Storage {
        Storage::from_config(&emulator_config(kind, BUCKET, ConfigBuilder::new())).unwrap()
    }

    /// Uploads through the emulator's JSON API: fake-gcs-server does not
    /// implement the XML API's object PUT and multipart uploads that
    /// object_store writes with (fsouza/fake-gcs-server#331, #852), only its
    /// reads and listings. So GCS runs the read half of the suite, on objects
    /// put there by this upload. Checked on 2026-12-01: the wheel's binary is
    /// fake-gcs-server 1.54.0, and upstream's newest (1.55.1) still routes a
    /// plain `PUT /bucket/key` to its JSON insert (400 `invalid uploadType`)
    /// and has no XML multipart; gcp-storage-emulator 2026.7.19 takes the XML
    /// PUT but not HEAD, the XML DELETE or multipart; Debian's Go (1.19) is
    /// too old to build fake-gcs-server (go 1.25) and the Go module proxy is
    /// unreachable here.
    pub(crate) fn gcs_seed(bucket: &str, key: &str, data: &[u8]) {
        let endpoint = std::env::var("QUELEA_GCS_ENDPOINT").unwrap();
        let url = format!("{endpoint}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={key}");
        quelea_storage::install_tls_provider();
        let status = quelea_storage::io_runtime().block_on(async {
            reqwest::Client::new()
                .post(url)
                .body(data.to_vec())
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "seeding gs://{bucket}/{key}: {status}");
    }

    #[test]
    fn gcs_read_conformance() {
        let storage = storage("gcs");
        let prefix = unique_prefix("reads");
        let key = |k: &str| format!("{prefix}{k}");
        gcs_seed(BUCKET, &key("a"), b"hello world");
        gcs_seed(BUCKET, &key("b/c"), b"xyz");
        gcs_seed(BUCKET, &key("empty"), b"");
        assert_eq!(
            &storage.get_blocking(&key("a")).unwrap()[..],
            b"hello world"
        );
        assert_eq!(
            &storage.get_range_blocking(&key("a"), 6..11).unwrap()[..],
            b"world"
        );
        assert_eq!(
            &storage.get_range_blocking(&key("a"), 0..1).unwrap()[..],
            b"h"
        );
        assert!(storage
            .get_range_blocking(&key("a"), 4..4)
            .unwrap()
            .is_empty());
        assert_eq!(storage.head_blocking(&key("a")).unwrap().size, 11);
        let keys: Vec<_> = storage
            .list_blocking(&prefix)
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, vec![key("a"), key("b/c"), key("empty")]);
        assert!(matches!(
            storage.get_blocking(&key("zz")),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            storage.head_blocking(&key("zz")),
            Err(Error::NotFound { .. })
        ));
        let err = storage.get_blocking(&key("zz")).unwrap_err().to_string();
        assert!(err.contains(&key("zz")), "{err}");
        assert!(storage.list_blocking(&key("nothing/")).unwrap().is_empty());
        assert_eq!(storage.head_blocking(&key("empty")).unwrap().size, 0);
        assert!(storage.get_blocking(&key("empty")).unwrap().is_empty());
        let described = storage.location().describe();
        assert!(
            described.contains(BUCKET) && described.contains("gcs"),
            "{described}"
        );
    }

    #[test]
    fn azure_conformance() {
        let storage = storage("azure");
        check_store(&storage, &unique_prefix("store"));
        let described = storage.location().describe();
        assert!(
            described.contains(BUCKET) && described.contains("devstoreaccount1"),
            "{described}"
        );
    }

    #[test]
    fn azure_multipart() {
        let storage = storage("azure");
        let prefix = unique_prefix("multipart");
        check_multipart(&storage, &prefix);
        storage.delete_prefix_blocking(&prefix).unwrap();
    }

    fn assert_missing_bucket(kind: &str, word: &str, writes: bool) {
        let bucket = unique("quelea-missing");
        let storage =
            Storage::from_config(&emulator_config(kind, &bucket, ConfigBuilder::new())).unwrap();
        let started = Instant::now();
        let err = storage.list_blocking("quelea/").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        assert!(
            matches!(
                err,
                Error::Backend {
                    operation: "list",
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&bucket) && message.contains(word),
            "{message}"
        );
        if !writes {
            return;
        }
        let started = Instant::now();
        let err = storage
            .put_blocking("quelea/x", &b"x"[..])
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        assert!(
            err.contains("put") && err.contains(&bucket) && err.contains(word),
            "{err}"
        );
    }

    #[test]
    fn gcs_missing_bucket_is_a_clear_error() {
        // fake-gcs-server answers 500 `no bucket named ...`; GCS itself 404.
        assert_missing_bucket("gcs", "no bucket named", false);
    }

    #[test]
    fn azure_missing_container_is_a_clear_error() {
        assert_missing_bucket("azure", "ContainerNotFound", true);
    }

    #[test]
    fn azure_wrong_key_is_a_clear_error() {
        // A well-formed key that is not the account's.
        let config = emulator_config(
            "azure",
            BUCKET,
            ConfigBuilder::new().set("azure.access_key", "bm90LXRoZS1rZXk="),
        );
        let storage = Storage::from_config(&config).unwrap();
        let key = format!("{}x", unique_prefix("wrong-key"));
        let started = Instant::now();
        let err = storage.put_blocking(&key, &b"x"[..]).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(&key) && message.contains("put") && message.contains("403"),
            "{message}"
        );
        assert!(!message.contains("bm90LXRoZS1rZXk="), "{message}");
        let err = storage.get_blocking(&key).unwrap_err();
        assert!(!matches!(err, Error::NotFound { .. }), "{err}");
    }

    #[test]
    fn azure_bad_sas_token_is_a_clear_error_that_hides_it() {
        let config = emulator_config(
            "azure",
            BUCKET,
            ConfigBuilder::new().set(
                "azure.sas_token",
                "sv=2021-08-06&sp=rwl&sig=c2VjcmV0LXNpZw%3D%3D",
            ),
        );
        let storage = Storage::from_config(&config).unwrap();
        let key = format!("{}x", unique_prefix("bad-sas"));
        let started = Instant::now();
        let err = storage.put_blocking(&key, &b"x"[..]).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(&key) && shown.contains("403"), "{shown}");
        assert!(!shown.contains("c2VjcmV0LXNpZw"), "{shown}");
    }

    #[test]
    fn gcs_bad_service_account_is_a_clear_error() {
        // fake-gcs-server accepts any credential, so the bad credentials are
        // ones the client itself must refuse: a file that is not there, and
        // a key that is not a service account.
        let missing = std::env::temp_dir()
            .join(unique("no-such-sa"))
            .join("sa.json");
        let config = emulator_config(
            "gcs",
            BUCKET,
            ConfigBuilder::new()
                .set("gcs.anonymous", false)
                .set("gcs.service_account_path", missing.to_str().unwrap()),
        );
        let err = Storage::from_config(&config).unwrap_err().to_string();
        assert!(
            err.starts_with("storage config: gcs:") && err.contains("sa.json"),
            "{err}"
        );
        let config = emulator_config(
            "gcs",
            BUCKET,
            ConfigBuilder::new()
                .set("gcs.anonymous", false)
                .set("gcs.service_account_key", "{\"type\": \"nonsense-secret\"}"),
        );
        let err = Storage::from_config(&config).unwrap_err().to_string();
        assert!(err.starts_with("storage config: gcs:"), "{err}");
        assert!(!err.contains("nonsense-secret"), "{err}");
    }
}

fn down_is_an_error_in_bounded_time(kind: &str, settings: &[(&str, serde_json::Value)]) {
    let endpoint = closed_local_endpoint();
    let mut builder = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("storage", kind)
        .set("bucket", "quelea-test");
    for (key, value) in settings {
        builder = builder.set(key, value.clone());
    }
    let config = builder
        .set(&format!("{kind}.endpoint"), endpoint.clone())
        .build()
        .unwrap();
    let storage = Storage::from_config(&config).unwrap();
    for (operation, result) in [
        (
            "put",
            storage.put_blocking("quelea/down/x", &b"x"[..]).err(),
        ),
        ("get", storage.get_blocking("quelea/down/x").err()),
        ("list", storage.list_blocking("quelea/down/").err()),
    ] {
        let started = Instant::now();
        let err = result.unwrap().to_string();
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        assert!(
            err.contains(operation) && err.contains(&endpoint) && err.contains("refused"),
            "{kind}: {err}"
        );
    }
}

#[test]
fn gcs_emulator_down_is_an_error_in_bounded_time() {
    down_is_an_error_in_bounded_time("gcs", &[("gcs.anonymous", true.into())]);
}

#[test]
fn azure_emulator_down_is_an_error_in_bounded_time() {
    down_is_an_error_in_bounded_time("azure", &[("azure.use_emulator", true.into())]);
}

#[test]
fn minio_down_is_an_error_in_bounded_time() {
    down_is_an_error_in_bounded_time(
        "minio",
        &[
            ("minio.access_key_id", "k".into()),
            ("minio.secret_access_key", "s".into()),
        ],
    );
}

#[test]
fn ibm_cos_endpoint_comes_from_its_region() {
    let config = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("storage", "ibm_cos")
        .set("bucket", "b")
        .set("ibm_cos.region", "eu-de")
        .set("ibm_cos.access_key_id", "k")
        .set("ibm_cos.secret_access_key", "s")
        .build()
        .unwrap();
    let storage = Storage::from_config(&config).unwrap();
    assert_eq!(
        storage.location().describe(),
        "ibm_cos bucket `b` at https://s3.eu-de.cloud-object-storage.appdomain.cloud"
    );
    let config = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("storage", "ibm_cos")
        .build()
        .unwrap();
    let err = Storage::from_config(&config).unwrap_err().to_string();
    assert!(err.contains("ibm_cos.region"), "{err}");
}
