//! Reloads under load and reloads that overlap.
