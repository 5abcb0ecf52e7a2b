//! Signals to the primary: SIGTERM under load, SIGHUP, repeated signals.
