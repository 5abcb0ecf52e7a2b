//! A client of a running cluster's control socket (`docs/control.md`): find it, say the
//! request, read the JSON lines of the answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// The protocol version this client speaks.
const PROTOCOL: u64 = 1;
/// How long a reply may take (a stream waits as long as it runs).
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// The folder of this user's control sockets (the rule the core uses).
pub fn control_dir() -> Option<PathBuf> {
    rcluster_core::control_dir()
}

/// The socket of cluster `name` (a path when it holds a '/').
pub fn socket_of(name: &str) -> Result<PathBuf, String> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let dir = control_dir().ok_or("neither XDG_RUNTIME_DIR nor HOME is set")?;
    Ok(dir.join(format!("{name}.sock")))
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub hello: Value,
}

impl Client {
    /// Connects to cluster `name` and reads its hello.
    pub fn connect(name: &str) -> Result<Client, String> {
        let path = socket_of(name)?;
        Client::connect_path(&path).map_err(|e| format!("cluster {name:?}: {e}"))
    }

    pub fn connect_path(path: &Path) -> Result<Client, String> {
        let stream = UnixStream::connect(path).map_err(|e| refused(path, &e))?;
        Client::handshake(stream)
    }

    /// Reads the hello of a cluster connected to.
    pub fn handshake(stream: UnixStream) -> Result<Client, String> {
        stream
            .set_read_timeout(Some(REPLY_WAIT))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut c = Client {
            reader: BufReader::new(stream),
            writer,
            hello: Value::Null,
        };
        let hello = c
            .next()?
            .ok_or("the cluster closed the connection at once")?;
        if hello.get("ok") == Some(&Value::Bool(false)) {
            return Err(error_of(&hello));
        }
        let version = hello.get("protocol").and_then(Value::as_u64);
        if version != Some(PROTOCOL) {
            return Err(format!(
                "the cluster speaks control protocol {version:?}, this rcluster speaks {PROTOCOL}"
            ));
        }
        c.hello = hello;
        Ok(c)
    }

    pub fn send(&mut self, req: &Value) -> Result<(), String> {
        let mut line = req.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| format!("sending the request: {e}"))
    }

    /// Streams wait without limit from here on.
    pub fn no_timeout(&mut self) {
        let _ = self.reader.get_ref().set_read_timeout(None);
    }

    /// The next JSON line; None at end of stream.
    pub fn next(&mut self) -> Result<Option<Value>, String> {
        match self.next_line()? {
            None => Ok(None),
            Some(line) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| format!("the cluster sent a line that is not JSON: {e}")),
        }
    }

    /// The next line as it came; None at end of stream.
    fn next_line(&mut self) -> Result<Option<String>, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(None),
            Err(e) => Err(format!("reading the reply: {e}")),
        }
    }

    /// Sends `req` and returns the JSON text of its reply's `key`, as the cluster wrote it:
    /// for a caller that only passes it on (`status --json` of many workers), no tree of
    /// values is built and written out again.
    pub fn ask_raw(&mut self, req: &Value, key: &str) -> Result<String, String> {
        self.send(req)?;
        let line = self
            .next_line()?
            .ok_or("the cluster closed the connection")?;
        let not_json =
            |e: serde_json::Error| format!("the cluster sent a line that is not JSON: {e}");
        let reply: std::collections::HashMap<&str, &serde_json::value::RawValue> =
            serde_json::from_str(&line).map_err(not_json)?;
        if reply.get("ok").map(|v| v.get()) != Some("true") {
            return Err(error_of(&serde_json::from_str(&line).map_err(not_json)?));
        }
        reply
            .get(key)
            .map(|v| v.get().to_string())
            .ok_or_else(|| format!("the reply has no \"{key}\": {}", line.trim_end()))
    }

    /// Sends `req` and returns its reply, an error when it says `ok: false`.
    pub fn ask(&mut self, req: &Value) -> Result<Value, String> {
        self.send(req)?;
        let reply = self.next()?.ok_or("the cluster closed the connection")?;
        if reply.get("ok") == Some(&Value::Bool(true)) {
            Ok(reply)
        } else {
            Err(error_of(&reply))
        }
    }
}

/// Why connecting to the socket at `path` failed, in words.
pub fn refused(path: &Path, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("no cluster runs there ({} does not exist)", path.display())
        }
        std::io::ErrorKind::ConnectionRefused => format!(
            "not running: its control socket {} is stale (nothing accepts on it: its primary \
             was killed; `rcluster ls` removes it)",
            path.display()
        ),
        _ => format!("cannot connect to {}: {e}", path.display()),
    }
}

pub fn error_of(v: &Value) -> String {
    v.get("error")
        .and_then(Value::as_str)
        .map_or_else(|| format!("unexpected reply {v}"), str::to_string)
}
