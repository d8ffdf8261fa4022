//! Discovery over storage buckets, local paths and HTTP, and reading the
//! discovered objects chunk by chunk.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quelea_core::config::ConfigBuilder;
use quelea_partition::{
    discover, header_line, ChunkReader, ChunkSpec, Error, ObjectKind, ObjectRef, StorageResolver,
};
use quelea_storage::Storage;

fn memory_storage(bucket: &str) -> Storage {
    let config = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("storage", "memory")
        .set("bucket", bucket)
        .build()
        .unwrap();
    Storage::from_config(&config).unwrap()
}

fn keys(found: &[ObjectRef]) -> Vec<String> {
    found
        .iter()
        .map(|o| match &o.kind {
            ObjectKind::Storage { bucket, key, .. } => format!("{bucket}/{key}"),
            other => panic!("not a storage object: {other:?}"),
        })
        .collect()
}

/// Every chunk of every object, read with a small block size.
fn read_chunks(found: &[ObjectRef], storages: &StorageResolver, spec: ChunkSpec) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    for object in found {
        let source = object.open(storages).unwrap();
        for chunk in object.plan(spec).unwrap() {
            let mut reader = ChunkReader::new(&source, chunk.range(), Some(b"\n"))
                .unwrap()
                .with_block_size(NonZeroUsize::new(5).unwrap());
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            chunks.push(data);
        }
    }
    chunks
}

#[test]
fn storage_keys_prefixes_buckets_and_globs() {
    let storage = memory_storage("disc-main");
    for (key, data) in [
        ("logs/2024-01.csv", "a\nb\n"),
        ("logs/2024-02.csv", "c\n"),
        ("logs/2024-x/deep.csv", "d\n"),
        ("logs/2023-12.csv", "e\n"),
        ("other.txt", "f"),
    ] {
        storage.put_blocking(key, data.as_bytes()).unwrap();
    }
    let storages = StorageResolver::new(storage.clone());

    let found = discover("s3://disc-main/logs/2024-01.csv", &storages).unwrap();
    assert_eq!(keys(&found), ["disc-main/logs/2024-01.csv"]);
    assert_eq!(found[0].size, 4);
    assert!(found[0].splittable);
    // Without the scheme: `bucket/key`.
    assert_eq!(
        discover("disc-main/other.txt", &storages).unwrap()[0].size,
        1
    );

    let under_logs = [
        "disc-main/logs/2023-12.csv",
        "disc-main/logs/2024-01.csv",
        "disc-main/logs/2024-02.csv",
        "disc-main/logs/2024-x/deep.csv",
    ];
    assert_eq!(
        keys(&discover("s3://disc-main/logs/", &storages).unwrap()),
        under_logs
    );
    assert_eq!(
        keys(&discover("disc-main/logs/", &storages).unwrap()),
        under_logs
    );
    // A key that is not an object but a prefix is read as the prefix.
    assert_eq!(
        keys(&discover("s3://disc-main/logs", &storages).unwrap()),
        under_logs
    );

    let whole_bucket = keys(&discover("s3://disc-main", &storages).unwrap());
    assert_eq!(whole_bucket.len(), 5);
    assert_eq!(
        whole_bucket,
        keys(&discover("disc-main/", &storages).unwrap())
    );

    // `*` stays within one path segment; `**` crosses them.
    assert_eq!(
        keys(&discover("s3://disc-main/logs/2024-*.csv", &storages).unwrap()),
        ["disc-main/logs/2024-01.csv", "disc-main/logs/2024-02.csv"]
    );
    assert_eq!(
        keys(&discover("s3://disc-main/logs/**/*.csv", &storages).unwrap()).len(),
        4
    );
    assert_eq!(
        keys(&discover("s3://disc-main/*.txt", &storages).unwrap()),
        ["disc-main/other.txt"]
    );
    assert_eq!(
        keys(&discover("s3://disc-main/logs/202?-0[12].csv", &storages).unwrap()),
        ["disc-main/logs/2024-01.csv", "disc-main/logs/2024-02.csv"]
    );

    // The objects read back whole, line by line, through their chunks.
    let found = discover("s3://disc-main/logs/", &storages).unwrap();
    let chunks = read_chunks(&found, &storages, ChunkSpec::Size(1));
    assert_eq!(chunks.concat(), b"e\na\nb\nc\nd\n");
    assert!(chunks.iter().all(|c| c.is_empty() || c.ends_with(b"\n")));
}

