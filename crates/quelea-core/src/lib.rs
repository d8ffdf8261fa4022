//! quelea's core model, shared by every other crate: ids, job and call specs,
//! call states and stats, the storage key layout, the versioned wire protocol
//! and the layered configuration.

pub mod auth;
pub mod config;
pub mod error;
pub mod ids;
pub mod keys;
pub mod model;
pub mod protocol;
pub mod retry;
pub mod sigv4;

pub use error::{Error, Result};
