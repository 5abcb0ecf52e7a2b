//! C ABI of rcluster (to be written).
