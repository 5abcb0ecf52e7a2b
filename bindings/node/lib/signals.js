'use strict';
const os = require('os');

const names = new Map(Object.entries(os.constants.signals).map(([name, n]) => [n, name]));

/** 'SIGTERM' for 15; null when there was no signal. */
function signalName(n) {
  if (n === null || n === undefined) return null;
  return names.get(n) || `SIG${n}`;
}

module.exports = { signalName };
