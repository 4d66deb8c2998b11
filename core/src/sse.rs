//! A streaming Server-Sent Events scanner for LLM responses.
//!
//! It sees the response chunk by chunk as it passes through the proxy — chunks split at any
//! byte, inside an event, a line, a UTF-8 character or a CRLF — and keeps only the current
//! incomplete event. From the events it takes the provider's usage, counts the output text
//! delivered (for estimates when a stream is cut), notices the end of the stream, and, when
//! the gateway injected `stream_options.include_usage` itself, removes the usage chunk the
//! client did not ask for.

use std::borrow::Cow;

use serde::Deserialize;

use crate::usage::{ApiFormat, RawUsage, Usage};

/// An event bigger than this is not parsed (it is still forwarded untouched).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// What the proxy should send downstream for the chunk it just fed.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward {
    /// Send the chunk exactly as received (the common case; no copy).
    Unchanged,
    /// Replace the chunk with these bytes (possibly empty: hold everything back for now).
    Replace(Vec<u8>),
}

#[derive(Debug)]
pub struct SseUsageScanner {
    format: ApiFormat,
    strip: bool,
    /// Raw bytes of the current, incomplete event. In strip mode these are also the bytes
    /// held back from the client until the event is complete.
    event: Vec<u8>,
    /// Length of the current line so far (0 right after a line terminator).
    line_len: usize,
    /// The previous byte was `\r`: a following `\n` belongs to the same terminator.
    prev_cr: bool,
    /// The event in progress outgrew [`MAX_EVENT_BYTES`]: pass bytes through until it ends.
    oversized: bool,
    /// The last event ended in a bare `\r`; if `\n` follows it belongs to that event's
    /// terminator and goes where the event went: `Some(true)` forwarded, `Some(false)` removed.
    cr_ended_event: Option<bool>,
    usage: Option<RawUsage>,
    delivered_text_bytes: u64,
    completed: bool,
    malformed: bool,
}

impl SseUsageScanner {
    /// `strip_openai_usage_chunk`: the gateway added `stream_options.include_usage` itself, so
    /// the client did not ask for the usage chunk; remove it (and only it) before it reaches
    /// the client. Ignored for Anthropic streams.
    pub fn new(format: ApiFormat, strip_openai_usage_chunk: bool) -> Self {
        Self {
            format,
            strip: strip_openai_usage_chunk && format == ApiFormat::OpenAi,
            event: Vec::new(),
            line_len: 0,
            prev_cr: false,
            oversized: false,
            cr_ended_event: None,
            usage: None,
            delivered_text_bytes: 0,
            completed: false,
            malformed: false,
        }
    }

    /// Feeds the next body chunk; `end_of_stream` is true for the last one (possibly empty).
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Forward {
        // In strip mode the output is rebuilt; it equals the input unless bytes were held
        // back before or after this chunk, or an event was removed.
        let held_before = self.strip && !self.event.is_empty();
        let mut out = if self.strip {
            Vec::with_capacity(chunk.len() + self.event.len())
        } else {
            Vec::new()
        };
        let mut removed = false;
        for &b in chunk {
            if let Some(kept) = self.cr_ended_event.take() {
                if b == b'\n' {
                    self.prev_cr = false;
                    if !kept {
                        removed = true;
                    } else if self.strip {
                        out.push(b);
                    }
                    continue;
                }
            }
            if self.oversized {
                // Pass the rest of an oversized event through, watching for its end.
                if self.strip {
                    out.push(b);
                }
                if self.prev_cr && b == b'\n' {
                    self.prev_cr = false;
                } else if b == b'\n' || b == b'\r' {
                    self.prev_cr = b == b'\r';
                    self.oversized = self.line_len != 0;
                    self.line_len = 0;
                } else {
                    self.prev_cr = false;
                    self.line_len += 1;
                }
                continue;
            }
            if self.prev_cr && b == b'\n' {
                // Second half of a CRLF: part of the previous terminator.
                self.prev_cr = false;
                self.event.push(b);
                continue;
            }
            self.event.push(b);
            if b == b'\n' || b == b'\r' {
                self.prev_cr = b == b'\r';
                if self.line_len == 0 {
                    // A blank line: the event is complete.
                    let keep = self.finish_event();
                    if self.strip {
                        if keep {
                            out.extend_from_slice(&self.event);
                        } else {
                            removed = true;
                        }
                    }
                    if self.prev_cr {
                        self.cr_ended_event = Some(keep || !self.strip);
                    }
                    self.event.clear();
                }
                self.line_len = 0;
            } else {
                self.prev_cr = false;
                self.line_len += 1;
                if self.event.len() > MAX_EVENT_BYTES {
                    self.malformed = true;
                    self.oversized = true;
                    if self.strip {
                        out.extend_from_slice(&self.event);
                    }
                    self.event.clear();
                }
            }
        }
        if end_of_stream && !self.event.is_empty() {
            // An unterminated last event: parse what we can, forward it as it is.
            self.finish_event();
            if self.strip {
                out.extend_from_slice(&self.event);
            }
            self.event.clear();
        }
        let held_after = self.strip && !self.event.is_empty();
        if !self.strip || !(held_before || held_after || removed) {
            return Forward::Unchanged;
        }
        Forward::Replace(out)
    }

