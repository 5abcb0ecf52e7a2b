//! Faults of worker output: descendants holding the pipes, hosts whose stdout is full.
