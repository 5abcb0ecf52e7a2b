//! The wire format between primary and worker: frames (`frame`), the content type of a user message
//! (`content`) and the body of every kind of frame, encoded and decoded in both directions in one place (`body`). Nothing here reads or
//! writes a socket.

pub mod body;
pub mod content;
pub mod frame;
pub mod task;
