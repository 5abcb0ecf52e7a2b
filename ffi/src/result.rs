//! Result codes, the last error of each thread, and the panic boundary every export goes through.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use rcluster_core::Error;

/// What a call did. Codes are stable: a code keeps its number and meaning forever, and new
/// codes get new numbers. `RCLUSTER_RESULT_OK` is 0, so `if (rc) ...` tests for failure.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rcluster_result {
    /// Success.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL.
    NullArgument = 1,
    /// A string that must be UTF-8 (a listener name or address) was not.
    InvalidUtf8 = 2,
    /// A number or enumeration value was out of range.
    InvalidArgument = 3,
    /// The configuration is invalid; the message names the field and the value.
    Config = 4,
    /// A listening socket could not be bound (address in use, no permission, ...).
    Bind = 5,
    /// The worker program could not be started.
    Spawn = 6,
    /// A message was larger than the configured `max_message`; it was not sent.
    MessageTooLarge = 7,
    /// The worker's outgoing queue is full (it is not reading); try again later.
    QueueFull = 8,
    /// No live worker has this id.
    NoSuchWorker = 9,
    /// The supervisor has stopped; for `next_event`: it stopped and every event was taken.
    Stopped = 10,
    /// The other side broke the IPC protocol.
    Protocol = 11,
    /// This process was not started by an rcluster primary (or its environment is malformed).
    NotAWorker = 12,
    /// A system call failed; the message says which and why.
    Io = 13,
    /// rcluster hit an internal bug (a Rust panic); it was caught and nothing was changed.
    Panic = 14,
    /// No event arrived within the timeout (or none is waiting, for `try_next_event`; no
    /// connection waits, for `rcluster_acceptor_next`).
    /// Not an error: `rcluster_last_error` is not changed.
    Timeout = 15,
    /// The call is not allowed in this state, e.g. `next_event` while a callback takes the
    /// events, or a second callback.
    InvalidState = 16,
    /// `rcluster_acceptor_next`: this worker leaves the next connection to the others; look
    /// again in about a millisecond. Not an error: `rcluster_last_error` is not changed.
    Deferred = 17,
}

const ALL: [rcluster_result; 18] = [
    rcluster_result::Ok,
    rcluster_result::NullArgument,
    rcluster_result::InvalidUtf8,
    rcluster_result::InvalidArgument,
    rcluster_result::Config,
    rcluster_result::Bind,
    rcluster_result::Spawn,
    rcluster_result::MessageTooLarge,
    rcluster_result::QueueFull,
    rcluster_result::NoSuchWorker,
    rcluster_result::Stopped,
    rcluster_result::Protocol,
    rcluster_result::NotAWorker,
    rcluster_result::Io,
    rcluster_result::Panic,
    rcluster_result::Timeout,
    rcluster_result::InvalidState,
    rcluster_result::Deferred,
];

impl rcluster_result {
    /// The fixed text of a code, NUL-terminated so that C can use it as it is.
    fn text(self) -> &'static CStr {
        match self {
            rcluster_result::Ok => c"ok",
            rcluster_result::NullArgument => c"a required pointer argument is NULL",
            rcluster_result::InvalidUtf8 => c"a string argument is not valid UTF-8",
            rcluster_result::InvalidArgument => c"an argument is out of range",
            rcluster_result::Config => c"invalid configuration",
            rcluster_result::Bind => c"cannot listen on an address",
            rcluster_result::Spawn => c"cannot start the worker program",
            rcluster_result::MessageTooLarge => c"message too large",
            rcluster_result::QueueFull => c"the worker's outgoing queue is full",
            rcluster_result::NoSuchWorker => c"no live worker with this id",
            rcluster_result::Stopped => c"the supervisor is stopped",
            rcluster_result::Protocol => c"IPC protocol error",
            rcluster_result::NotAWorker => c"not running as an rcluster worker",
            rcluster_result::Io => c"a system call failed",
            rcluster_result::Panic => c"internal error in rcluster (a bug; please report it)",
            rcluster_result::Timeout => c"no event within the timeout",
            rcluster_result::InvalidState => c"not allowed in the current state",
            rcluster_result::Deferred => c"left to the other workers: look again in a moment",
        }
    }
}

/// Why a call failed: a code and a message for `rcluster_last_error`.
#[derive(Debug)]
pub struct Fail {
    pub code: rcluster_result,
    pub msg: String,
    /// Not a failure: `rcluster_last_error` is left alone.
    quiet: bool,
}

