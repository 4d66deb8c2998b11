//! AWS's event stream framing (`application/vnd.amazon.eventstream`, what Bedrock's
//! `/converse-stream` answers with), decoded incrementally: chunks split anywhere, a message is
//! handed out once its last byte arrived and both its checksums hold.
//!
//! A message is `[total length u32][headers length u32][prelude CRC u32][headers][payload]
//! [message CRC u32]`, big-endian, the prelude CRC over the first 8 bytes and the message CRC
//! over everything before it (CRC-32, IEEE). A header is `[name length u8][name][type u8]
//! [value]`; only string values (type 7) are kept, the others are read past.

use std::fmt;

/// A message longer than this is refused: AWS's own limit, and a bound on what is buffered.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The prelude (two lengths and their CRC) and the trailing message CRC.
const PRELUDE_BYTES: usize = 12;
const CRC_BYTES: usize = 4;
const MIN_MESSAGE_BYTES: usize = PRELUDE_BYTES + CRC_BYTES;

/// One decoded message: its string headers in order, and its payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Message {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// The value of the first string header named `name`.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Why the stream could not be decoded; the decoder decodes nothing after one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The CRC of the two lengths is not the one that follows them.
    PreludeCrc { expected: u32, actual: u32 },
    /// The CRC of the whole message is not the one at its end.
    MessageCrc { expected: u32, actual: u32 },
    /// A total length over [`MAX_MESSAGE_BYTES`].
    TooLong { total: usize },
    /// A total length that cannot hold the prelude and the CRC, or headers that do not fit.
    BadLength { total: usize, headers: usize },
    /// The headers section does not parse.
    BadHeaders { detail: &'static str },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PreludeCrc { expected, actual } => {
                write!(f, "prelude checksum mismatch (expected {expected:#010x}, computed {actual:#010x})")
            }
            Self::MessageCrc { expected, actual } => {
                write!(f, "message checksum mismatch (expected {expected:#010x}, computed {actual:#010x})")
            }
            Self::TooLong { total } => {
                write!(f, "a message of {total} bytes (more than the {MAX_MESSAGE_BYTES} allowed)")
            }
            Self::BadLength { total, headers } => {
                write!(f, "a message of {total} bytes cannot hold {headers} bytes of headers")
            }
            Self::BadHeaders { detail } => write!(f, "malformed headers: {detail}"),
        }
    }
}

/// The incremental decoder: bytes in, whole messages (or the error that stopped it) out.
#[derive(Debug, Default)]
pub(crate) struct EventStreamDecoder {
    /// Bytes of the message under way (at most one message: each is handed out once whole).
    buffer: Vec<u8>,
    /// An error was handed out: nothing more is decoded.
    failed: bool,
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(slice) = bytes.get(at..at + 4) {
        word.copy_from_slice(slice);
    }
    u32::from_be_bytes(word)
}

impl EventStreamDecoder {
    /// The messages `chunk` completes, in order; an error ends the list and the decoding.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Vec<Result<Message, DecodeError>> {
        let mut out = Vec::new();
        if self.failed {
            return out;
        }
        self.buffer.extend_from_slice(chunk);
        let mut start = 0;
        loop {
            match self.next_message(start) {
                Ok(Some((message, length))) => {
                    start += length;
                    out.push(Ok(message));
                }
                Ok(None) => break,
                Err(e) => {
                    self.failed = true;
                    self.buffer = Vec::new();
                    out.push(Err(e));
                    return out;
                }
            }
        }
        self.buffer.drain(..start);
        out
    }

    /// The message starting at `start` in the buffer and its length, if all of it is there.
    fn next_message(&self, start: usize) -> Result<Option<(Message, usize)>, DecodeError> {
        let bytes = self.buffer.get(start..).unwrap_or_default();
        if bytes.len() < PRELUDE_BYTES {
            return Ok(None);
        }
        let total = be_u32(bytes, 0) as usize;
        let headers_len = be_u32(bytes, 4) as usize;
        let expected = be_u32(bytes, 8);
        let actual = crc32fast::hash(bytes.get(..8).unwrap_or_default());
        if expected != actual {
            return Err(DecodeError::PreludeCrc { expected, actual });
        }
        if total > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLong { total });
        }
        if total < MIN_MESSAGE_BYTES || headers_len > total - MIN_MESSAGE_BYTES {
            return Err(DecodeError::BadLength { total, headers: headers_len });
        }
        let Some(message) = bytes.get(..total) else {
            return Ok(None);
        };
        let expected = be_u32(message, total - CRC_BYTES);
        let actual = crc32fast::hash(message.get(..total - CRC_BYTES).unwrap_or_default());
        if expected != actual {
            return Err(DecodeError::MessageCrc { expected, actual });
        }
        let headers_end = PRELUDE_BYTES + headers_len;
        let headers = parse_headers(message.get(PRELUDE_BYTES..headers_end).unwrap_or_default())?;
        let payload = message.get(headers_end..total - CRC_BYTES).unwrap_or_default().to_vec();
        Ok(Some((Message { headers, payload }, total)))
    }
}

