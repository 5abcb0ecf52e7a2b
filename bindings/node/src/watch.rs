//! A libuv poll handle on a descriptor that calls a JS function when it is readable.
//!
//! N-API has no descriptor watcher, so this uses libuv directly: the node executable exports
//! the `uv_*` symbols that addons link against. Watching on the JS thread itself (rather than
//! a helper thread feeding a thread-safe function) saves a thread wake-up per event batch,
//! which is most of the round-trip time of a message on a virtual machine, and lets the
//! handle be ref'd or unref'd like any other libuv handle.

use std::ffi::{c_int, c_void};
use std::os::fd::RawFd;
use std::ptr;

use napi::bindgen_prelude::*;
use napi::sys;

const UV_CHECK: c_int = 2;
const UV_POLL: c_int = 8;
const UV_READABLE: c_int = 1;

extern "C" {
    fn uv_handle_size(kind: c_int) -> usize;
    fn uv_poll_init(lp: *mut sys::uv_loop_s, handle: *mut c_void, fd: c_int) -> c_int;
    fn uv_poll_start(
        handle: *mut c_void,
        events: c_int,
        cb: extern "C" fn(*mut c_void, c_int, c_int),
    ) -> c_int;
    fn uv_poll_stop(handle: *mut c_void) -> c_int;
    fn uv_close(handle: *mut c_void, cb: extern "C" fn(*mut c_void));
    fn uv_ref(handle: *mut c_void);
    fn uv_unref(handle: *mut c_void);
    fn uv_check_init(lp: *mut sys::uv_loop_s, handle: *mut c_void) -> c_int;
    fn uv_check_start(handle: *mut c_void, cb: extern "C" fn(*mut c_void)) -> c_int;
    fn uv_check_stop(handle: *mut c_void) -> c_int;
}

/// Makes the callback's one argument, on the JS thread, each time the descriptor is
/// readable: the events waiting, so that taking them costs no call back into the addon.
/// None: nothing for JS this time (it is not called).
pub type Produce =
    Box<dyn FnMut(sys::napi_env) -> napi::Result<Option<sys::napi_value>, &'static str>>;

/// What the poll callback needs; its address is the handle's `data` field.
struct Target {
    env: sys::napi_env,
    callback: sys::napi_ref,
    context: sys::napi_async_context,
    produce: Produce,
    /// With `at_check`: the check handle that calls back after the turn's other callbacks.
    check: *mut c_void,
}

/// A started poll handle. Must be closed with [`Watcher::close`] on the JS thread.
pub struct Watcher {
    /// Memory of the `uv_poll_t` (its size comes from libuv at run time); the first field of
    /// every libuv handle is `void *data`, which points at the boxed `Target`.
    handle: *mut c_void,
}

fn check(status: sys::napi_status, what: &str) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Error::from_reason(format!(
            "{what} failed (napi status {status})"
        )))
    }
}

fn uv_check(rc: c_int, what: &str) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::from_reason(format!(
            "{what} failed (libuv error {rc})"
        )))
    }
}

impl Watcher {
    /// Starts watching `fd`; `callback` is called with what `produce` makes whenever it is
    /// readable (level-triggered: until the caller has drained it), unless that is None.
    /// `at_check`: in the check phase of the turn it became readable in (after the turn's
    /// other I/O callbacks) rather than at once.
    pub fn start(
        env: &Env,
        fd: RawFd,
        callback: Function<'_, sys::napi_value, ()>,
        produce: Produce,
        name: &str,
        at_check: bool,
    ) -> Result<Watcher> {
        let raw = env.raw();
        let mut callback_ref = ptr::null_mut();
        let mut context = ptr::null_mut();
        let mut lp = ptr::null_mut();
        // SAFETY: plain N-API calls on the JS thread with valid values.
        unsafe {
            check(
                sys::napi_create_reference(raw, callback.raw(), 1, &mut callback_ref),
                "napi_create_reference",
            )?;
            let mut resource = ptr::null_mut();
            check(
                sys::napi_create_object(raw, &mut resource),
                "napi_create_object",
            )?;
            let mut resource_name = ptr::null_mut();
            check(
                sys::napi_create_string_utf8(
                    raw,
                    name.as_ptr().cast(),
                    name.len() as isize,
                    &mut resource_name,
                ),
                "napi_create_string_utf8",
            )?;
            check(
                sys::napi_async_init(raw, resource, resource_name, &mut context),
                "napi_async_init",
            )?;
            check(
                sys::napi_get_uv_event_loop(raw, &mut lp),
                "napi_get_uv_event_loop",
            )?;
        }
        let target = Box::into_raw(Box::new(Target {
            env: raw,
            callback: callback_ref,
            context,
            produce,
            check: ptr::null_mut(),
        }));
        let handle = alloc_handle(UV_POLL);
        let watcher = Watcher { handle };
        // SAFETY: `handle` is large enough; `data` is its first field and uv_poll_init keeps it.
        unsafe {
            uv_check(uv_poll_init(lp, handle, fd), "uv_poll_init")?;
            *(handle as *mut *mut Target) = target;
            if at_check {
                let check = alloc_handle(UV_CHECK);
                uv_check(uv_check_init(lp, check), "uv_check_init")?;
                *(check as *mut *mut Target) = target;
                uv_unref(check);
                (*target).check = check;
            }
            uv_check(
                uv_poll_start(handle, UV_READABLE, on_readable),
                "uv_poll_start",
            )?;
        }
        Ok(watcher)
    }

