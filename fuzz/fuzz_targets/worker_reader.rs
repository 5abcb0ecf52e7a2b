//! Fuzz target: `rcluster_core::fuzzing::worker_reader` (see that module for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rcluster_core::fuzzing::worker_reader(data));
