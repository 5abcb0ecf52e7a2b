//! Node binding of rcluster (to be written).