    /// Whether the handle keeps the event loop alive.
    pub fn set_ref(&self, keep_alive: bool) {
        // SAFETY: the handle is initialised and not closed (close consumes self).
        unsafe {
            if keep_alive {
                uv_ref(self.handle)
            } else {
                uv_unref(self.handle)
            }
        }
    }

    /// Stops watching and frees everything once libuv has let go of the handle.
    pub fn close(self) {
        // SAFETY: on the JS thread. This may run inside `on_readable` (the JS callback
        // closes its own watcher), so nothing is freed here: `on_close` runs later, from
        // the loop, when no callback of this handle is on the stack.
        unsafe {
            let check = (**(self.handle as *mut *mut Target)).check;
            if !check.is_null() {
                uv_check_stop(check);
                uv_close(check, on_close_check);
            }
            uv_poll_stop(self.handle);
            uv_close(self.handle, on_close);
        }
    }
}

extern "C" fn on_close(handle: *mut c_void) {
    // SAFETY: libuv no longer uses the handle, and the Target is released on the JS thread
    // (close callbacks run there).
    unsafe {
        let target = Box::from_raw(*(handle as *mut *mut Target));
        sys::napi_delete_reference(target.env, target.callback);
        sys::napi_async_destroy(target.env, target.context);
        free_handle(handle, UV_POLL);
    }
}

extern "C" fn on_close_check(handle: *mut c_void) {
    // SAFETY: libuv no longer uses the handle; the Target is the poll handle's to release.
    unsafe { free_handle(handle, UV_CHECK) };
}

/// Memory for a libuv handle of `kind`: zeroed, of the size libuv asks for, 16-byte aligned
/// through u128.
fn alloc_handle(kind: c_int) -> *mut c_void {
    // SAFETY: uv_handle_size has no preconditions.
    let words = unsafe { uv_handle_size(kind) }.div_ceil(16);
    Box::into_raw(vec![0u128; words].into_boxed_slice()).cast::<c_void>()
}

/// Frees what [`alloc_handle`] gave for `kind`.
///
/// # Safety
/// `handle` came from `alloc_handle(kind)` and libuv is done with it.
unsafe fn free_handle(handle: *mut c_void, kind: c_int) {
    let words = uv_handle_size(kind).div_ceil(16);
    drop(Box::from_raw(ptr::slice_from_raw_parts_mut(
        handle.cast::<u128>(),
        words,
    )));
}

extern "C" fn on_readable(handle: *mut c_void, _status: c_int, _events: c_int) {
    // SAFETY: as in call_back.
    unsafe {
        let t = &mut **(handle as *mut *mut Target);
        if !t.check.is_null() {
            uv_check_start(t.check, on_check);
            return;
        }
    }
    call_back(handle);
}

extern "C" fn on_check(handle: *mut c_void) {
    // SAFETY: the check handle's data is the live Target, as the poll handle's.
    unsafe { uv_check_stop(handle) };
    call_back(handle);
}

fn call_back(handle: *mut c_void) {
    // SAFETY: called by libuv on the JS thread while the handle is started; `data` points at
    // the live Target (freed only in on_close). libuv never calls back into a handle's
    // callback from within it, so this is the only reference to the Target meanwhile.
    unsafe {
        let t = &mut **(handle as *mut *mut Target);
        let mut scope = ptr::null_mut();
        if sys::napi_open_handle_scope(t.env, &mut scope) != sys::Status::napi_ok {
            return;
        }
        let mut func = ptr::null_mut();
        let mut recv = ptr::null_mut();
        let mut result = ptr::null_mut();
        let status = match (t.produce)(t.env) {
            Ok(None) => sys::Status::napi_ok,
            Ok(Some(arg)) => {
                sys::napi_get_reference_value(t.env, t.callback, &mut func);
                // The receiver must be an object (make_callback converts it with ToObject).
                sys::napi_get_global(t.env, &mut recv);
                // make_callback (not call_function): it runs the nextTick queue and
                // microtasks afterwards, as any libuv callback into JS must.
                sys::napi_make_callback(t.env, t.context, recv, func, 1, &arg, &mut result)
            }
            Err(e) => {
                JsError::from(e).throw_into(t.env);
                sys::Status::napi_pending_exception
            }
        };
        if status == sys::Status::napi_pending_exception {
            let mut exception = ptr::null_mut();
            sys::napi_get_and_clear_last_exception(t.env, &mut exception);
            sys::napi_fatal_exception(t.env, exception);
        }
        sys::napi_close_handle_scope(t.env, scope);
    }
}

/// The watcher of a native object (supervisor or worker link), started at most once.
#[derive(Default)]
pub struct WatchSlot(Option<Watcher>);

impl WatchSlot {
    /// Starts watching `fd` unless a watcher runs already.
    pub fn start(
        &mut self,
        env: &Env,
        fd: RawFd,
        callback: Function<'_, sys::napi_value, ()>,
        produce: Produce,
        name: &str,
        at_check: bool,
    ) -> Result<()> {
        if self.0.is_none() {
            self.0 = Some(Watcher::start(env, fd, callback, produce, name, at_check)?);
        }
        Ok(())
    }

    /// Whether the watcher keeps the process alive.
    pub fn set_ref(&self, keep_alive: bool) {
        if let Some(w) = &self.0 {
            w.set_ref(keep_alive);
        }
    }

    pub fn close(&mut self) {
        if let Some(w) = self.0.take() {
            w.close();
        }
    }
}
