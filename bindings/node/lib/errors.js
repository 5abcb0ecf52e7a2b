'use strict';

/** An Error with a stable `code`, like Node's own `ERR_*` errors. */
function rclusterError(code, message) {
  const err = new Error(message);
  err.code = code;
  return err;
}

/** A bad option: the message names the option and the value that was given. */
function invalidOption(name, value, expected) {
  let shown;
  try {
    shown = typeof value === 'string' ? JSON.stringify(value) : String(value);
  } catch {
    shown = Object.prototype.toString.call(value);
  }
  return rclusterError('ERR_RCLUSTER_INVALID_OPTION', `invalid option ${name} = ${shown}: ${expected}`);
}

module.exports = { rclusterError, invalidOption };