#[test]
fn matching_nothing_says_what_was_searched() {
    let storage = memory_storage("disc-empty");
    storage.put_blocking("data/one.csv", &b"x"[..]).unwrap();
    let storages = StorageResolver::new(storage);

    let err = discover("s3://disc-empty/missing.csv", &storages)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.csv") && err.contains("missing.csv/") && err.contains("disc-empty"),
        "{err}"
    );
    let err = discover("s3://disc-empty/nope/", &storages)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prefix `nope/`"), "{err}");
    let err = discover("s3://disc-empty/data/*.json", &storages)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data/*.json") && err.contains("prefix `data/`"),
        "{err}"
    );
    let err = discover(
        "s3://disc-never-written",
        &StorageResolver::new(memory_storage("disc-never-written")),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("every key") && err.contains("disc-never-written"),
        "{err}"
    );

    let err = discover("ftp://host/file", &storages).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("ftp://"), "{err}");
    let err = discover("s3:///key", &storages).unwrap_err().to_string();
    assert!(err.contains("no bucket"), "{err}");
    let err = discover("s3://buck*/key", &storages)
        .unwrap_err()
        .to_string();
    assert!(err.contains("buck*"), "{err}");
}

#[test]
fn other_buckets_need_a_factory() {
    let own = memory_storage("disc-own");
    let other = memory_storage("disc-other");
    other.put_blocking("k.txt", &b"hello\n"[..]).unwrap();

    let err = discover("s3://disc-other/k.txt", &StorageResolver::new(own.clone())).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownBucket { bucket, configured } if bucket == "disc-other" && configured == "disc-own"),
        "{err}"
    );

    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let storages = StorageResolver::new(own).with_factory(move |bucket| {
        counter.fetch_add(1, Ordering::Relaxed);
        assert_eq!(bucket, "disc-other");
        Ok(memory_storage(bucket))
    });
    let found = discover("s3://disc-other/k.txt", &storages).unwrap();
    assert_eq!(keys(&found), ["disc-other/k.txt"]);
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    let source = found[0].open(&storages).unwrap();
    assert_eq!(&header_line(&source, b"\n").unwrap()[..], b"hello\n");
}

#[test]
fn resolver_from_config_reaches_sibling_buckets_on_local_disk() {
    let root = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("localdisk.root", root.path().to_str().unwrap())
        .set("bucket", "jobs")
        .build()
        .unwrap();
    std::fs::create_dir_all(root.path().join("inputs/dir")).unwrap();
    std::fs::write(root.path().join("inputs/dir/a.txt"), "1\n2\n3\n").unwrap();
    let storages = StorageResolver::from_config(&config).unwrap();
    let found = discover("s3://inputs/dir/", &storages).unwrap();
    assert_eq!(keys(&found), ["inputs/dir/a.txt"]);
    let chunks = read_chunks(&found, &storages, ChunkSpec::Number(3));
    assert_eq!(chunks, [b"1\n".to_vec(), b"2\n".to_vec(), b"3\n".to_vec()]);
}

fn local_paths(found: &[ObjectRef]) -> Vec<String> {
    found
        .iter()
        .map(|o| match &o.kind {
            ObjectKind::Local { path } => path.display().to_string(),
            other => panic!("not a local object: {other:?}"),
        })
        .collect()
}

