//! Discovery: which objects an input string names, and their sizes.

use std::fmt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use quelea_core::config::Config;
use quelea_storage::{address, ObjectInfo, Storage, StorageKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::{plan_chunks, ChunkPlan, ChunkSpec};
use crate::source::{FileSource, HttpSource, RangeSource, StorageSource};

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ObjectKind {
    /// An object in a storage: the configured one or, by its address's
    /// scheme (`gs://`, `az://`, ...), another with settings in the config.
    Storage {
        #[serde(default)]
        storage: StorageKind,
        bucket: String,
        key: String,
    },
    Local {
        path: PathBuf,
    },
    Http {
        url: String,
    },
}

/// One object found by [`discover`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub size: u64,
    /// Whether it can be read by byte range, and so cut into chunks. Only
    /// HTTP servers without `Accept-Ranges: bytes` cannot.
    pub splittable: bool,
}

impl ObjectRef {
    /// The object's chunks; a whole-object chunk when it is not splittable.
    pub fn plan(&self, spec: ChunkSpec) -> Result<Vec<ChunkPlan>> {
        // Still validate the spec, so a bad argument fails the same way for
        // every kind of object.
        let plan = plan_chunks(self.size, spec)?;
        if self.splittable {
            Ok(plan)
        } else {
            plan_chunks(self.size, ChunkSpec::Whole)
        }
    }

    /// A ranged reader of the object.
    pub fn open(&self, storages: &StorageResolver) -> Result<Box<dyn RangeSource>> {
        Ok(match &self.kind {
            ObjectKind::Storage {
                storage,
                bucket,
                key,
            } => Box::new(StorageSource::with_size(
                storages.storage_of(*storage, bucket)?,
                key.clone(),
                self.size,
            )),
            ObjectKind::Local { path } => Box::new(FileSource::open(path)?),
            ObjectKind::Http { url } => Box::new(HttpSource::with_size(
                url.clone(),
                self.size,
                self.splittable,
            )),
        })
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKind::Storage {
                storage,
                bucket,
                key,
            } => write!(f, "{}://{bucket}/{key}", address::schemes(*storage)[0]),
            ObjectKind::Local { path } => write!(f, "{}", path.display()),
            ObjectKind::Http { url } => f.write_str(url),
        }
    }
}

type BucketFactory = Box<dyn Fn(&str) -> quelea_storage::Result<Storage> + Send + Sync>;

/// The storage to use for each bucket an input names: the configured one for
/// its own bucket, and a factory (if any) for the others.
pub struct StorageResolver {
    default: Storage,
    for_bucket: Option<BucketFactory>,
    /// Settings for the other storage kinds an address may name.
    config: Option<Config>,
}

impl StorageResolver {
    /// Only the storage's own bucket can be read.
    pub fn new(default: Storage) -> Self {
        StorageResolver {
            default,
            for_bucket: None,
            config: None,
        }
    }

    /// Other buckets are reached through `factory`.
    pub fn with_factory(
        mut self,
        factory: impl Fn(&str) -> quelea_storage::Result<Storage> + Send + Sync + 'static,
    ) -> Self {
        self.for_bucket = Some(Box::new(factory));
        self
    }

    /// The config's storage, and the same store (endpoint, credentials,
    /// local root) for other buckets.
    pub fn from_config(config: &Config) -> Result<Self> {
        let default = Storage::from_config(config)?;
        let base = config.clone();
        let mut resolver = Self::new(default).with_factory(move |bucket| {
            let mut config = base.clone();
            config.bucket = bucket.to_owned();
            Storage::from_config(&config)
        });
        resolver.config = Some(config.clone());
        Ok(resolver)
    }

    pub fn default_storage(&self) -> &Storage {
        &self.default
    }

    /// The storage holding `bucket` of storage `kind`: the configured
    /// storage's kind goes through [`StorageResolver::storage`]; another kind
    /// needs its settings in the config.
    pub fn storage_of(&self, kind: StorageKind, bucket: &str) -> Result<Storage> {
        let configured = self.default.location().kind();
        if kind == configured {
            return self.storage(bucket);
        }
        match &self.config {
            Some(config) => Ok(Storage::for_bucket(config, kind, bucket)?),
            None => Err(Error::OtherStorage {
                kind,
                bucket: bucket.to_owned(),
                configured,
            }),
        }
    }

    /// The storage holding `bucket` in the configured storage.
    pub fn storage(&self, bucket: &str) -> Result<Storage> {
        let configured = self.default.location().bucket();
        if bucket == configured {
            return Ok(self.default.clone());
        }
        match &self.for_bucket {
            Some(factory) => Ok(factory(bucket)?),
            None => Err(Error::UnknownBucket {
                bucket: bucket.to_owned(),
                configured: configured.to_owned(),
            }),
        }
    }
}

