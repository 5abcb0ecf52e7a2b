//! The body of every kind of frame that has one, encoded and decoded in one place for both
//! sides: the primary encodes what the worker decodes here, and the other way round. The hello
//! bodies live with the frame header in `frame`, since the handshake reads them before any
//! limit is known.
//!
//! Decoders return None for a body that does not parse; each side turns that into the
//! protocol error it reports, naming the frame.

use super::frame::{put_str, take_bytes, take_str};
use crate::sys::listen::Dispatch;

/// ConnectionAck and ConnectionClosed: the connection's u64 id, and nothing else.
pub fn conn_id(id: u64) -> [u8; 8] {
    id.to_le_bytes()
}

/// Reads the u64 connection id of a ConnectionAck or ConnectionClosed body.
pub fn parse_conn_id(body: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(body).ok().map(u64::from_le_bytes)
}

/// A Connection frame's body (the connection itself travels as its descriptor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionBody {
    pub id: u64,
    /// The worker reports this connection's close (least-connections, `max_inflight`).
    pub report_close: bool,
    /// The listener's name.
    pub listener: String,
    /// The client's address as text.
    pub peer: String,
}

/// Connection body: u64 id, u8 flags (bit 0: report the close), u16-prefixed listener name,
/// u16-prefixed peer (all little-endian).
pub fn connection(id: u64, report_close: bool, listener: &str, peer: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(13 + listener.len() + peer.len());
    body.extend_from_slice(&id.to_le_bytes());
    body.push(u8::from(report_close));
    put_str(&mut body, listener);
    put_str(&mut body, peer);
    body
}

/// Reads a Connection body; unknown flag bits do not parse. Bytes after the peer are ignored.
pub fn parse_connection(mut body: &[u8]) -> Option<ConnectionBody> {
    let id = u64::from_le_bytes(take_bytes::<8>(&mut body)?);
    let [flags] = take_bytes::<1>(&mut body)?;
    if flags & !1 != 0 {
        return None;
    }
    let listener = take_str(&mut body)?;
    let peer = take_str(&mut body)?;
    Some(ConnectionBody {
        id,
        report_close: flags & 1 != 0,
        listener,
        peer,
    })
}

/// Listen body (worker to primary): u32 request id, u8 dispatch mode, u16-prefixed address.
pub fn listen(request: u32, dispatch: Dispatch, addr: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(7 + addr.len());
    body.extend_from_slice(&request.to_le_bytes());
    body.push(dispatch.to_u8());
    put_str(&mut body, addr);
    body
}

/// Reads a Listen body: request id, dispatch mode, address text; nothing may follow.
#[cfg(test)]
pub fn parse_listen(mut body: &[u8]) -> Option<(u32, Dispatch, String)> {
    let request = u32::from_le_bytes(take_bytes::<4>(&mut body)?);
    let dispatch = Dispatch::from_u8(take_bytes::<1>(&mut body)?[0])?;
    let addr = take_str(&mut body)?;
    body.is_empty().then_some((request, dispatch, addr))
}

/// In a Listen body's optional flags byte: the worker takes one off its member's count in the
/// kernel's turns for each connection from its own socket it is done with (protocol §5.7).
pub const LISTEN_COUNTS: u8 = 1;

/// Listen body with its optional flags byte (left out when 0, as a worker that knows no flags
/// sends it).
pub fn listen_with_flags(request: u32, dispatch: Dispatch, addr: &str, flags: u8) -> Vec<u8> {
    let mut body = listen(request, dispatch, addr);
    if flags != 0 {
        body.push(flags);
    }
    body
}

/// Reads a Listen body: request id, dispatch mode, address text, and the flags byte (0 when
/// left out); unknown flags and anything after them do not parse.
pub fn parse_listen_with_flags(mut body: &[u8]) -> Option<(u32, Dispatch, String, u8)> {
    let request = u32::from_le_bytes(take_bytes::<4>(&mut body)?);
    let dispatch = Dispatch::from_u8(take_bytes::<1>(&mut body)?[0])?;
    let addr = take_str(&mut body)?;
    let flags = match body {
        [] => 0,
        [f] if f & !LISTEN_COUNTS == 0 => *f,
        _ => return None,
    };
    Some((request, dispatch, addr, flags))
}

/// The status of a ListenResult that carries the count map of the kernel's turns, before
/// the answer itself (protocol §5.7).
const STATUS_COUNTER: u8 = 2;

/// ListenResult body of status 2: u32 request id, u8 2, u32 the member's index in the count
/// map the frame carries.
pub fn turn_counter(request: u32, member: u32) -> Vec<u8> {
    let mut body = request.to_le_bytes().to_vec();
    body.push(STATUS_COUNTER);
    body.extend_from_slice(&member.to_le_bytes());
    body
}

