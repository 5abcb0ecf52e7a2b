//! Workers that break the protocol: malformed and oversized frames, stray descriptors.