/// The objects an input names, sorted by key or path.
///
/// - `s3://bucket/key`, `bucket/key`: one object. If no such key exists, the
///   key is tried as a prefix (`key/`).
/// - `s3://bucket/prefix/`, `bucket/prefix/`: every object under the prefix.
/// - `s3://bucket`: every object in the bucket.
/// - The same with every storage's schemes ([`address::schemes`]):
///   `gs://`/`gcs://`, `az://`/`abfs(s)://container@account.../`/
///   `azure_storage://`, `localhost://`, `cos://`, `minio://`, ... A bare
///   `bucket/key` is in the configured storage, and so is `s3://` when the
///   configured storage is an S3 flavour or no S3 settings are configured; another storage is read with its settings from the
///   config, and refused with an error naming what to set when it has none.
/// - A glob (`*`, `?`, `[..]`, `{a,b}`) in the key or path: the objects
///   under the directory before the first wildcard that match it; `*` stays
///   within one `/` segment, `**` crosses segments.
/// - `/abs/path`, `./rel`, `../rel`, `file://path`: a local file, or every
///   file under a local directory, recursively. A bare relative path such as
///   `data/x.csv` means bucket `data`, key `x.csv`: use `./data/x.csv` for
///   the local file.
/// - `http://...`, `https://...`: one object, split only if the server
///   accepts byte ranges.
///
/// Keys ending in `/` (folder markers) are skipped. Matching nothing is an
/// error that says what was searched.
pub fn discover(input: &str, storages: &StorageResolver) -> Result<Vec<ObjectRef>> {
    let configured = storages.default.location().kind();
    let parsed = address::parse_address(input, configured).map_err(|e| match e {
        quelea_storage::Error::InvalidAddress { reason, .. } => Error::InvalidInput {
            input: input.to_owned(),
            reason,
        },
        other => Error::Storage(other),
    })?;
    if let Some(addr) = parsed {
        if let Some(account) = &addr.account {
            storages.check_azure_account(input, account)?;
        }
        let rest = input.split_once("://").map_or("", |(_, rest)| rest);
        // `container@account.host/path`: the path after the authority.
        let rest = match &addr.account {
            Some(_) => format!("{}/{}", addr.bucket, addr.key),
            None => rest.to_owned(),
        };
        // quelea has always read `s3://bucket/key` from the configured
        // storage, whatever its kind: it still does when no S3 settings are
        // configured next to it.
        let s3_elsewhere = storages
            .config
            .as_ref()
            .is_some_and(|c| address::is_configured(c, StorageKind::S3));
        let kind = if addr.kind == StorageKind::S3 && !s3_elsewhere {
            configured
        } else {
            addr.kind
        };
        discover_storage(input, kind, &rest, storages)
    } else if input.starts_with("http://") || input.starts_with("https://") {
        discover_http(input)
    } else if let Some(path) = input.strip_prefix("file://") {
        discover_local(input, path)
    } else if let Some((scheme, _)) = input.split_once("://") {
        Err(Error::InvalidInput {
            input: input.to_owned(),
            reason: format!(
                "unsupported scheme `{scheme}://` (supported: {}, file://, http://, https://)",
                address::all_schemes().join(", ")
            ),
        })
    } else if is_explicit_local_path(input) {
        discover_local(input, input)
    } else {
        discover_storage(input, configured, input, storages)
    }
}

impl StorageResolver {
    /// An `abfs://container@account...` address must name the account the
    /// config has settings (credentials) for.
    fn check_azure_account(&self, input: &str, account: &str) -> Result<()> {
        let configured = self
            .config
            .as_ref()
            .and_then(|c| c.azure.account.clone())
            .or_else(|| match self.default.location() {
                quelea_storage::Location::Azure { account, .. } => account.clone(),
                _ => None,
            });
        match configured {
            Some(configured) if configured != account => Err(Error::InvalidInput {
                input: input.to_owned(),
                reason: format!(
                    "storage account `{account}` is not the configured azure account \
                     `{configured}`, and quelea holds credentials for that one only"
                ),
            }),
            _ => Ok(()),
        }
    }
}

fn is_explicit_local_path(input: &str) -> bool {
    input.starts_with('/')
        || input.starts_with("./")
        || input.starts_with("../")
        || input == "."
        || input == ".."
}

const GLOB_CHARS: &[char] = &['*', '?', '[', '{'];

fn compile_glob(input: &str, pattern: &str) -> Result<GlobMatcher> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|e| Error::InvalidInput {
            input: input.to_owned(),
            reason: format!("bad glob pattern: {e}"),
        })
}

