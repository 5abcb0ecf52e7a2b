//! Floods: workers that send without pause to a host that does not read, crash storms.
