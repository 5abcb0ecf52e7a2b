//! The control socket of a supervisor (`docs/control.md`) and its status object, from C.

use std::ffi::{c_char, CString};

use rcluster_core::ControlMode;

use crate::args;
use crate::config::rcluster_config;
use crate::result::{guard, guard_void, rcluster_result, Fail};
use crate::supervisor::rcluster_supervisor;

/// Whether a supervisor listens on a control socket (one of the `RCLUSTER_CONTROL_*` values).
#[allow(non_camel_case_types)]
pub type rcluster_control = u32;
/// No control socket. The default.
pub const RCLUSTER_CONTROL_OFF: rcluster_control = 0;
/// A control socket if it can be made; otherwise the cluster runs without one and says so in
/// a WARNING event.
pub const RCLUSTER_CONTROL_ON: rcluster_control = 1;
/// A control socket, or `rcluster_supervisor_start` fails.
pub const RCLUSTER_CONTROL_REQUIRED: rcluster_control = 2;

/// Sets the cluster's name: `rcluster status NAME` and the other verbs find it by it (1 to 64
/// characters of A-Z a-z 0-9 . _ -, not starting with '.'). Default: the program's base name.
/// A live cluster of the same name makes `rcluster_supervisor_start` fail.
///
/// # Safety
/// `cfg` is NULL or a live config; `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_name(
    cfg: *mut rcluster_config,
    name: *const c_char,
) -> rcluster_result {
    guard("rcluster_config_set_name", || {
        // SAFETY: the caller passes NULL or a live config that no other thread uses.
        let cfg = unsafe { args::handle_mut(cfg, "cfg") }?;
        // SAFETY: the caller promises a NUL-terminated string (NULL is refused) that lives
        // through the call.
        let name = unsafe { args::bytes(name, "name") }?;
        let name = name
            .to_str()
            .ok_or_else(|| Fail::range("name", name.to_string_lossy(), "must be UTF-8"))?;
        cfg.inner.name = Some(name.to_string());
        Ok(())
    })
}

/// Sets whether the supervisor listens on its control socket: `RCLUSTER_CONTROL_OFF`
/// (default), `_ON` or `_REQUIRED`.
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_control(
    cfg: *mut rcluster_config,
    control: rcluster_control,
) -> rcluster_result {
    guard("rcluster_config_set_control", || {
        // SAFETY: the caller passes NULL or a live config that no other thread uses.
        let cfg = unsafe { args::handle_mut(cfg, "cfg") }?;
        cfg.inner.control = match control {
            RCLUSTER_CONTROL_OFF => ControlMode::Off,
            RCLUSTER_CONTROL_ON => ControlMode::On,
            RCLUSTER_CONTROL_REQUIRED => ControlMode::Required,
            _ => {
                return Err(Fail::range(
                    "control",
                    control,
                    "must be RCLUSTER_CONTROL_OFF, _ON or _REQUIRED",
                ))
            }
        };
        Ok(())
    })
}

/// The cluster's status object as JSON (the key names of `docs/control.md`: name, pid,
/// generation, workers with pid, state, cpu_s, rss_bytes, restarts, ...). On success `*out` is
/// a NUL-terminated string to release with `rcluster_string_free`.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_status_json(
    sup: *const rcluster_supervisor,
    out: *mut *mut c_char,
) -> rcluster_result {
    guard("rcluster_supervisor_status_json", || {
        // SAFETY: every export documents that `sup` is NULL or a live supervisor.
        let s = unsafe { args::handle(sup, "sup") }?;
        let out = args::out(out, "out")?;
        let json = s.sup.status()?.to_json();
        let text = CString::new(json).unwrap_or_default();
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to
        // writable memory for one value.
        unsafe { args::put(out, text.into_raw()) };
        Ok(())
    })
}

/// Releases a string this library returned (`rcluster_supervisor_status_json`). NULL is fine.
///
/// # Safety
/// `s` is NULL or a string from this library, not freed before.
#[no_mangle]
pub unsafe extern "C" fn rcluster_string_free(s: *mut c_char) {
    guard_void("rcluster_string_free", || {
        if !s.is_null() {
            // SAFETY: made by CString::into_raw in this library, freed once.
            drop(unsafe { CString::from_raw(s) });
        }
    })
}
