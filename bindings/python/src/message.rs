//! A message Python sends: its body and its content type (docs/protocol.md, "Content types").
//! `bytes` are `raw` and a `str` is `text` (its UTF-8) unless the caller names the type.

use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::PyString;
use rcluster_core::ContentType;

use crate::errors::IntoPyResult;

/// The body of a message, borrowed from the Python object (no copy).
pub enum Body {
    Bytes(PyBackedBytes),
    Text(PyBackedStr),
}

impl Body {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Bytes(b) => b,
            Body::Text(s) => s.as_bytes(),
        }
    }
}

/// The body of `data` (bytes, bytearray or str) and its content type: `content_type` when
/// given (`raw`, `text`, `json`, `v8`, `binding`; the core's `ConfigError` names any other),
/// else `text` for a str and `raw` for bytes.
pub fn typed(data: &Bound<'_, PyAny>, content_type: Option<&str>) -> PyResult<(Body, ContentType)> {
    // A type check first: a failed `extract` would build an error for every bytes message.
    let (body, default) = if data.is_instance_of::<PyString>() {
        (Body::Text(data.extract()?), ContentType::Text)
    } else {
        (Body::Bytes(data.extract()?), ContentType::Raw)
    };
    let content = match content_type {
        Some(name) => name.parse().py()?,
        None => default,
    };
    Ok((body, content))
}
