//! What a user message's body is: its content type, carried in bits 1–3 of the `flags` byte of
//! a `Message` frame (both directions). Type 0 is `raw`, so a peer that predates content types
//! (which had to leave those bits zero) sends raw messages and keeps working unchanged. The
//! core carries the body as it is and never decodes it: the type tells the receiving binding
//! how to, whatever binding sent it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The bits of a `Message` frame's flags that hold its content type.
pub const CONTENT_MASK: u8 = 0b1110;
const CONTENT_SHIFT: u32 = 1;

/// The content type of a user message. Numbers are part of the protocol and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ContentType {
    /// Opaque bytes (what `send(bytes)` sends; the type of every message from a peer that does
    /// not know content types).
    #[default]
    Raw = 0,
    /// UTF-8 text.
    Text = 1,
    /// UTF-8 JSON text (one value).
    Json = 2,
    /// Node's `v8.serialize` format (as Node 18 and later write it).
    V8 = 3,
    /// A binding's own bookkeeping (Node's `cluster` control messages: a JSON object with an
    /// `act` field); a receiver that does not know the message ignores it.
    Binding = 4,
    /// Python's pickle (what a Python pool sends its tasks and results as).
    Pickle = 5,
}

impl ContentType {
    /// Every type, in the order of its number.
    pub const ALL: [ContentType; 6] = [
        ContentType::Raw,
        ContentType::Text,
        ContentType::Json,
        ContentType::V8,
        ContentType::Binding,
        ContentType::Pickle,
    ];

    /// The type numbered `n`; an error naming `n` for a number no type has (6 and 7 are free
    /// for later versions, which a receiver of today cannot decode).
    pub fn from_u8(n: u8) -> Result<ContentType> {
        ContentType::ALL
            .get(n as usize)
            .copied()
            .ok_or_else(|| Error::Protocol(format!("unknown message content type {n}")))
    }

    /// The type a `Message` frame's flags carry.
    pub fn from_flags(flags: u8) -> Result<ContentType> {
        ContentType::from_u8((flags & CONTENT_MASK) >> CONTENT_SHIFT)
    }

    /// The flag bits of a `Message` frame of this type.
    pub fn flags(self) -> u8 {
        (self as u8) << CONTENT_SHIFT
    }

    /// The name bindings use: `raw`, `text`, `json`, `v8`, `binding` or `pickle`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Raw => "raw",
            ContentType::Text => "text",
            ContentType::Json => "json",
            ContentType::V8 => "v8",
            ContentType::Binding => "binding",
            ContentType::Pickle => "pickle",
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContentType {
    type Err = Error;

    fn from_str(s: &str) -> Result<ContentType> {
        ContentType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                Error::config(
                    "content_type",
                    s,
                    "expected raw, text, json, v8, binding or pickle",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_survives_its_flags_and_its_name() {
        for t in ContentType::ALL {
            assert_eq!(t.flags() & !CONTENT_MASK, 0);
            assert_eq!(ContentType::from_flags(t.flags()).unwrap(), t);
            assert_eq!(t.as_str().parse::<ContentType>().unwrap(), t);
        }
        assert_eq!(ContentType::from_flags(0).unwrap(), ContentType::Raw);
    }

    #[test]
    fn numbers_without_a_type_are_refused_by_number() {
        for n in 6..=7u8 {
            let err = ContentType::from_flags(n << 1).unwrap_err().to_string();
            assert!(err.contains(&format!("content type {n}")), "{err}");
        }
        assert!("yaml".parse::<ContentType>().is_err());
    }
}