fn discover_storage(
    input: &str,
    kind: StorageKind,
    rest: &str,
    storages: &StorageResolver,
) -> Result<Vec<ObjectRef>> {
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::InvalidInput {
            input: input.to_owned(),
            reason: "no bucket name".into(),
        });
    }
    if bucket.contains(GLOB_CHARS) {
        return Err(Error::InvalidInput {
            input: input.to_owned(),
            reason: format!("wildcards in bucket names are not supported (bucket `{bucket}`)"),
        });
    }
    let storage = storages.storage_of(kind, bucket)?;
    let store = storage.location().describe();
    let to_refs = |objects: Vec<ObjectInfo>| -> Vec<ObjectRef> {
        objects
            .into_iter()
            .filter(|o| !o.key.ends_with('/'))
            .map(|o| ObjectRef {
                kind: ObjectKind::Storage {
                    storage: kind,
                    bucket: bucket.to_owned(),
                    key: o.key,
                },
                size: o.size,
                splittable: true,
            })
            .collect()
    };
    let nothing = |searched: String| Error::NothingFound {
        input: input.to_owned(),
        searched,
    };

    let found = if let Some(wildcard) = key.find(GLOB_CHARS) {
        let matcher = compile_glob(input, key)?;
        // List the directory before the first wildcard, then filter.
        let dir = key[..wildcard].rfind('/').map_or("", |i| &key[..=i]);
        let listed = storage.list_blocking(dir)?;
        let found = to_refs(
            listed
                .into_iter()
                .filter(|o| matcher.is_match(&o.key))
                .collect(),
        );
        if found.is_empty() {
            return Err(nothing(format!(
                "keys matching `{key}` under prefix `{dir}` in {store}"
            )));
        }
        found
    } else if key.is_empty() || key.ends_with('/') {
        let found = to_refs(storage.list_blocking(key)?);
        if found.is_empty() {
            return Err(nothing(if key.is_empty() {
                format!("every key in {store}")
            } else {
                format!("keys under prefix `{key}` in {store}")
            }));
        }
        found
    } else {
        match storage.head_blocking(key) {
            Ok(info) => to_refs(vec![ObjectInfo {
                key: key.to_owned(),
                size: info.size,
            }]),
            Err(quelea_storage::Error::NotFound { .. }) => {
                let prefix = format!("{key}/");
                let found = to_refs(storage.list_blocking(&prefix)?);
                if found.is_empty() {
                    return Err(nothing(format!(
                        "object `{key}` and keys under prefix `{prefix}` in {store}"
                    )));
                }
                found
            }
            Err(other) => return Err(other.into()),
        }
    };
    Ok(found)
}

fn discover_local(input: &str, path: &str) -> Result<Vec<ObjectRef>> {
    let local_ref = |path: PathBuf, size: u64| ObjectRef {
        kind: ObjectKind::Local { path },
        size,
        splittable: true,
    };
    let nothing = |searched: String| Error::NothingFound {
        input: input.to_owned(),
        searched,
    };
    if path.contains(GLOB_CHARS) {
        let matcher = compile_glob(input, path)?;
        // Walk from the deepest directory before the first wildcard.
        let wildcard = path.find(GLOB_CHARS).expect("contains a wildcard");
        let base = path[..wildcard].rfind('/').map_or(".", |i| &path[..=i]);
        let mut files = Vec::new();
        if Path::new(base).is_dir() {
            walk(Path::new(base), &mut files)?;
        }
        // Compare in the pattern's own spelling: `walk` from `./` yields
        // `./x`, which a pattern `x*` would not match.
        let found: Vec<ObjectRef> = files
            .into_iter()
            .filter(|(file, _)| {
                matcher.is_match(file)
                    || (base == "." && file.strip_prefix("./").is_ok_and(|f| matcher.is_match(f)))
            })
            .map(|(file, size)| local_ref(file, size))
            .collect();
        if found.is_empty() {
            return Err(nothing(format!(
                "local files matching `{path}` under `{base}`"
            )));
        }
        return Ok(found);
    }
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(nothing(format!(
                "local path `{path}`, which does not exist"
            )))
        }
        Err(source) => {
            return Err(Error::Io {
                path: path.into(),
                source,
            })
        }
    };
    if !metadata.is_dir() {
        return Ok(vec![local_ref(path.into(), metadata.len())]);
    }
    let mut files = Vec::new();
    walk(Path::new(path), &mut files)?;
    if files.is_empty() {
        return Err(nothing(format!(
            "files under local directory `{path}`, recursively"
        )));
    }
    Ok(files
        .into_iter()
        .map(|(file, size)| local_ref(file, size))
        .collect())
}

/// Every file under `dir`, recursively, sorted by path. Symbolic links to
/// files count; links to directories are not followed, so a link cycle cannot
/// loop.
fn walk(dir: &Path, files: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .collect::<std::io::Result<_>>()
        .map_err(io_error(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_error(&path))?;
        if file_type.is_dir() {
            walk(&path, files)?;
            continue;
        }
        let metadata = std::fs::metadata(&path).map_err(io_error(&path))?;
        if metadata.is_file() {
            files.push((path, metadata.len()));
        }
    }
    Ok(())
}

fn discover_http(url: &str) -> Result<Vec<ObjectRef>> {
    let source = HttpSource::probe(url)?;
    Ok(vec![ObjectRef {
        kind: ObjectKind::Http {
            url: url.to_owned(),
        },
        size: source.size()?,
        splittable: source.accepts_ranges(),
    }])
}
