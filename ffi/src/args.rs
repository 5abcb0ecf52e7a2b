//! Checking what C hands in: NULL pointers, strings, byte buffers, durations, out-parameters.

use std::ffi::{c_char, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::result::{rcluster_result, Fail, Res};

/// Longest duration accepted, in milliseconds: a year, as the core allows.
pub(crate) const MAX_MS: u64 = 365 * 24 * 3600 * 1000;

/// A shared reference to a handle, or a NULL-argument failure naming it.
///
/// SAFETY (callers): `p` is NULL or a pointer this library returned and that was not freed.
pub unsafe fn handle<'a, T>(p: *const T, name: &str) -> Res<&'a T> {
    p.as_ref().ok_or_else(|| Fail::null(name))
}

/// A mutable reference to a handle (for the config builder), or a NULL-argument failure.
///
/// SAFETY (callers): as for [`handle`], and no other thread uses the handle meanwhile.
pub unsafe fn handle_mut<'a, T>(p: *mut T, name: &str) -> Res<&'a mut T> {
    p.as_mut().ok_or_else(|| Fail::null(name))
}

/// A NUL-terminated string as bytes (any bytes but NUL: paths and argv need not be UTF-8).
///
/// SAFETY (callers): `p` is NULL or points to a NUL-terminated string.
pub unsafe fn bytes<'a>(p: *const c_char, name: &str) -> Res<&'a OsStr> {
    if p.is_null() {
        return Err(Fail::null(name));
    }
    Ok(OsStr::from_bytes(CStr::from_ptr(p).to_bytes()))
}

/// A NUL-terminated string that must be UTF-8 (names and addresses).
///
/// SAFETY (callers): as for [`bytes`].
pub unsafe fn utf8<'a>(p: *const c_char, name: &str) -> Res<&'a str> {
    let raw = bytes(p, name)?;
    std::str::from_utf8(raw.as_bytes()).map_err(|e| {
        Fail::new(
            rcluster_result::InvalidUtf8,
            format!(
                "argument `{name}` is not valid UTF-8 ({e}): {:?}",
                String::from_utf8_lossy(raw.as_bytes())
            ),
        )
    })
}

/// `len` bytes at `data`; NULL is allowed only for an empty buffer, as with `write(2)`.
///
/// SAFETY (callers): `data` is NULL or points to `len` readable bytes.
pub unsafe fn buffer<'a>(data: *const u8, len: usize, name: &str) -> Res<&'a [u8]> {
    if data.is_null() {
        return match len {
            0 => Ok(&[]),
            _ => Err(Fail::new(
                rcluster_result::NullArgument,
                format!("argument `{name}` is NULL but its length is {len}"),
            )),
        };
    }
    if len > isize::MAX as usize {
        return Err(Fail::range("len", len, "larger than any buffer can be"));
    }
    Ok(std::slice::from_raw_parts(data, len))
}

/// A duration argument of a call (not an option: the config setters leave theirs to the
/// core's rules), in milliseconds; 0 is refused unless `zero_ok`.
pub fn millis(ms: u64, name: &str, zero_ok: bool) -> Res<Duration> {
    if (ms == 0 && !zero_ok) || ms > MAX_MS {
        let low = if zero_ok { 0 } else { 1 };
        return Err(Fail::range(
            name,
            ms,
            &format!("must be {low}..={MAX_MS} milliseconds (a year)"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// A wait in milliseconds where a negative value means "forever".
pub fn timeout(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// Checks that an out-parameter is not NULL, before any work is done.
pub fn out<T>(p: *mut T, name: &str) -> Res<*mut T> {
    if p.is_null() {
        Err(Fail::null(name))
    } else {
        Ok(p)
    }
}

/// Writes an out-parameter (checked by [`out`]); called only once the call has succeeded.
///
/// SAFETY (callers): `p` came from [`out`] and points to writable memory for a `T`.
pub unsafe fn put<T>(p: *mut T, v: T) {
    p.write(v)
}