#[test]
fn local_files_directories_and_globs() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap().to_owned();
    let write = |rel: &str, data: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    write("b.csv", "h\n1\n2\n");
    write("a.txt", "x");
    write("sub/c.csv", "3\n");
    write("sub/deeper/d.csv", "");
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    // A link back up must not make the walk loop.
    std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop")).unwrap();

    let found = discover(&base, &StorageResolver::new(memory_storage("disc-local"))).unwrap();
    assert_eq!(
        local_paths(&found),
        [
            format!("{base}/a.txt"),
            format!("{base}/b.csv"),
            format!("{base}/sub/c.csv"),
            format!("{base}/sub/deeper/d.csv"),
        ]
    );
    assert_eq!(
        found.iter().map(|o| o.size).collect::<Vec<_>>(),
        [1, 6, 2, 0]
    );

    let storages = StorageResolver::new(memory_storage("disc-local"));
    let single = discover(&format!("file://{base}/b.csv"), &storages).unwrap();
    assert_eq!(local_paths(&single), [format!("{base}/b.csv")]);
    let chunks = read_chunks(&single, &storages, ChunkSpec::Size(2));
    assert_eq!(chunks, [b"h\n".to_vec(), b"1\n".to_vec(), b"2\n".to_vec()]);
    // The zero-byte file is one empty chunk.
    let empty = discover(&format!("{base}/sub/deeper/d.csv"), &storages).unwrap();
    assert_eq!(
        read_chunks(&empty, &storages, ChunkSpec::Size(2)),
        [Vec::<u8>::new()]
    );

    assert_eq!(
        local_paths(&discover(&format!("{base}/*.csv"), &storages).unwrap()),
        [format!("{base}/b.csv")]
    );
    assert_eq!(
        local_paths(&discover(&format!("{base}/**/*.csv"), &storages).unwrap()).len(),
        3
    );

    let err = discover(&format!("{base}/nothing-here"), &storages)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nothing-here") && err.contains("does not exist"),
        "{err}"
    );
    let err = discover(&format!("{base}/empty"), &storages)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("empty") && err.contains("recursively"),
        "{err}"
    );
    let err = discover(&format!("{base}/*.json"), &storages)
        .unwrap_err()
        .to_string();
    assert!(err.contains("*.json"), "{err}");
}

#[test]
fn relative_local_paths_need_a_dot() {
    let storages = StorageResolver::new(memory_storage("disc-rel"));
    // The crate's own directory is the test's working directory.
    let found = discover("./Cargo.toml", &storages).unwrap();
    assert_eq!(local_paths(&found), ["./Cargo.toml"]);
    assert!(found[0].size > 0);
    // Without `./` it names a bucket, which is not the configured one.
    assert!(matches!(
        discover("src/lib.rs", &storages),
        Err(Error::UnknownBucket { .. })
    ));
    let globbed = local_paths(&discover("./src/*.rs", &storages).unwrap());
    assert!(globbed.contains(&"./src/lib.rs".to_owned()), "{globbed:?}");
}

/// A tiny HTTP/1.1 server on 127.0.0.1 that serves one body, with or without
/// byte ranges, and counts the GETs it answers.
struct TestServer {
    url: String,
    gets: Arc<AtomicUsize>,
}

impl TestServer {
    fn start(body: &'static [u8], ranges: bool) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/data.txt", listener.local_addr().unwrap());
        let gets = Arc::new(AtomicUsize::new(0));
        let counter = gets.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let counter = counter.clone();
                std::thread::spawn(move || serve(stream, body, ranges, &counter));
            }
        });
        TestServer { url, gets }
    }
}

fn serve(stream: TcpStream, body: &[u8], ranges: bool, gets: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut range = None;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("range") {
                    let spec = value.trim().strip_prefix("bytes=").unwrap();
                    let (first, last) = spec.split_once('-').unwrap();
                    range = Some((
                        first.parse::<usize>().unwrap(),
                        last.parse::<usize>().unwrap(),
                    ));
                }
            }
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let accept = if ranges {
            "Accept-Ranges: bytes\r\n"
        } else {
            ""
        };
        let (status, payload, extra) = if path != "/data.txt" {
            ("404 Not Found", &b"no such thing"[..], String::new())
        } else {
            match (range, ranges) {
                (Some((first, last)), true) => (
                    "206 Partial Content",
                    &body[first..=last],
                    format!("Content-Range: bytes {first}-{last}/{}\r\n", body.len()),
                ),
                _ => ("200 OK", body, String::new()),
            }
        };
        if method == "GET" {
            gets.fetch_add(1, Ordering::Relaxed);
        }
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{accept}{extra}\r\n",
            payload.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        if method != "HEAD" {
            stream.write_all(payload).unwrap();
        }
        stream.flush().unwrap();
    }
}

const HTTP_BODY: &[u8] = b"id,name\n1,ann\n2,bob\n3,cy\n4,dee\n";

