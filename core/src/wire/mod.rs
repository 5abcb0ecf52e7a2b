//! The wire format between primary and worker: frames (`frame`) and the body of every kind of
//! frame, encoded and decoded in both directions in one place (`body`). Nothing here reads or
//! writes a socket.

pub mod body;
pub mod frame;
pub mod task;
