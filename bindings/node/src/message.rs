//! User messages between the binding and the core: the content type travels in the frame
//! header (`rcluster_core::ContentType`), the body is the message alone. JS names the type
//! with its number (`lib/codec.js`), which costs no string per message.

use napi::bindgen_prelude::*;
use rcluster_core::ContentType;

use crate::error::invalid;

/// The type numbered `n` (a `codec.CONTENT` value), or the error that names it.
pub fn content(n: u32) -> napi::Result<ContentType, &'static str> {
    u8::try_from(n)
        .ok()
        .and_then(|n| ContentType::from_u8(n).ok())
        .ok_or_else(|| invalid(format!("content type {n} is not one of 0..=4")))
}

/// The body of a message as JS gave it.
pub fn bytes(data: &Either<String, Buffer>) -> &[u8] {
    match data {
        Either::A(s) => s.as_bytes(),
        Either::B(b) => b,
    }
}

/// How many events the watchers hand their callbacks at most (the JS side's `codec.BATCH`).
pub const BATCH: usize = 4096;

/// Appends the text of a JSON message to `run`, a run of JSON texts joined by newlines (which
/// JSON never contains unescaped), so that JS gets one string for the run. False, and nothing
/// appended, for a message of another type.
pub fn push_json(run: &mut String, content: ContentType, data: &[u8]) -> bool {
    if content != ContentType::Json {
        return false;
    }
    if !run.is_empty() {
        run.push('\n');
    }
    run.push_str(&String::from_utf8_lossy(data));
    true
}

/// The JSON texts in `joined` (joined by newlines, which JSON.stringify never writes), each a
/// message of its own.
pub fn json_batch(joined: &str) -> Vec<&[u8]> {
    joined.split('\n').map(str::as_bytes).collect()
}

/// The type's name and the body as JS takes it: a string for the types that are text
/// (`text`, `json`, `binding`; invalid UTF-8 replaced), a Buffer for `raw`, `v8` and `pickle`.
pub fn decode(content: ContentType, data: Vec<u8>) -> (&'static str, Either<String, Buffer>) {
    let body = match content {
        ContentType::Raw | ContentType::V8 | ContentType::Pickle => Either::B(Buffer::from(data)),
        ContentType::Text | ContentType::Json | ContentType::Binding => {
            Either::A(match String::from_utf8(data) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            })
        }
    };
    (content.as_str(), body)
}