#[test]
fn http_with_ranges_is_split_and_read_by_range() {
    let server = TestServer::start(HTTP_BODY, true);
    let storages = StorageResolver::new(memory_storage("disc-http"));
    let found = discover(&server.url, &storages).unwrap();
    assert_eq!(
        found,
        [ObjectRef {
            kind: ObjectKind::Http {
                url: server.url.clone()
            },
            size: HTTP_BODY.len() as u64,
            splittable: true,
        }]
    );
    let plan = found[0].plan(ChunkSpec::Number(4)).unwrap();
    assert_eq!(plan.len(), 4);
    let chunks = read_chunks(&found, &storages, ChunkSpec::Number(4));
    assert_eq!(chunks.concat(), HTTP_BODY);
    assert!(chunks.iter().all(|c| c.is_empty() || c.ends_with(b"\n")));
    // Read in 5-byte blocks, by range: many GETs, none of the whole body.
    assert!(server.gets.load(Ordering::Relaxed) > 4);

    let source = found[0].open(&storages).unwrap();
    assert_eq!(&header_line(&source, b"\n").unwrap()[..], b"id,name\n");
}

#[test]
fn http_without_ranges_is_read_whole_once() {
    let server = TestServer::start(HTTP_BODY, false);
    let storages = StorageResolver::new(memory_storage("disc-http"));
    let found = discover(&server.url, &storages).unwrap();
    assert_eq!(found[0].size, HTTP_BODY.len() as u64);
    assert!(!found[0].splittable);
    assert_eq!(found[0].plan(ChunkSpec::Number(4)).unwrap().len(), 1);
    let chunks = read_chunks(&found, &storages, ChunkSpec::Number(4));
    assert_eq!(chunks, [HTTP_BODY.to_vec()]);
    // Small blocks, yet the body was fetched once and sliced.
    assert_eq!(server.gets.load(Ordering::Relaxed), 1);
}

#[test]
fn http_errors_name_the_url() {
    let server = TestServer::start(HTTP_BODY, true);
    let storages = StorageResolver::new(memory_storage("disc-http"));
    let missing = server.url.replace("data.txt", "missing.txt");
    let err = discover(&missing, &storages).unwrap_err().to_string();
    assert!(err.contains(&missing) && err.contains("404"), "{err}");

    // A port nobody listens on: refused at once, not a hang.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("http://{closed}/x");
    let started = Instant::now();
    let err = discover(&url, &storages).unwrap_err().to_string();
    assert!(err.contains(&url), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn an_object_size_mismatch_is_caught() {
    // The object shrinks between discovery and reading.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.txt");
    std::fs::write(&path, "0123456789").unwrap();
    let storages = StorageResolver::new(memory_storage("disc-shrink"));
    let found = discover(path.to_str().unwrap(), &storages).unwrap();
    std::fs::write(&path, "01").unwrap();
    let source = found[0].open(&storages).unwrap();
    let err = ChunkReader::new(&source, 0..10, None).err().unwrap();
    assert!(err.to_string().contains("f.txt"), "{err}");
}

#[test]
fn each_storage_has_its_schemes_and_others_need_their_settings() {
    let root = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("localdisk.root", root.path().to_str().unwrap())
        .set("bucket", "jobs")
        .build()
        .unwrap();
    std::fs::create_dir_all(root.path().join("inputs/dir")).unwrap();
    std::fs::write(root.path().join("inputs/dir/a.txt"), "1\n2\n").unwrap();
    let storages = StorageResolver::from_config(&config).unwrap();
    // Lithops' name of the local store, and quelea's.
    for scheme in ["localhost", "localdisk"] {
        let found = discover(&format!("{scheme}://inputs/dir/"), &storages).unwrap();
        assert_eq!(keys(&found), ["inputs/dir/a.txt"]);
        assert_eq!(
            found[0].kind.to_string(),
            "localhost://inputs/dir/a.txt",
            "{scheme}"
        );
    }
    // GCS and Azure without their settings: an error naming what to set.
    for (input, section) in [
        ("gs://data/x.csv", "`gcs` section"),
        ("gcs://data/x.csv", "`gcs` section"),
        ("az://data/x.csv", "`azure` section"),
        (
            "abfss://data@acct.dfs.core.windows.net/x.csv",
            "`azure` section",
        ),
        ("azure_storage://data/x.csv", "`azure` section"),
        ("minio://data/x.csv", "`minio` section"),
    ] {
        let err = discover(input, &storages).unwrap_err().to_string();
        assert!(
            err.contains("`data`") && err.contains(section) && err.contains("not configured"),
            "{input}: {err}"
        );
    }
    let err = discover("ftp://data/x.csv", &storages)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gs://") && err.contains("az://"), "{err}");
    let err = discover("gs:///x.csv", &storages).unwrap_err().to_string();
    assert!(err.contains("no bucket name"), "{err}");
}
