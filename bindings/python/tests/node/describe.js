'use strict';
// What a Node receiver made of a message, as plain JSON: a Buffer (raw), a string (text), or
// a decoded value (json, v8).
function describe(m) {
  if (Buffer.isBuffer(m)) return { buffer: m.toString('hex') };
  if (typeof m === 'string') return { string: m };
  return { value: m };
}

module.exports = { describe };
