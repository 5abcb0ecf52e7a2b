//! How the binding frames user messages: one tag byte, then the body. The core carries opaque
//! bytes; the tag tells the receiving side how to decode them, whatever its own setting.

use napi::bindgen_prelude::*;

/// JSON text (the default, like `cluster`).
pub const JSON: u8 = b'J';
/// `v8.serialize` output (`serialization: 'advanced'`).
pub const V8: u8 = b'V';
/// A message of the binding itself (JSON text): init, listening, disconnect bookkeeping.
pub const CONTROL: u8 = b'C';

/// Message bytes with their tag in front, ready for the core.
pub fn encode(tag: u8, data: &Either<String, Buffer>) -> Vec<u8> {
    let body: &[u8] = match data {
        Either::A(s) => s.as_bytes(),
        Either::B(b) => b,
    };
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(tag);
    out.extend_from_slice(body);
    out
}

/// Message bytes with their tag in front, or the error that refuses them: a message of more
/// than `max_message` bytes with its tag. Both sides count the same way, and the error names
/// sizes without the tag byte, which the caller never sees.
pub fn encode_within(
    tag: u8,
    data: &Either<String, Buffer>,
    max_message: usize,
) -> std::result::Result<Vec<u8>, rcluster_core::Error> {
    let bytes = encode(tag, data);
    if bytes.len() > max_message {
        return Err(rcluster_core::Error::MessageTooLarge {
            size: bytes.len() - 1,
            limit: max_message - 1,
        });
    }
    Ok(bytes)
}

/// How many events the watchers hand their callbacks at most (the JS side's `codec.BATCH`).
pub const BATCH: usize = 4096;

/// Appends the text of a JSON-tagged message to `run`, a run of JSON texts joined by
/// newlines (which JSON never contains unescaped), so that JS gets one string for the run.
/// False, and nothing appended, for a message of another encoding.
pub fn push_json(run: &mut String, data: &[u8]) -> bool {
    if data.first() != Some(&JSON) {
        return false;
    }
    if !run.is_empty() {
        run.push('\n');
    }
    run.push_str(&String::from_utf8_lossy(&data[1..]));
    true
}

/// Calls `send` with the JSON texts in `joined` (joined by newlines, which JSON.stringify
/// never writes), each tagged as a message of its own.
pub fn with_json_batch<T>(joined: &str, send: impl FnOnce(&[&[u8]]) -> T) -> T {
    let mut buf = Vec::with_capacity(joined.len() + 64);
    let mut spans = Vec::new();
    for text in joined.split('\n') {
        let start = buf.len();
        buf.push(JSON);
        buf.extend_from_slice(text.as_bytes());
        spans.push(start..buf.len());
    }
    let parts: Vec<&[u8]> = spans.into_iter().map(|r| &buf[r]).collect();
    send(&parts)
}

/// The encoding name and the decoded body of a tagged message.
pub fn decode(data: Vec<u8>) -> (&'static str, Either<String, Buffer>) {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match data.first() {
        Some(&JSON) => ("json", Either::A(text(&data[1..]))),
        Some(&CONTROL) => ("control", Either::A(text(&data[1..]))),
        Some(&V8) => ("v8", Either::B(Buffer::from(data[1..].to_vec()))),
        _ => ("raw", Either::B(Buffer::from(data))),
    }
}
