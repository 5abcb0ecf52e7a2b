//! The bodies of the pool's frames: `Task` (primary to worker) and `TaskDone` (worker to
//! primary). See "Tasks" in `docs/protocol.md`.
//!
//! Task:     u64 task id, u8 content type, u8 name length, name (UTF-8), payload (the rest).
//! TaskDone: u64 task id, u8 status (0 value, 1 error), u8 content type, payload (the rest).
//! TaskCancel: u64 task id (a task sent ahead that the worker must drop if it has not started).
//!
//! The content type says how the payload is encoded, so that a worker of another language can
//! tell it can read it; the core never looks inside. Task id 0 is never a task: a worker that
//! cannot start (its task file fails to load) may send a `TaskDone` with id 0 and status 1,
//! whose payload says why, before it exits.

use crate::wire::content::ContentType;

/// Bytes a task frame adds to its payload at most: id, content type, name length, name.
pub const OVERHEAD: usize = 8 + 1 + 1 + MAX_NAME;
/// The longest task name in bytes.
pub const MAX_NAME: usize = 255;

/// Payload content types: the numbers of the messages' content types (`ContentType`), one
/// list for every payload of the protocol.
pub const CONTENT_RAW: u8 = ContentType::Raw as u8;
/// UTF-8 JSON text.
pub const CONTENT_JSON: u8 = ContentType::Json as u8;
/// Node's `v8.serialize` (the structured-clone format).
pub const CONTENT_V8: u8 = ContentType::V8 as u8;
/// Python's pickle.
pub const CONTENT_PICKLE: u8 = ContentType::Pickle as u8;

/// `TaskDone` status: the payload is the task's value.
pub const STATUS_OK: u8 = 0;
/// `TaskDone` status: the payload is the error the task raised (or why the worker cannot run
/// tasks, for id 0).
pub const STATUS_ERROR: u8 = 1;

/// The task id a worker that cannot start answers with.
pub const BOOT_FAILURE: u64 = 0;

/// A task as a worker reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRef<'a> {
    pub id: u64,
    pub content: u8,
    pub name: &'a str,
    pub payload: &'a [u8],
}

/// An answer as the primary reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoneRef<'a> {
    pub id: u64,
    pub ok: bool,
    pub content: u8,
    pub payload: &'a [u8],
}

/// Appends a Task body to `out`. The name is cut to `MAX_NAME` bytes (at a char boundary).
pub fn task(out: &mut Vec<u8>, id: u64, content: u8, name: &str, payload: &[u8]) {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    out.reserve(10 + end + payload.len());
    out.extend_from_slice(&id.to_le_bytes());
    out.push(content);
    out.push(end as u8);
    out.extend_from_slice(&name.as_bytes()[..end]);
    out.extend_from_slice(payload);
}

/// Reads a Task body.
pub fn parse_task(body: &[u8]) -> Option<TaskRef<'_>> {
    let id = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let content = *body.get(8)?;
    let len = *body.get(9)? as usize;
    let name = std::str::from_utf8(body.get(10..10 + len)?).ok()?;
    Some(TaskRef {
        id,
        content,
        name,
        payload: &body[10 + len..],
    })
}

/// Appends a TaskDone body to `out`.
pub fn task_done(out: &mut Vec<u8>, id: u64, ok: bool, content: u8, payload: &[u8]) {
    out.reserve(10 + payload.len());
    out.extend_from_slice(&id.to_le_bytes());
    out.push(if ok { STATUS_OK } else { STATUS_ERROR });
    out.push(content);
    out.extend_from_slice(payload);
}

/// A TaskCancel body.
pub fn task_cancel(id: u64) -> [u8; 8] {
    id.to_le_bytes()
}

/// Reads a TaskCancel body: exactly a task id.
pub fn parse_task_cancel(body: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(body.try_into().ok()?))
}

/// Reads a TaskDone body; a status other than 0 and 1 does not parse.
pub fn parse_task_done(body: &[u8]) -> Option<DoneRef<'_>> {
    let id = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let ok = match *body.get(8)? {
        STATUS_OK => true,
        STATUS_ERROR => false,
        _ => return None,
    };
    Some(DoneRef {
        id,
        ok,
        content: *body.get(9)?,
        payload: &body[10..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_bodies_decode_to_what_was_encoded() {
        let mut b = Vec::new();
        task(&mut b, 7, CONTENT_V8, "sort", b"\x01\x02");
        let t = parse_task(&b).unwrap();
        assert_eq!(
            (t.id, t.content, t.name, t.payload),
            (7, CONTENT_V8, "sort", &b"\x01\x02"[..])
        );
        let mut d = Vec::new();
        task_done(&mut d, 9, false, CONTENT_JSON, b"{}");
        let r = parse_task_done(&d).unwrap();
        assert_eq!(
            (r.id, r.ok, r.content, r.payload),
            (9, false, CONTENT_JSON, &b"{}"[..])
        );
    }

    #[test]
    fn malformed_task_bodies_do_not_parse_and_long_names_are_cut_at_a_char_boundary() {
        assert_eq!(parse_task(&[0; 9]), None);
        assert_eq!(parse_task(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 5, b'a']), None);
        let mut d = Vec::new();
        task_done(&mut d, 1, true, 0, b"");
        d[8] = 2;
        assert_eq!(parse_task_done(&d), None);
        let mut b = Vec::new();
        task(&mut b, 1, 0, &"é".repeat(200), b"");
        assert_eq!(parse_task(&b).unwrap().name.len(), 254);
        assert_eq!(parse_task_cancel(&task_cancel(42)), Some(42));
        assert_eq!(parse_task_cancel(&[0; 9]), None);
        assert_eq!(parse_task_cancel(&[0; 7]), None);
    }
}