    /// Parses the complete event in `self.event`; returns false if it must be removed.
    fn finish_event(&mut self) -> bool {
        let mut data: Vec<u8> = Vec::new();
        let mut lines = 0usize;
        for line in self.event.split(|b| *b == b'\n' || *b == b'\r') {
            if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                if lines > 0 {
                    data.push(b'\n');
                }
                data.extend_from_slice(rest);
                lines += 1;
            }
        }
        if lines == 0 {
            return true; // comments, `event:`-only or empty events pass untouched
        }
        match self.format {
            ApiFormat::OpenAi => self.openai_event(&data),
            ApiFormat::Anthropic => {
                self.anthropic_event(&data);
                true
            }
        }
    }

    fn openai_event(&mut self, data: &[u8]) -> bool {
        if data.trim_ascii() == b"[DONE]" {
            self.completed = true;
            return true;
        }
        let chunk: OpenAiChunk<'_> = match serde_json::from_slice(data) {
            Ok(c) => c,
            Err(_) => {
                self.malformed = true;
                return true;
            }
        };
        let choices = chunk.choices.unwrap_or_default();
        for choice in &choices {
            let text = choice
                .delta
                .as_ref()
                .and_then(|d| d.content.as_ref())
                .or(choice.text.as_ref());
            self.delivered_text_bytes = self
                .delivered_text_bytes
                .saturating_add(text.map_or(0, |t| t.len() as u64));
        }
        match chunk.usage {
            Some(usage) => {
                self.usage = Some(usage);
                // The usage-only chunk is the one the client did not ask for.
                !(self.strip && choices.is_empty())
            }
            None => true,
        }
    }

    fn anthropic_event(&mut self, data: &[u8]) {
        let event: AnthropicEvent<'_> = match serde_json::from_slice(data) {
            Ok(e) => e,
            Err(_) => {
                self.malformed = true;
                return;
            }
        };
        match event.kind.as_ref() {
            "message_start" => {
                if let Some(usage) = event.message.and_then(|m| m.usage) {
                    self.usage = Some(usage);
                }
            }
            "message_delta" => {
                if let Some(later) = event.usage {
                    match &mut self.usage {
                        Some(usage) => usage.merge_from(later),
                        None => self.usage = Some(later),
                    }
                }
            }
            "content_block_delta" => {
                let len = event.delta.map_or(0, |d| {
                    [d.text, d.thinking, d.partial_json]
                        .iter()
                        .flatten()
                        .map(|t| t.len() as u64)
                        .sum::<u64>()
                });
                self.delivered_text_bytes = self.delivered_text_bytes.saturating_add(len);
            }
            "message_stop" => self.completed = true,
            _ => {}
        }
    }

    /// Usage as reported by the provider so far (None if none seen).
    pub fn reported_usage(&self) -> Option<Usage> {
        self.usage.as_ref().map(|u| u.normalise(self.format))
    }

    /// Output text bytes delivered so far (content / text deltas), for estimates.
    pub fn delivered_text_bytes(&self) -> u64 {
        self.delivered_text_bytes
    }

    /// True once the stream finished cleanly: `[DONE]` (OpenAI) or `message_stop` (Anthropic).
    pub fn completed(&self) -> bool {
        self.completed
    }

    /// True if an event's data was not JSON (other than `[DONE]`) or outgrew the bound.
    pub fn saw_malformed_event(&self) -> bool {
        self.malformed
    }
}

