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

pub fn invalid(message: String) -> napi::Error<&'static str> {
    napi::Error::new("ERR_RCLUSTER_INVALID_OPTION", message)
}

/// Converts a napi error of the plain kind (a failed conversion, a libuv call).
pub fn from_napi(e: napi::Error) -> napi::Error<&'static str> {
    napi::Error::new("ERR_RCLUSTER_IO", e.reason.clone())
}
