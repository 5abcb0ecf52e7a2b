//! The one place where core errors become JS errors: each kind gets a stable `code`.

use rcluster_core::Error as CoreError;

// Every native function returns `napi::Result<T, &'static str>`: the error's status string
// becomes the `code` property of the JS error.

pub fn code_of(e: &CoreError) -> &'static str {
    match e {
        CoreError::Config { .. } => "ERR_RCLUSTER_INVALID_OPTION",
        CoreError::Bind { .. } => "ERR_RCLUSTER_BIND",
        CoreError::Spawn { .. } => "ERR_RCLUSTER_SPAWN",
        CoreError::MessageTooLarge { .. } => "ERR_RCLUSTER_MESSAGE_TOO_LARGE",
        CoreError::QueueFull { .. } => "ERR_RCLUSTER_QUEUE_FULL",
        CoreError::NoSuchWorker(_) => "ERR_RCLUSTER_NO_SUCH_WORKER",
        CoreError::Stopped => "ERR_RCLUSTER_STOPPED",
        CoreError::Protocol(_) => "ERR_RCLUSTER_PROTOCOL",
        CoreError::NotAWorker(_) => "ERR_RCLUSTER_NOT_A_WORKER",
        CoreError::Io { .. } => "ERR_RCLUSTER_IO",
        CoreError::TaskQueueFull { .. } => "ERR_QUEUE_FULL",
        CoreError::PoolBroken(_) => "ERR_RCLUSTER_POOL_BROKEN",
    }
}

pub fn to_js(e: CoreError) -> napi::Error<&'static str> {
    napi::Error::new(code_of(&e), e.to_string())
}

/// A core error about the options of `start()`: a config error names the option as JS spells
/// it (`send_queue_limit` → `options.sendQueueLimit`), in the form of `invalidOption` in
/// `lib/errors.js`.
pub fn option_error(e: CoreError) -> napi::Error<&'static str> {
    match &e {
        CoreError::Config {
            field,
            value,
            reason,
        } => invalid(format!(
            "invalid option {} = {value}: {reason}",
            js_option(field)
        )),
        _ => to_js(e),
    }
}

/// `restart.backoff_initial` → `options.restart.backoffInitial`.
fn js_option(field: &str) -> String {
    let mut out = String::from("options");
    for part in field.split('.') {
        out.push('.');
        let mut upper = false;
        for ch in part.chars() {
            match ch {
                '_' => upper = true,
                c if upper => {
                    out.extend(c.to_uppercase());
                    upper = false;
                }
                c => out.push(c),
            }
        }
    }
    out
}

pub fn invalid(message: String) -> napi::Error<&'static str> {
    napi::Error::new("ERR_RCLUSTER_INVALID_OPTION", message)
}

/// Converts a napi error of the plain kind (a failed conversion, a libuv call).
pub fn from_napi(e: napi::Error) -> napi::Error<&'static str> {
    napi::Error::new("ERR_RCLUSTER_IO", e.reason.clone())
}
