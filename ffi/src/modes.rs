//! The enumerated settings C passes in: plain `uint32_t` typedefs with named values rather than
//! Rust enums, because a C caller can pass any number, and an out-of-range value in a Rust
//! enum would be undefined behaviour; here it is a checked `RCLUSTER_RESULT_INVALID_ARGUMENT`.

use rcluster_core::{ContentType, Dispatch};

use crate::result::Fail;

/// When a worker counts as ready (one of the `RCLUSTER_READY_ON_*` values).
#[allow(non_camel_case_types)]
pub type rcluster_ready_on = u32;
/// As soon as the program has been exec'd: for programs that know nothing of rcluster.
pub const RCLUSTER_READY_ON_SPAWN: rcluster_ready_on = 0;
/// When the worker library connects (`rcluster_worker_from_env`). The default.
pub const RCLUSTER_READY_ON_HELLO: rcluster_ready_on = 1;
/// When the worker calls `rcluster_worker_ready`.
pub const RCLUSTER_READY_ON_EXPLICIT: rcluster_ready_on = 2;

/// Which exits restart a worker (one of the `RCLUSTER_RESTART_*` values).
#[allow(non_camel_case_types)]
pub type rcluster_restart_mode = u32;
/// Restart after any exit the supervisor did not ask for. The default.
pub const RCLUSTER_RESTART_ALWAYS: rcluster_restart_mode = 0;
/// Restart only after a failure: non-zero exit, a signal, a timeout or a protocol error.
pub const RCLUSTER_RESTART_ON_FAILURE: rcluster_restart_mode = 1;
/// Never restart on its own (`rcluster_supervisor_restart_worker` still does).
pub const RCLUSTER_RESTART_NEVER: rcluster_restart_mode = 2;

/// How a listener's connections reach workers (one of the `RCLUSTER_DISPATCH_*` values).
#[allow(non_camel_case_types)]
pub type rcluster_dispatch = u32;
/// The primary accepts and hands connections to ready workers in turn.
pub const RCLUSTER_DISPATCH_ROUND_ROBIN: rcluster_dispatch = 0;
/// The primary accepts and hands each connection to the worker with the fewest open ones.
pub const RCLUSTER_DISPATCH_LEAST_CONNECTIONS: rcluster_dispatch = 1;
/// The same client address always reaches the same worker slot.
pub const RCLUSTER_DISPATCH_STICKY: rcluster_dispatch = 2;
/// Workers inherit the socket (fd 3.., `LISTEN_FDS`) and accept themselves.
pub const RCLUSTER_DISPATCH_SHARED: rcluster_dispatch = 3;

/// Where worker stdout/stderr go (one of the `RCLUSTER_OUTPUT_*` values).
#[allow(non_camel_case_types)]
pub type rcluster_output = u32;
/// Workers write straight to the primary's stdout/stderr. The default.
pub const RCLUSTER_OUTPUT_INHERIT: rcluster_output = 0;
/// Every line a worker writes is prefixed with `[id] ` by the primary.
pub const RCLUSTER_OUTPUT_PREFIX: rcluster_output = 1;

/// What a user message's bytes are (one of the `RCLUSTER_CONTENT_*` values), as the frame
/// header carries it, so that a primary or worker of another language decodes it as meant
/// (docs/protocol.md, "Content types"). The library never looks at the bytes.
#[allow(non_camel_case_types)]
pub type rcluster_content_type = u32;
/// Opaque bytes: what `rcluster_*_send` sends, and what a peer that sets no type sends.
pub const RCLUSTER_CONTENT_RAW: rcluster_content_type = 0;
/// UTF-8 text (a Python `str`, a Node string).
pub const RCLUSTER_CONTENT_TEXT: rcluster_content_type = 1;
/// UTF-8 JSON text, one value (Node's default serialization, Python's `send_json`).
pub const RCLUSTER_CONTENT_JSON: rcluster_content_type = 2;
/// Node's `v8.serialize` format (Node's `serialization: 'advanced'`).
pub const RCLUSTER_CONTENT_V8: rcluster_content_type = 3;
/// A binding's own bookkeeping (Node's cluster control messages): a C program passes these on
/// untouched or ignores them.
pub const RCLUSTER_CONTENT_BINDING: rcluster_content_type = 4;
/// Python's pickle (a Python pool's tasks and results).
pub const RCLUSTER_CONTENT_PICKLE: rcluster_content_type = 5;

pub(crate) fn content_from(t: rcluster_content_type) -> Result<ContentType, Fail> {
    u8::try_from(t)
        .ok()
        .and_then(|n| ContentType::from_u8(n).ok())
        .ok_or_else(|| Fail::range("content_type", t, "must be one of RCLUSTER_CONTENT_*"))
}

pub(crate) fn dispatch_from(d: rcluster_dispatch) -> Result<Dispatch, Fail> {
    u8::try_from(d)
        .ok()
        .and_then(Dispatch::from_u8)
        .ok_or_else(|| Fail::range("dispatch", d, "must be one of RCLUSTER_DISPATCH_*"))
}