/// The string headers of a headers section; the other types are read past.
fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    fn take(bytes: &mut &[u8], n: usize) -> Result<Vec<u8>, DecodeError> {
        let (head, rest) = bytes
            .split_at_checked(n)
            .ok_or(DecodeError::BadHeaders { detail: "a header runs past the headers section" })?;
        *bytes = rest;
        Ok(head.to_vec())
    }
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name_len = take(&mut bytes, 1)?.first().copied().unwrap_or_default() as usize;
        let name = String::from_utf8(take(&mut bytes, name_len)?)
            .map_err(|_| DecodeError::BadHeaders { detail: "a header name is not UTF-8" })?;
        let kind = take(&mut bytes, 1)?.first().copied().unwrap_or_default();
        let fixed = match kind {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let len = take(&mut bytes, 2)?;
                let len = u16::from_be_bytes([len.first().copied().unwrap_or(0), len.get(1).copied().unwrap_or(0)]);
                let value = take(&mut bytes, usize::from(len))?;
                if kind == 7 {
                    let value = String::from_utf8(value)
                        .map_err(|_| DecodeError::BadHeaders { detail: "a string header is not UTF-8" })?;
                    headers.push((name, value));
                }
                continue;
            }
            _ => return Err(DecodeError::BadHeaders { detail: "a header has an unknown value type" }),
        };
        take(&mut bytes, fixed)?;
    }
    Ok(headers)
}

/// A message with these string headers and payload, as AWS frames it (tests only).
#[cfg(test)]
pub(crate) fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    for (name, value) in headers {
        raw.push(name.len() as u8);
        raw.extend_from_slice(name.as_bytes());
        raw.push(7);
        raw.extend_from_slice(&(value.len() as u16).to_be_bytes());
        raw.extend_from_slice(value.as_bytes());
    }
    encode_raw(&raw, payload)
}

