//! Worker stdout/stderr, prefixed line by line with the worker id (`Output::Prefix`).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys;

/// Lines longer than this are cut and written in pieces.
const MAX_LINE: usize = 64 * 1024;

pub struct PrefixPipe {
    pub fd: OwnedFd,
    /// 1 for stdout, 2 for stderr: where the prefixed lines go.
    target: RawFd,
    prefix: Vec<u8>,
    partial: Vec<u8>,
}

impl PrefixPipe {
    pub fn new(fd: OwnedFd, target: RawFd, id: u32) -> PrefixPipe {
        PrefixPipe {
            fd,
            target,
            prefix: format!("[{id}] ").into_bytes(),
            partial: Vec::new(),
        }
    }

    /// Reads what is available; false at EOF (or error).
    pub fn pump(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        for _ in 0..16 {
            match sys::read(self.fd.as_raw_fd(), &mut buf) {
                Ok(0) => return false,
                Ok(n) => self.take(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }

    fn take(&mut self, mut data: &[u8]) {
        let mut out = Vec::with_capacity(data.len() + 64);
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            out.extend_from_slice(&self.prefix);
            out.append(&mut self.partial);
            out.extend_from_slice(&data[..=nl]);
            data = &data[nl + 1..];
        }
        self.partial.extend_from_slice(data);
        if self.partial.len() >= MAX_LINE {
            out.extend_from_slice(&self.prefix);
            out.append(&mut self.partial);
            out.push(b'\n');
        }
        write_all(self.target, &out);
    }

    /// Writes a last line without newline, if any.
    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            let mut out = self.prefix.clone();
            out.append(&mut self.partial);
            out.push(b'\n');
            write_all(self.target, &out);
        }
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: data is valid for its length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return; // The primary's output is gone; dropping worker output is all we can do.
        }
        data = &data[n as usize..];
    }
}