#[derive(Deserialize)]
struct OpenAiChunk<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<OpenAiChoice<'a>>>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct OpenAiChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<OpenAiDelta<'a>>,
    /// Legacy completions stream `text` instead of `delta.content`.
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OpenAiDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    message: Option<AnthropicMessage>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(borrow, default)]
    delta: Option<AnthropicDelta<'a>>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#;
    const C2: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"héllo 🌍"},"finish_reason":null}],"usage":null}"#;
    const C3: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":" \"ok\""},"finish_reason":"stop"}],"usage":null}"#;
    const USAGE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;

    fn events(list: &[&str], eol: &str) -> String {
        list.iter()
            .map(|e| format!("data: {e}{eol}{eol}"))
            .collect()
    }

    fn openai_stream(eol: &str) -> String {
        events(&[C1, C2, C3, USAGE, "[DONE]"], eol)
    }

    fn anthropic_stream() -> String {
        [
            ("message_start", r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","usage":{"input_tokens":25,"output_tokens":1,"cache_creation_input_tokens":5,"cache_read_input_tokens":10}}}"#),
            ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
            ("ping", r#"{"type":"ping"}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"héllo 🌍"}}"#),
            ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
    }

    /// Feeds `pieces` and returns what the client would receive.
    fn run(scanner: &mut SseUsageScanner, pieces: &[&[u8]], complete: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let last = complete && i + 1 == pieces.len();
            match scanner.feed(piece, last) {
                Forward::Unchanged => out.extend_from_slice(piece),
                Forward::Replace(bytes) => out.extend_from_slice(&bytes),
            }
        }
        out
    }

    fn openai_usage() -> Usage {
        Usage {
            prompt_tokens: 12,
            cached_prompt_tokens: 4,
            cache_write_tokens: 0,
            completion_tokens: 5,
            reasoning_tokens: 2,
        }
    }

    #[test]
    fn every_two_piece_split_gives_the_same_result() {
        for eol in ["\n", "\r\n"] {
            let stream = openai_stream(eol);
            let bytes = stream.as_bytes();
            let expected_stripped = events(&[C1, C2, C3, "[DONE]"], eol);
            for split in 0..=bytes.len() {
                for strip in [false, true] {
                    let mut s = SseUsageScanner::new(ApiFormat::OpenAi, strip);
                    let out = run(&mut s, &[&bytes[..split], &bytes[split..]], true);
                    let want = if strip {
                        expected_stripped.as_bytes()
                    } else {
                        bytes
                    };
                    assert_eq!(out, want, "split {split} strip {strip} eol {eol:?}");
                    assert_eq!(s.reported_usage(), Some(openai_usage()));
                    assert_eq!(
                        s.delivered_text_bytes(),
                        ("héllo 🌍".len() + " \"ok\"".len()) as u64
                    );
                    assert!(s.completed() && !s.saw_malformed_event());
                }
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let stream = openai_stream("\n");
        let pieces: Vec<&[u8]> = stream.as_bytes().chunks(1).collect();
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(
            run(&mut s, &pieces, true),
            events(&[C1, C2, C3, "[DONE]"], "\n").as_bytes()
        );
        assert_eq!(s.reported_usage(), Some(openai_usage()));
        let anthropic = anthropic_stream();
        let pieces: Vec<&[u8]> = anthropic.as_bytes().chunks(1).collect();
        let mut s = SseUsageScanner::new(ApiFormat::Anthropic, true);
        assert_eq!(run(&mut s, &pieces, true), anthropic.as_bytes());
        assert!(s.completed());
    }

    #[test]
    fn anthropic_usage_from_start_and_delta_at_every_split() {
        let stream = anthropic_stream();
        let bytes = stream.as_bytes();
        for split in 0..=bytes.len() {
            let mut s = SseUsageScanner::new(ApiFormat::Anthropic, false);
            assert_eq!(
                run(&mut s, &[&bytes[..split], &bytes[split..]], true),
                bytes
            );
            let u = s.reported_usage().unwrap();
            assert_eq!(
                (
                    u.prompt_tokens,
                    u.cached_prompt_tokens,
                    u.cache_write_tokens,
                    u.completion_tokens
                ),
                (40, 10, 5, 15)
            );
            assert_eq!(s.delivered_text_bytes(), "héllo 🌍".len() as u64);
            assert!(s.completed());
        }
    }

    #[test]
    fn non_strip_mode_never_copies() {
        let stream = openai_stream("\n");
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, false);
        for piece in stream.as_bytes().chunks(7) {
            assert_eq!(s.feed(piece, false), Forward::Unchanged);
        }
        assert_eq!(s.feed(b"", true), Forward::Unchanged);
    }

    #[test]
    fn whole_events_in_a_chunk_pass_unchanged_in_strip_mode() {
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(
            s.feed(events(&[C1, C2], "\n").as_bytes(), false),
            Forward::Unchanged
        );
        // The usage chunk alone in a chunk, at the start, or in the middle.
        assert_eq!(
            s.feed(events(&[USAGE], "\n").as_bytes(), false),
            Forward::Replace(Vec::new())
        );
        let mixed = events(&[USAGE, "[DONE]"], "\n");
        assert_eq!(
            s.feed(mixed.as_bytes(), true),
            Forward::Replace(events(&["[DONE]"], "\n").into_bytes())
        );
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        let mid = events(&[C3, USAGE, "[DONE]"], "\n");
        assert_eq!(
            s.feed(mid.as_bytes(), true),
            Forward::Replace(events(&[C3, "[DONE]"], "\n").into_bytes())
        );
    }

    #[test]
    fn comments_multiline_data_and_event_lines() {
        let stream = format!(
            ": keep-alive\n\nevent: chunk\nid: 7\ndata: {{\"choices\":[{{\"delta\":{{\"content\":\"ab\"}}}}],\ndata: \"usage\":null}}\n\ndata: [DONE]\n\n"
        );
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(run(&mut s, &[stream.as_bytes()], true), stream.as_bytes());
        assert_eq!(s.delivered_text_bytes(), 2);
        assert!(s.completed() && !s.saw_malformed_event());
    }

    #[test]
    fn truncated_stream_counts_only_complete_events() {
        let stream = openai_stream("\n");
        let cut = stream.find(C3).unwrap() + 40; // inside the third event
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        let out = run(&mut s, &[&stream.as_bytes()[..cut]], false);
        assert_eq!(
            out,
            events(&[C1, C2], "\n").as_bytes(),
            "the partial event is still held"
        );
        assert!(!s.completed());
        assert_eq!(s.reported_usage(), None);
        assert_eq!(s.delivered_text_bytes(), "héllo 🌍".len() as u64);
    }

    #[test]
    fn malformed_events_are_flagged_and_forwarded() {
        let stream = format!(
            "data: {{not json\n\n{}",
            events(&[C2, USAGE, "[DONE]"], "\n")
        );
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        let out = run(&mut s, &[stream.as_bytes()], true);
        assert!(s.saw_malformed_event());
        assert_eq!(
            out,
            format!("data: {{not json\n\n{}", events(&[C2, "[DONE]"], "\n")).as_bytes()
        );
        assert_eq!(s.reported_usage(), Some(openai_usage()));
    }

    #[test]
    fn unterminated_last_event_is_flushed_at_end_of_stream() {
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        let out = run(&mut s, &[b"data: [DONE]"], true);
        assert_eq!(out, b"data: [DONE]");
        assert!(s.completed());
    }

    #[test]
    fn oversized_events_are_bounded_and_passed_through() {
        let big = format!("data: {}\n\n", "x".repeat(MAX_EVENT_BYTES + 10));
        let stream = format!("{big}{}", events(&[C2, USAGE, "[DONE]"], "\n"));
        for strip in [false, true] {
            let mut s = SseUsageScanner::new(ApiFormat::OpenAi, strip);
            let pieces: Vec<&[u8]> = stream.as_bytes().chunks(4096).collect();
            let out = run(&mut s, &pieces, true);
            assert!(s.saw_malformed_event());
            assert!(s.event.capacity() <= 2 * MAX_EVENT_BYTES);
            assert_eq!(
                s.reported_usage(),
                Some(openai_usage()),
                "parsing resumes after the big event"
            );
            if strip {
                assert_eq!(
                    out,
                    format!("{big}{}", events(&[C2, "[DONE]"], "\n")).as_bytes()
                );
            }
        }
    }

    #[test]
    fn a_client_asked_usage_chunk_is_kept() {
        let stream = openai_stream("\n");
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, false);
        assert_eq!(run(&mut s, &[stream.as_bytes()], true), stream.as_bytes());
    }
}