/// Reads a ListenResult body of status 2: the request id and the member's index. None for
/// any other status.
pub fn parse_turn_counter(mut body: &[u8]) -> Option<(u32, u32)> {
    let request = u32::from_le_bytes(take_bytes::<4>(&mut body)?);
    let [STATUS_COUNTER] = take_bytes::<1>(&mut body)? else {
        return None;
    };
    let member = u32::from_le_bytes(take_bytes::<4>(&mut body)?);
    Some((request, member))
}

/// ListenResult body (primary to worker): u32 request id, then u8 status 0 with the
/// listener's name and bound address, or status 1 with an error message (u16-prefixed texts).
pub fn listen_result(request: u32, result: std::result::Result<(&str, &str), &str>) -> Vec<u8> {
    let mut body = request.to_le_bytes().to_vec();
    match result {
        Ok((name, addr)) => {
            body.push(0);
            put_str(&mut body, name);
            put_str(&mut body, addr);
        }
        Err(message) => {
            body.push(1);
            put_str(&mut body, message);
        }
    }
    body
}

/// Reads a ListenResult body: the request id, and the name and address or the error message.
/// Any status but 0 is an error. Bytes after the last text are ignored.
#[allow(clippy::type_complexity)]
pub fn parse_listen_result(
    mut body: &[u8],
) -> Option<(u32, std::result::Result<(String, String), String>)> {
    let request = u32::from_le_bytes(take_bytes::<4>(&mut body)?);
    let [status] = take_bytes::<1>(&mut body)?;
    let first = take_str(&mut body)?;
    let result = match status {
        0 => Ok((first, take_str(&mut body)?)),
        _ => Err(first),
    };
    Some((request, result))
}

/// Unlisten and Room body (worker to primary): the u16-prefixed listener name.
pub fn listener_name(name: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + name.len());
    put_str(&mut body, name);
    body
}

/// Reads an Unlisten or Room body: the name, and nothing after it.
pub fn parse_listener_name(mut body: &[u8]) -> Option<String> {
    let name = take_str(&mut body)?;
    body.is_empty().then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_body_may_end_with_flags_and_a_listen_result_may_carry_a_counter() {
        let plain = listen_with_flags(3, Dispatch::RoundRobin, ":80", 0);
        assert_eq!(plain, listen(3, Dispatch::RoundRobin, ":80"));
        assert_eq!(
            parse_listen_with_flags(&plain),
            Some((3, Dispatch::RoundRobin, ":80".into(), 0))
        );
        let counted = listen_with_flags(3, Dispatch::RoundRobin, ":80", LISTEN_COUNTS);
        assert_eq!(
            parse_listen_with_flags(&counted),
            Some((3, Dispatch::RoundRobin, ":80".into(), 1))
        );
        assert_eq!(parse_listen(&counted), None);
        let mut unknown = plain.clone();
        unknown.push(2);
        assert_eq!(parse_listen_with_flags(&unknown), None);
        assert_eq!(parse_turn_counter(&turn_counter(9, 17)), Some((9, 17)));
        assert_eq!(
            parse_turn_counter(&listen_result(9, Ok(("web", "[::1]:80")))),
            None
        );
    }

    #[test]
    fn every_body_decodes_to_what_was_encoded() {
        assert_eq!(parse_conn_id(&conn_id(7)), Some(7));
        assert_eq!(parse_conn_id(&[0; 7]), None);
        let c = parse_connection(&connection(9, true, "web", "127.0.0.1:5000")).unwrap();
        assert_eq!(
            c,
            ConnectionBody {
                id: 9,
                report_close: true,
                listener: "web".into(),
                peer: "127.0.0.1:5000".into()
            }
        );
        let l = parse_listen(&listen(3, Dispatch::Shared, "unix:/tmp/s")).unwrap();
        assert_eq!(l, (3, Dispatch::Shared, "unix:/tmp/s".to_string()));
        assert_eq!(
            parse_listen_result(&listen_result(4, Ok(("web", "[::1]:80")))),
            Some((4, Ok(("web".to_string(), "[::1]:80".to_string()))))
        );
        assert_eq!(
            parse_listen_result(&listen_result(5, Err("in use"))),
            Some((5, Err("in use".to_string())))
        );
        assert_eq!(
            parse_listener_name(&listener_name("web")),
            Some("web".to_string())
        );
    }

    #[test]
    fn malformed_bodies_do_not_parse() {
        let mut c = connection(9, false, "web", "peer");
        c[8] = 2;
        assert_eq!(parse_connection(&c), None);
        assert_eq!(
            parse_connection(&connection(9, false, "web", "peer")[..14]),
            None
        );
        let mut l = listen(1, Dispatch::Shared, "a");
        l.push(0);
        assert_eq!(parse_listen(&l), None);
        let mut u = listener_name("web");
        u.push(0);
        assert_eq!(parse_listener_name(&u), None);
        assert_eq!(parse_listen_result(&[1, 0, 0, 0]), None);
    }
}