/// A message around an already encoded headers section (tests only).
#[cfg(test)]
pub(crate) fn encode_raw(headers: &[u8], payload: &[u8]) -> Vec<u8> {
    let total = (MIN_MESSAGE_BYTES + headers.len() + payload.len()) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, payload: &str) -> Vec<u8> {
        encode(
            &[(":event-type", kind), (":content-type", "application/json"), (":message-type", "event")],
            payload.as_bytes(),
        )
    }

    fn decode_all(pieces: &[&[u8]]) -> Vec<Result<Message, DecodeError>> {
        let mut decoder = EventStreamDecoder::default();
        pieces.iter().flat_map(|piece| decoder.feed(piece)).collect()
    }

    #[test]
    fn headers_of_every_type_are_read_and_only_strings_kept() {
        // One header of each type, as AWS's own test vectors have them, and a JSON payload.
        let mut headers = Vec::new();
        let mut header = |name: &str, kind: u8, value: &[u8]| {
            headers.push(name.len() as u8);
            headers.extend_from_slice(name.as_bytes());
            headers.push(kind);
            headers.extend_from_slice(value);
        };
        header("event-type", 4, &40_972u32.to_be_bytes());
        header("content-type", 7, b"\x00\x10application/json");
        header("bool false", 1, b"");
        header("bool true", 0, b"");
        header("byte", 2, b"\xcf");
        header("byte buf", 6, b"\x00\x13I'm a little teapot");
        header("time", 8, &8_675_309u64.to_be_bytes());
        header("short", 3, &42u16.to_be_bytes());
        header("uuid", 9, &[0xb7; 16]);
        header("long", 5, &4_000u64.to_be_bytes());
        header(":event-type", 7, b"\x00\x08metadata");
        let payload = br#"{"foo":"bar"}"#;
        let got = decode_all(&[&encode_raw(&headers, payload)]);
        assert_eq!(
            got,
            [Ok(Message {
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    (":event-type".into(), "metadata".into())
                ],
                payload: payload.to_vec()
            })]
        );
        let message = got[0].as_ref().unwrap();
        assert_eq!(message.header(":event-type"), Some("metadata"));
        assert_eq!(message.header("event-type"), None, "not a string");
    }

    #[test]
    fn messages_come_out_the_same_whatever_the_split() {
        let stream = [
            event("messageStart", r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW","role":"assistant"}"#),
            event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Hello, 世界"},"p":"abcd"}"#),
            encode(&[], b""),
            event("messageStop", r#"{"p":"abcdefghijklmnopqrs","stopReason":"end_turn"}"#),
        ]
        .concat();
        let whole = decode_all(&[&stream]);
        assert_eq!(whole.len(), 4);
        assert!(whole.iter().all(Result::is_ok));
        assert_eq!(whole[1].as_ref().unwrap().header(":event-type"), Some("contentBlockDelta"));
        assert_eq!(whole[2], Ok(Message::default()));
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            assert_eq!(decode_all(&[a, b]), whole, "split at {at}");
        }
        for (at, to) in [(0, 13), (5, 40), (11, 12), (30, 200)] {
            let at = at.min(stream.len());
            let to = to.min(stream.len());
            let pieces = [&stream[..at], &stream[at..to], &stream[to..]];
            assert_eq!(decode_all(&pieces), whole, "split at {at} and {to}");
        }
        let single: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_all(&single), whole);
        // A message not yet whole is held back, not an error.
        assert!(decode_all(&[&stream[..stream.len() - 1]]).iter().all(Result::is_ok));
        assert_eq!(decode_all(&[&stream[..stream.len() - 1]]).len(), 3);
    }

    #[test]
    fn a_bad_checksum_is_an_error_and_stops_the_decoder() {
        let good = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        // A payload byte flipped: the message CRC.
        let mut bad = good.clone();
        let at = bad.len() - 6;
        bad[at] ^= 0x20;
        let mut decoder = EventStreamDecoder::default();
        let got = decoder.feed(&[good.clone(), bad, good.clone()].concat());
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert!(matches!(got[1], Err(DecodeError::MessageCrc { .. })), "{got:?}");
        assert!(decoder.feed(&good).is_empty(), "nothing after an error");
        // A length byte flipped: the prelude CRC, found before waiting for the message.
        let mut bad = good.clone();
        bad[3] ^= 0x01;
        let got = decode_all(&[&bad[..12]]);
        assert!(matches!(got[..], [Err(DecodeError::PreludeCrc { .. })]), "{got:?}");
        assert!(got[0].as_ref().unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn oversized_and_impossible_lengths_are_errors() {
        let prelude = |total: u32, headers: u32| {
            let mut bytes = [total.to_be_bytes(), headers.to_be_bytes()].concat();
            let crc = crc32fast::hash(&bytes);
            bytes.extend_from_slice(&crc.to_be_bytes());
            bytes
        };
        let over = u32::try_from(MAX_MESSAGE_BYTES + 1).unwrap();
        let got = decode_all(&[&prelude(over, 0)]);
        assert_eq!(got, [Err(DecodeError::TooLong { total: MAX_MESSAGE_BYTES + 1 })]);
        assert!(got[0].as_ref().unwrap_err().to_string().contains("16777216"));
        let got = decode_all(&[&prelude(u32::MAX, 0)]);
        assert!(matches!(got[..], [Err(DecodeError::TooLong { .. })]));
        // Exactly the limit is allowed (and waited for).
        assert!(decode_all(&[&prelude(MAX_MESSAGE_BYTES as u32, 0)]).is_empty());
        assert_eq!(decode_all(&[&prelude(15, 0)]), [Err(DecodeError::BadLength { total: 15, headers: 0 })]);
        assert_eq!(decode_all(&[&prelude(20, 5)]), [Err(DecodeError::BadLength { total: 20, headers: 5 })]);
    }

    #[test]
    fn malformed_headers_are_errors() {
        for (headers, detail) in [
            (&b"\x05:abc"[..], "runs past"),
            (b"\x02:a\x07\x00\x09abc", "runs past"),
            (b"\x02:a\x0a", "unknown value type"),
            (b"\x02\xff\xfe\x07\x00\x00", "name is not UTF-8"),
            (b"\x02:a\x07\x00\x01\xff", "string header is not UTF-8"),
            (b"\x02:a\x09\x00", "runs past"),
        ] {
            let got = decode_all(&[&encode_raw(headers, b"{}")]);
            assert!(matches!(&got[..], [Err(DecodeError::BadHeaders { detail: d })] if d.contains(detail)), "{got:?}");
        }
    }
}
