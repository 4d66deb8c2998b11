//! Server-Sent Events split into events, chunk by chunk, for a translator that rewrites every
//! event (so, unlike `sse.rs`'s scanner, it may copy). Chunks split anywhere: inside a line, a
//! UTF-8 character or a CRLF. Lines end with `\n`, `\r\n` or `\r`; an empty line ends an event.

/// One event: its `event:` field and its `data:` lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// An event bigger than this is dropped whole (and counted): no provider sends one, and the
/// buffer must stay bounded whatever an upstream sends.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct SseEvents {
    /// The current line, without its terminator.
    line: Vec<u8>,
    /// The last byte was `\r`: a `\n` right after it ends nothing more.
    after_cr: bool,
    current: Event,
    has_fields: bool,
    /// The current event has a `data:` line already (even an empty one): the next joins with `\n`.
    has_data: bool,
    /// Bytes of the current event so far.
    event_bytes: usize,
    oversized: bool,
    /// Events dropped for their size.
    pub dropped: u64,
}

impl SseEvents {
    /// The events `chunk` completes, in order; at the end of the stream, also the event it was
    /// in the middle of (a provider that ends without the final blank line).
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<Event> {
        let mut events = Vec::new();
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    if let Some(event) = self.end_line() {
                        events.push(event);
                    }
                }
                _ => {
                    self.event_bytes = self.event_bytes.saturating_add(1);
                    if self.event_bytes > MAX_EVENT_BYTES {
                        self.oversized = true;
                        self.line.clear();
                    } else {
                        self.line.push(byte);
                    }
                }
            }
        }
        if end_of_stream {
            events.extend(self.finish());
        }
        events
    }

    /// Ends the current line, then the event (the line may have been its last field).
    fn finish(&mut self) -> Option<Event> {
        let event = self.end_line();
        if event.is_some() {
            return event;
        }
        self.end_line()
    }

    fn end_line(&mut self) -> Option<Event> {
        if self.line.is_empty() {
            // A blank line: the event is complete (if it has anything).
            let oversized = std::mem::take(&mut self.oversized);
            let had = std::mem::take(&mut self.has_fields);
            self.has_data = false;
            self.event_bytes = 0;
            let event = std::mem::take(&mut self.current);
            if oversized {
                self.dropped = self.dropped.saturating_add(1);
                return None;
            }
            return had.then_some(event);
        }
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => {
                self.current.event = value.to_owned();
                self.has_fields = true;
            }
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_fields = true;
                self.has_data = true;
            }
            // Comments (`:`), `id`, `retry` and unknown fields carry nothing to translate.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str =
        "event: message_start\r\ndata: {\"a\":1}\r\n\r\n: comment\n\nevent: ping\ndata: {}\n\ndata: x\ndata: y\n\n";

    fn all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut s = SseEvents::default();
        chunks.iter().flat_map(|c| s.feed(c, false)).collect()
    }

    #[test]
    fn events_are_the_same_however_the_stream_is_split() {
        let whole = all(&[STREAM.as_bytes()]);
        assert_eq!(
            whole,
            [
                Event { event: "message_start".into(), data: "{\"a\":1}".into() },
                Event { event: "ping".into(), data: "{}".into() },
                Event { event: String::new(), data: "x\ny".into() },
            ]
        );
        let bytes = STREAM.as_bytes();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(all(&[a, b]), whole, "split at {at}");
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(all(&single), whole);
    }

    #[test]
    fn an_oversized_event_is_dropped_and_the_next_one_read() {
        let mut s = SseEvents::default();
        let big = format!("data: {}\n\n", "x".repeat(MAX_EVENT_BYTES + 10));
        assert!(s.feed(big.as_bytes(), false).is_empty());
        assert_eq!(s.dropped, 1);
        assert_eq!(s.feed(b"data: ok\n\n", false), [Event { event: String::new(), data: "ok".into() }]);
    }

    #[test]
    fn a_stream_cut_before_its_blank_line_still_yields_its_last_event() {
        let mut s = SseEvents::default();
        assert!(s.feed(b"event: message_stop\ndata: {}", false).is_empty());
        assert_eq!(s.feed(b"", true), [Event { event: "message_stop".into(), data: "{}".into() }]);
    }
}
