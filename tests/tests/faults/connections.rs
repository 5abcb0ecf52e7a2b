//! Faults of connections and listeners: stopping under load, a second cluster on one address,
//! stale Unix sockets, workers that never take their connections.
