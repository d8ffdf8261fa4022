//! `quelea._engine.Storage`: one bucket of the configured object store.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{storage_err, to_py_err, value_error};

#[pyclass(module = "quelea._engine", frozen)]
pub struct Storage {
    inner: quelea::storage::Storage,
}

#[pymethods]
impl Storage {
    #[new]
    #[pyo3(signature = (overrides=None, config_file=None, bucket=None))]
    fn new(
        overrides: Option<&str>,
        config_file: Option<PathBuf>,
        bucket: Option<&str>,
    ) -> PyResult<Self> {
        let mut builder = crate::config_builder(overrides, config_file)?;
        if let Some(bucket) = bucket {
            builder = builder.set("bucket", bucket);
        }
        let config = builder
            .build()
            .map_err(|e| to_py_err(quelea::Error::Config(e)))?;
        let inner = quelea::storage::Storage::from_config(&config).map_err(storage_err)?;
        Ok(Storage { inner })
    }

    #[getter]
    fn bucket(&self) -> String {
        self.inner.location().bucket().to_owned()
    }

    /// Lithops' name of the storage (`localhost`, `aws_s3`, `gcp_storage`,
    /// ...): also a scheme its addresses accept.
    #[getter]
    fn backend(&self) -> &'static str {
        quelea::storage::lithops_name(self.inner.location().kind())
    }

    /// quelea's name of the storage kind (`localdisk`, `s3`, `gcs`, ...).
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.location().kind().name()
    }

    fn describe(&self) -> String {
        self.inner.location().describe()
    }

    fn put(&self, py: Python<'_>, key: &str, data: &[u8]) -> PyResult<()> {
        let data = data.to_vec();
        py.detach(|| self.inner.put_blocking(key, data))
            .map_err(storage_err)
    }

    /// The object's bytes, or `[start, end)` of them.
    #[pyo3(signature = (key, start=None, end=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        start: Option<u64>,
        end: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = match (start, end) {
            (None, None) => py.detach(|| self.inner.get_blocking(key)),
            (start, end) => {
                let start = start.unwrap_or(0);
                let end = match end {
                    Some(end) => end,
                    None => {
                        py.detach(|| self.inner.head_blocking(key))
                            .map_err(storage_err)?
                            .size
                    }
                };
                if end < start {
                    return Err(value_error(format!(
                        "byte range {start}..{end} is backwards"
                    )));
                }
                py.detach(|| self.inner.get_range_blocking(key, start..end))
            }
        }
        .map_err(storage_err)?;
        Ok(PyBytes::new(py, &bytes))
    }

    fn head(&self, py: Python<'_>, key: &str) -> PyResult<u64> {
        py.detach(|| self.inner.head_blocking(key))
            .map(|o| o.size)
            .map_err(storage_err)
    }

    /// `[(key, size), ...]` under `prefix`, sorted by key.
    #[pyo3(signature = (prefix=""))]
    fn list(&self, py: Python<'_>, prefix: &str) -> PyResult<Vec<(String, u64)>> {
        py.detach(|| self.inner.list_blocking(prefix))
            .map(|objects| objects.into_iter().map(|o| (o.key, o.size)).collect())
            .map_err(storage_err)
    }

    fn delete(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        py.detach(|| self.inner.delete_blocking(key))
            .map_err(storage_err)
    }
}

/// What each storage kind is, from the storage crate (the one place that
/// knows): `[{kind, lithops_name, schemes, section, settings: [{key, secret,
/// flag, help}], connection: {host, login, password}}]`, for the Python package's config translation and the
/// Airflow connection form.
#[pyfunction]
pub fn storage_kinds(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyList>> {
    use pyo3::types::{PyDict, PyList};
    use quelea::storage::{address, settings, StorageKind};
    let out = PyList::empty(py);
    for kind in StorageKind::ALL {
        let entry = PyDict::new(py);
        entry.set_item("kind", kind.name())?;
        entry.set_item("lithops_name", address::lithops_name(kind))?;
        entry.set_item("schemes", address::schemes(kind).to_vec())?;
        entry.set_item("section", settings::section(kind))?;
        let list = PyList::empty(py);
        for setting in settings::settings(kind) {
            let s = PyDict::new(py);
            s.set_item("key", setting.key)?;
            s.set_item("secret", setting.secret)?;
            s.set_item("flag", setting.flag)?;
            s.set_item("help", setting.help)?;
            list.append(s)?;
        }
        entry.set_item("settings", list)?;
        let (host, login, password) = settings::connection_fields(kind);
        let fields = PyDict::new(py);
        fields.set_item("host", host)?;
        fields.set_item("login", login)?;
        fields.set_item("password", password)?;
        entry.set_item("connection", fields)?;
        out.append(entry)?;
    }
    Ok(out)
}

/// Lithops' storage settings and their quelea paths: `(keys, ignored)`, with
/// keys `[(section, key, path)]` and ignored `[(section, key)]`.
type LithopsKeys = (
    Vec<(&'static str, &'static str, &'static str)>,
    Vec<(&'static str, &'static str)>,
);

#[pyfunction]
pub fn lithops_storage_keys() -> LithopsKeys {
    use quelea::storage::settings;
    (
        settings::LITHOPS_KEYS.to_vec(),
        settings::LITHOPS_IGNORED.to_vec(),
    )
}