impl Fail {
    pub fn new(code: rcluster_result, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
            quiet: false,
        }
    }

    pub fn null(arg: &str) -> Fail {
        Fail::new(
            rcluster_result::NullArgument,
            format!("argument `{arg}` is NULL"),
        )
    }

    pub fn range(arg: &str, value: impl std::fmt::Display, want: &str) -> Fail {
        Fail::new(
            rcluster_result::InvalidArgument,
            format!("argument `{arg}` = {value}: {want}"),
        )
    }

    /// A result that is not a failure (`Timeout`, `Deferred`): no message is recorded.
    pub fn quiet(code: rcluster_result) -> Fail {
        Fail {
            code,
            msg: String::new(),
            quiet: true,
        }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match &e {
            Error::Config { .. } => rcluster_result::Config,
            Error::Bind { .. } => rcluster_result::Bind,
            Error::Spawn { .. } => rcluster_result::Spawn,
            Error::MessageTooLarge { .. } => rcluster_result::MessageTooLarge,
            Error::QueueFull { .. } => rcluster_result::QueueFull,
            Error::NoSuchWorker(_) => rcluster_result::NoSuchWorker,
            Error::Stopped => rcluster_result::Stopped,
            Error::Protocol(_) => rcluster_result::Protocol,
            Error::NotAWorker(_) => rcluster_result::NotAWorker,
            Error::Io { .. } => rcluster_result::Io,
            Error::TaskQueueFull { .. } => rcluster_result::QueueFull,
            Error::PoolBroken(_) => rcluster_result::Stopped,
        };
        Fail::new(code, e.to_string())
    }
}

pub type Res<T = ()> = Result<T, Fail>;

thread_local! {
    /// The message of the last failed call on this thread. Kept like `errno`: a successful
    /// call leaves it alone, so that the hot paths (`send`) touch no thread-local at all.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn record(func: &str, msg: &str) {
    // Interior NULs (from a path or a peer's text) would cut the message short; show them.
    let text = format!("{func}: {msg}").replace('\0', "\\0");
    let text = CString::new(text).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; the code still says enough.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// The panic boundary: runs `f`, turns its failure into a code plus the thread's last error,
/// and a panic into `RCLUSTER_RESULT_PANIC` instead of unwinding into C (which would abort).
/// `func` names the export in the message.
pub fn guard(func: &str, f: impl FnOnce() -> Res) -> rcluster_result {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => rcluster_result::Ok,
        Ok(Err(fail)) => {
            if !fail.quiet {
                record(func, &fail.msg);
            }
            fail.code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            record(func, &format!("internal error (panic): {what}"));
            rcluster_result::Panic
        }
    }
}

/// For exports that return nothing (`_free`): a panic is caught and dropped.
pub fn guard_void(func: &str, f: impl FnOnce()) {
    let _ = guard(func, || {
        f();
        Ok(())
    });
}

/// The fixed English text of a result code; never NULL, and valid for the life of the program.
/// Unknown codes (from a newer library, or garbage) give "unknown result code".
#[no_mangle]
pub extern "C" fn rcluster_result_text(code: u32) -> *const c_char {
    ALL.iter()
        .find(|r| **r as u32 == code)
        .map_or(c"unknown result code".as_ptr(), |r| r.text().as_ptr())
}

/// The detail of the most recent failed call on the calling thread, e.g.
/// "rcluster_config_add_listener: invalid config: listen = \"nope\": expected HOST:PORT, ...".
/// Never NULL ("" when no call has failed on this thread). Like `errno`, it is not cleared by
/// calls that succeed. The pointer stays valid until the next failing rcluster call on the
/// same thread; copy the text to keep it.
#[no_mangle]
pub extern "C" fn rcluster_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_result_code_with_a_message() {
        let rc = guard("rcluster_test", || panic!("boom"));
        assert_eq!(rc, rcluster_result::Panic);
        // SAFETY: rcluster_last_error returns a NUL-terminated string that lives until this
        // thread's next call.
        let msg = unsafe { CStr::from_ptr(rcluster_last_error()) };
        assert!(msg.to_str().unwrap().contains("boom"), "{msg:?}");
    }

    #[test]
    fn every_code_has_its_own_text_and_unknown_codes_have_one_too() {
        let texts: std::collections::HashSet<_> = ALL.iter().map(|r| r.text()).collect();
        assert_eq!(texts.len(), ALL.len());
        for (i, r) in ALL.iter().enumerate() {
            assert_eq!(
                *r as usize, i,
                "codes are numbered densely and never reused"
            );
        }
        // SAFETY: rcluster_result_text returns a static NUL-terminated string.
        let t = unsafe { CStr::from_ptr(rcluster_result_text(9999)) };
        assert_eq!(t.to_str().unwrap(), "unknown result code");
    }

    #[test]
    fn a_timeout_does_not_overwrite_the_last_error() {
        let _ = guard("first", || Err(Fail::null("x")));
        let _ = guard("second", || Err(Fail::quiet(rcluster_result::Timeout)));
        // SAFETY: rcluster_last_error returns a NUL-terminated string that lives until this
        // thread's next call.
        let msg = unsafe { CStr::from_ptr(rcluster_last_error()) };
        assert!(msg.to_str().unwrap().starts_with("first:"), "{msg:?}");
    }
}
