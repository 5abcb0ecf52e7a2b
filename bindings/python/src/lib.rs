//! Python binding of rcluster (to be written).
