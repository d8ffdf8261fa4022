//! The one place engine errors become Python exceptions. The classes live in
//! `quelea.exceptions` (pure Python), so users can import and subclass them.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

fn raise(class: &str, message: String) -> PyErr {
    Python::attach(|py| {
        let made = py
            .import("quelea.exceptions")
            .and_then(|m| m.getattr(class))
            .and_then(|cls| cls.call1((message.clone(),)));
        match made {
            Ok(instance) => PyErr::from_value(instance),
            Err(import_error) => import_error,
        }
    })
}

pub fn to_py_err(error: quelea::Error) -> PyErr {
    let message = error.to_string();
    match error {
        quelea::Error::Config(_) => raise("ConfigError", message),
        quelea::Error::Storage(quelea::storage::Error::NotFound { .. }) => {
            raise("StorageNoSuchKeyError", message)
        }
        quelea::Error::Storage(_) => raise("StorageError", message),
        quelea::Error::Timeout { .. } => raise("WaitTimeoutError", message),
        quelea::Error::Interrupted => raise("CancelledError", message),
        quelea::Error::Handle(_) => raise("JobHandleError", message),
        quelea::Error::InvalidArgument { .. } => PyValueError::new_err(message),
        _ => raise("QueleaError", message),
    }
}

pub fn storage_err(error: quelea::storage::Error) -> PyErr {
    to_py_err(quelea::Error::Storage(error))
}

pub fn value_error(message: String) -> PyErr {
    PyValueError::new_err(message)
}

pub fn type_error(message: String) -> PyErr {
    PyTypeError::new_err(message)
}
