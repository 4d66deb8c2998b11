//! A streaming Server-Sent Events scanner for LLM responses.
//!
//! It sees the response chunk by chunk as it passes through the proxy — chunks split at any
//! byte, inside an event, a line, a UTF-8 character or a CRLF — and keeps only the current
//! incomplete event. From the events it takes the provider's usage, counts the output text
//! delivered (for estimates when a stream is cut), notices the end of the stream, and, when
//! the gateway injected `stream_options.include_usage` itself, removes the usage chunk the
//! client did not ask for.
//!
//! Events that lie whole inside one chunk are parsed in place (no copy); only an event split
//! across chunks is gathered in a buffer, bounded by [`MAX_EVENT_BYTES`]. JSON payloads are read
//! with field-selective structs that measure strings without allocating them and sum arrays
//! without collecting them, and that tolerate unexpected types in the text fields.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::usage::{ApiFormat, RawUsage, Usage};

/// An event bigger than this (terminator included) is not parsed; it is still forwarded
/// untouched, and the scanner never buffers more than this of it.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Above this, the buffer of a split event is released once the event is done.
const KEEP_BUFFER_CAPACITY: usize = 64 << 10;

/// What the proxy should send downstream for the chunk it just fed.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward {
    /// Send the chunk exactly as received (the common case; no copy).
    Unchanged,
    /// Replace the chunk with these bytes (possibly empty: hold everything back for now).
    Replace(Vec<u8>),
}

/// Scans one SSE response; see the module documentation.
#[derive(Debug)]
pub struct SseUsageScanner {
    format: ApiFormat,
    /// Remove the OpenAI usage-only chunk (never true for Anthropic).
    strip: bool,
    /// Bytes of the current event that arrived in earlier chunks. In strip mode they are also
    /// the bytes held back from the client until the event completes. Never above
    /// [`MAX_EVENT_BYTES`].
    pending: Vec<u8>,
    /// The current event outgrew [`MAX_EVENT_BYTES`]: its bytes pass through unparsed until
    /// it ends.
    oversized: bool,
    /// The current line has a byte that is not a line terminator.
    in_line: bool,
    /// The last byte seen was `\r`: a `\n` right after it is the same line terminator.
    prev_cr: bool,
    /// The last chunk ended with the `\r` that ended an event; if the next chunk starts with
    /// `\n`, that byte completes the event's `\r\n` and goes where the event went:
    /// `Some(true)` forwarded, `Some(false)` removed.
    cr_tail: Option<bool>,
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
            pending: Vec::new(),
            oversized: false,
            in_line: false,
            prev_cr: false,
            cr_tail: None,
            usage: None,
            delivered_text_bytes: 0,
            completed: false,
            malformed: false,
        }
    }

    /// Feeds the next body chunk; `end_of_stream` is true for the last one (possibly empty).
    ///
    /// Without strip mode this always returns [`Forward::Unchanged`]. In strip mode every
    /// complete event goes out at once, except the usage-only chunk, which is removed; an
    /// incomplete trailing event is held back until it completes or the stream ends.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Forward {
        let mut out = Output::new(self.strip);
        let mut pos = 0usize;

        // The `\n` of a `\r\n` that ended the previous chunk's last event belongs to that event.
        // (`take` only once a byte is there: empty chunks change nothing.)
        if let Some(&first) = chunk.first()
            && let Some(kept) = self.cr_tail.take()
            && first == b'\n'
        {
            self.prev_cr = false;
            pos = 1;
            if kept {
                out.keep(chunk, 0, 1);
            }
        }

        // Complete events.
        while let Some(rest) = chunk.get(pos..).filter(|r| !r.is_empty()) {
            let Some(len) = self.find_event_end(rest) else {
                break;
            };
            let size = self.pending.len().saturating_add(len);
            let mut end = pos.saturating_add(len);
            if self.prev_cr && chunk.get(end) == Some(&b'\n') {
                end = end.saturating_add(1);
                self.prev_cr = false;
            }
            let own = chunk.get(pos..end).unwrap_or_default();
            let kept = if self.oversized {
                self.oversized = false;
                out.keep(chunk, pos, end);
                true
            } else if size > MAX_EVENT_BYTES {
                self.malformed = true;
                out.extra(chunk, &self.pending);
                self.pending.clear();
                out.keep(chunk, pos, end);
                true
            } else if self.pending.is_empty() {
                let kept = self.process_event(own);
                if kept {
                    out.keep(chunk, pos, end);
                }
                kept
            } else {
                let mut event = std::mem::take(&mut self.pending);
                event.extend_from_slice(own);
                let kept = self.process_event(&event);
                if kept {
                    out.extra(chunk, &event);
                }
                event.clear();
                if event.capacity() <= KEEP_BUFFER_CAPACITY {
                    self.pending = event;
                }
                kept
            };
            if self.prev_cr && end == chunk.len() {
                self.cr_tail = Some(kept);
            }
            pos = end;
        }

        // The incomplete tail of the current event.
        let tail_start = pos.min(chunk.len());
        let tail = chunk.get(tail_start..).unwrap_or_default();
        if self.oversized {
            out.keep(chunk, tail_start, chunk.len());
        } else if self.pending.len().saturating_add(tail.len()) > MAX_EVENT_BYTES {
            // Too big to hold: stop parsing this event and let it through.
            self.malformed = true;
            self.oversized = true;
            out.extra(chunk, &self.pending);
            self.pending = Vec::new();
            out.keep(chunk, tail_start, chunk.len());
        } else if end_of_stream {
            // An unterminated last event: parse what there is and forward it as it is (unless
            // it is the usage chunk to remove).
            if self.pending.is_empty() {
                if !tail.is_empty() && self.process_event(tail) {
                    out.keep(chunk, tail_start, chunk.len());
                }
            } else {
                let mut event = std::mem::take(&mut self.pending);
                event.extend_from_slice(tail);
                if self.process_event(&event) {
                    out.extra(chunk, &event);
                }
            }
        } else {
            self.pending.extend_from_slice(tail);
        }

        if end_of_stream {
            self.pending = Vec::new();
            self.oversized = false;
            self.in_line = false;
            self.prev_cr = false;
            self.cr_tail = None;
        }
        out.finish(chunk)
    }

    /// Advances the line state over `bytes`; returns the length up to and including the line
    /// terminator of the blank line that ends the current event, if `bytes` has it.
    fn find_event_end(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0usize;
        loop {
            if self.in_line {
                // Skip the rest of a line in one search.
                let rest = bytes.get(i..)?;
                i = i.saturating_add(memchr::memchr2(b'\n', b'\r', rest)?);
            }
            let &b = bytes.get(i)?;
            i = i.saturating_add(1);
            if !is_eol(b) {
                self.in_line = true;
                self.prev_cr = false;
            } else if b == b'\n' && self.prev_cr {
                // The second half of a `\r\n`.
                self.prev_cr = false;
            } else {
                self.prev_cr = b == b'\r';
                if !self.in_line {
                    return Some(i);
                }
                self.in_line = false;
            }
        }
    }

    /// Parses one event (its raw bytes, terminator included); returns false if it must be
    /// removed from the stream.
    fn process_event(&mut self, event: &[u8]) -> bool {
        let mut name: &[u8] = b"";
        let mut first: Option<&[u8]> = None;
        let mut joined: Option<Vec<u8>> = None;
        // The event's lines, as `split(is_eol)` would cut them, found with memchr.
        let mut start = 0;
        let ends = memchr::memchr2_iter(b'\n', b'\r', event).chain(std::iter::once(event.len()));
        for end in ends {
            let line = event.get(start..end).unwrap_or_default();
            start = end.saturating_add(1);
            let Some((field, value)) = parse_field(line) else {
                continue;
            };
            match field {
                b"data" => match (&mut joined, first) {
                    (Some(data), _) => {
                        data.push(b'\n');
                        data.extend_from_slice(value);
                    }
                    (None, Some(previous)) => {
                        let mut data = Vec::with_capacity(previous.len().saturating_add(value.len()).saturating_add(1));
                        data.extend_from_slice(previous);
                        data.push(b'\n');
                        data.extend_from_slice(value);
                        joined = Some(data);
                    }
                    (None, None) => first = Some(value),
                },
                b"event" => name = value,
                _ => {}
            }
        }
        let Some(data) = joined.as_deref().or(first) else {
            return true; // comments, `event:`-only or empty events pass untouched
        };
        if data.trim_ascii().is_empty() {
            return true; // an empty `data:` keep-alive
        }
        match self.format {
            ApiFormat::OpenAi => self.openai_event(data),
            ApiFormat::Anthropic => {
                self.anthropic_event(data, name);
                true
            }
            ApiFormat::OpenAiResponses => {
                self.responses_event(data, name);
                true
            }
            // No client speaks Gemini or Bedrock: their streams are always translated.
            ApiFormat::Gemini | ApiFormat::Bedrock => true,
        }
    }

    /// OpenAI's Responses API: text in `response.output_text.delta`, usage in the final
    /// `response.completed` (or `response.incomplete`: cut short by a limit, but finished and
    /// billed); a `response.failed` carries usage if the provider billed any, but is no
    /// completion. There is no `[DONE]`.
    fn responses_event(&mut self, data: &[u8], name: &[u8]) {
        let Ok(event) = serde_json::from_slice::<ResponsesEvent>(data) else {
            self.malformed = true;
            return;
        };
        let kind = event.kind.unwrap_or(match name {
            b"response.output_text.delta" => ResponsesKind::OutputTextDelta,
            b"response.completed" => ResponsesKind::Completed,
            b"response.incomplete" => ResponsesKind::Incomplete,
            b"response.failed" => ResponsesKind::Failed,
            _ => ResponsesKind::Other,
        });
        match kind {
            ResponsesKind::OutputTextDelta => {
                self.delivered_text_bytes = self.delivered_text_bytes.saturating_add(event.delta.0);
            }
            ResponsesKind::Completed | ResponsesKind::Incomplete | ResponsesKind::Failed => {
                if let Some(usage) = event.response.and_then(|r| r.usage) {
                    self.usage = Some(usage);
                }
                self.completed = !matches!(kind, ResponsesKind::Failed);
            }
            ResponsesKind::Other => {}
        }
    }

    fn openai_event(&mut self, data: &[u8]) -> bool {
        if data.trim_ascii() == b"[DONE]" {
            self.completed = true;
            return true;
        }
        let whole = || serde_json::from_slice::<OpenAiChunk>(data).ok();
        let Some(chunk) = OpenAiChunk::scanned(data).or_else(whole) else {
            self.malformed = true;
            return true;
        };
        self.delivered_text_bytes = self.delivered_text_bytes.saturating_add(chunk.choices.text_bytes);
        let Some(usage) = chunk.usage else {
            return true;
        };
        self.usage = Some(usage);
        // The usage-only chunk (`"choices": []`) is the one the client did not ask for.
        !(self.strip && chunk.choices.is_array && chunk.choices.len == 0)
    }

    fn anthropic_event(&mut self, data: &[u8], name: &[u8]) {
        let Ok(event) = serde_json::from_slice::<AnthropicEvent>(data) else {
            self.malformed = true;
            return;
        };
        // The JSON `type` decides; the `event:` line only stands in when it is missing.
        let kind = event.kind.unwrap_or(match name {
            b"message_start" => AnthropicKind::MessageStart,
            b"message_delta" => AnthropicKind::MessageDelta,
            b"content_block_delta" => AnthropicKind::ContentBlockDelta,
            b"message_stop" => AnthropicKind::MessageStop,
            _ => AnthropicKind::Other,
        });
        match kind {
            AnthropicKind::MessageStart => {
                if let Some(usage) = event.message.and_then(|m| m.usage) {
                    self.usage = Some(usage);
                }
            }
            AnthropicKind::MessageDelta => {
                if let Some(later) = event.usage {
                    match &mut self.usage {
                        Some(usage) => usage.merge_from(later),
                        None => self.usage = Some(later),
                    }
                }
            }
            AnthropicKind::ContentBlockDelta => {
                if let Some(delta) = event.delta {
                    self.delivered_text_bytes = self.delivered_text_bytes.saturating_add(delta.text_bytes());
                }
            }
            AnthropicKind::MessageStop => self.completed = true,
            AnthropicKind::Other => {}
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

fn is_eol(b: u8) -> bool {
    b == b'\n' || b == b'\r'
}

/// Splits an SSE line into field name and value (one leading space removed); None for blank
/// lines and comments.
fn parse_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.is_empty() || line.first() == Some(&b':') {
        return None;
    }
    match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let field = line.get(..colon).unwrap_or_default();
            let value = line.get(colon.saturating_add(1)..).unwrap_or_default();
            Some((field, value.strip_prefix(b" ").unwrap_or(value)))
        }
        None => Some((line, b"")),
    }
}

/// What a feed sends downstream in strip mode: the chunk itself for as long as the output is
/// a prefix of it, a buffer from the first difference on.
struct Output {
    enabled: bool,
    /// The output so far is `chunk[..same_upto]` (while `buf` is unused).
    same_upto: usize,
    diverged: bool,
    buf: Vec<u8>,
}

impl Output {
    fn new(enabled: bool) -> Self {
        Self { enabled, same_upto: 0, diverged: false, buf: Vec::new() }
    }

    /// `chunk[from..to]` goes downstream next.
    fn keep(&mut self, chunk: &[u8], from: usize, to: usize) {
        if !self.enabled || from >= to {
            return;
        }
        if !self.diverged && from == self.same_upto {
            self.same_upto = to;
            return;
        }
        self.diverge(chunk, 0);
        self.buf.extend_from_slice(chunk.get(from..to).unwrap_or_default());
    }

    /// Bytes that are not (only) this chunk's go downstream next.
    fn extra(&mut self, chunk: &[u8], bytes: &[u8]) {
        if !self.enabled || bytes.is_empty() {
            return;
        }
        self.diverge(chunk, bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    fn diverge(&mut self, chunk: &[u8], more: usize) {
        if !self.diverged {
            self.diverged = true;
            self.buf.reserve(chunk.len().saturating_add(more));
            self.buf.extend_from_slice(chunk.get(..self.same_upto).unwrap_or_default());
        }
    }

    fn finish(self, chunk: &[u8]) -> Forward {
        if !self.enabled {
            return Forward::Unchanged;
        }
        if self.diverged {
            if self.buf == chunk { Forward::Unchanged } else { Forward::Replace(self.buf) }
        } else if self.same_upto >= chunk.len() {
            Forward::Unchanged
        } else {
            // Only a trailing incomplete event is held back.
            Forward::Replace(chunk.get(..self.same_upto).unwrap_or_default().to_vec())
        }
    }
}

// ---- JSON shapes ----------------------------------------------------------------------------

/// Elements that carry output text.
trait TextBytes {
    fn text_bytes(&self) -> u64;
}

/// The UTF-8 length of a JSON string (escapes decoded); 0 for any other value, which is
/// skipped rather than failing the parse. Never allocates.
#[derive(Default)]
struct TextLen(u64);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextLenVisitor)
    }
}

struct TextLenVisitor;

impl<'de> Visitor<'de> for TextLenVisitor {
    type Value = TextLen;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, v: &str) -> Result<TextLen, E> {
        Ok(TextLen(u64::try_from(v.len()).unwrap_or(u64::MAX)))
    }

    fn visit_bool<E>(self, _: bool) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_i64<E>(self, _: i64) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_u64<E>(self, _: u64) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_f64<E>(self, _: f64) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_unit<E>(self) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_none<E>(self) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextLen, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TextLen(0))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextLen, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(TextLen(0))
    }
}

/// A JSON array of `T` reduced to its length and its elements' text bytes, never collected.
/// Absent or `null` gives `is_array: false`.
struct TextSeq<T> {
    is_array: bool,
    len: usize,
    text_bytes: u64,
    of: PhantomData<T>,
}

impl<T> Default for TextSeq<T> {
    fn default() -> Self {
        Self { is_array: false, len: 0, text_bytes: 0, of: PhantomData }
    }
}

impl<'de, T: Deserialize<'de> + TextBytes> Deserialize<'de> for TextSeq<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextSeqVisitor(PhantomData))
    }
}

struct TextSeqVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de> + TextBytes> Visitor<'de> for TextSeqVisitor<T> {
    type Value = TextSeq<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array or null")
    }

    fn visit_unit<E>(self) -> Result<TextSeq<T>, E> {
        Ok(TextSeq::default())
    }

    fn visit_none<E>(self) -> Result<TextSeq<T>, E> {
        Ok(TextSeq::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextSeq<T>, A::Error> {
        let mut out = TextSeq { is_array: true, ..TextSeq::default() };
        while let Some(item) = seq.next_element::<T>()? {
            out.len = out.len.saturating_add(1);
            out.text_bytes = out.text_bytes.saturating_add(item.text_bytes());
        }
        Ok(out)
    }
}

/// An OpenAI stream chunk: only what the scanner needs.
#[derive(Deserialize)]
struct OpenAiChunk {
    #[serde(default)]
    choices: TextSeq<OpenAiChoice>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

impl OpenAiChunk {
    /// The chunk read from its `choices` and `usage` alone, found by a structural scan
    /// (`json_scan`), so the members around them (`id`, `model`, …) are skipped, not parsed.
    /// None where the scan cannot follow the chunk or a member does not parse: the caller
    /// parses the whole chunk, as before, and gets serde's reading.
    fn scanned(data: &[u8]) -> Option<Self> {
        let [choices, usage] = crate::json_scan::top_level_members(data, ["choices", "usage"])?;
        Some(OpenAiChunk {
            choices: choices.map(serde_json::from_slice).transpose().ok()?.unwrap_or_default(),
            usage: usage.map(serde_json::from_slice).transpose().ok()?.flatten(),
        })
    }
}

#[derive(Deserialize)]
struct OpenAiChoice {
    #[serde(default)]
    delta: Option<OpenAiDelta>,
    /// Legacy completions stream `text` instead of `delta.content`.
    #[serde(default)]
    text: TextLen,
}

impl TextBytes for OpenAiChoice {
    fn text_bytes(&self) -> u64 {
        self.delta.as_ref().map_or(0, OpenAiDelta::text_bytes).saturating_add(self.text.0)
    }
}

#[derive(Deserialize)]
struct OpenAiDelta {
    #[serde(default)]
    content: TextLen,
    #[serde(default)]
    refusal: TextLen,
    /// Reasoning text of OpenAI-compatible servers (DeepSeek, vLLM, OpenRouter); some send
    /// the same text under both names.
    #[serde(default)]
    reasoning_content: TextLen,
    #[serde(default)]
    reasoning: TextLen,
    #[serde(default)]
    tool_calls: TextSeq<OpenAiToolCall>,
}

impl TextBytes for OpenAiDelta {
    fn text_bytes(&self) -> u64 {
        self.content
            .0
            .saturating_add(self.refusal.0)
            .saturating_add(self.reasoning_content.0.max(self.reasoning.0))
            .saturating_add(self.tool_calls.text_bytes)
    }
}

#[derive(Deserialize)]
struct OpenAiToolCall {
    #[serde(default)]
    function: Option<OpenAiFunction>,
}

impl TextBytes for OpenAiToolCall {
    fn text_bytes(&self) -> u64 {
        self.function.as_ref().map_or(0, |f| f.arguments.0)
    }
}

#[derive(Deserialize)]
struct OpenAiFunction {
    #[serde(default)]
    arguments: TextLen,
}

/// A Responses API stream event: only what the scanner needs.
#[derive(Deserialize)]
struct ResponsesEvent {
    #[serde(rename = "type", default)]
    kind: Option<ResponsesKind>,
    /// `response.output_text.delta`'s text.
    #[serde(default)]
    delta: TextLen,
    /// The response object of `response.completed` / `incomplete` / `failed`.
    #[serde(default)]
    response: Option<ResponsesBody>,
}

#[derive(Deserialize, Clone, Copy)]
enum ResponsesKind {
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta,
    #[serde(rename = "response.completed")]
    Completed,
    #[serde(rename = "response.incomplete")]
    Incomplete,
    #[serde(rename = "response.failed")]
    Failed,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct ResponsesBody {
    #[serde(default)]
    usage: Option<RawUsage>,
}

/// An Anthropic stream event: only what the scanner needs.
#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type", default)]
    kind: Option<AnthropicKind>,
    #[serde(default)]
    message: Option<AnthropicMessage>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    delta: Option<AnthropicDelta>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum AnthropicKind {
    MessageStart,
    MessageDelta,
    ContentBlockDelta,
    MessageStop,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct AnthropicDelta {
    /// `text_delta`
    #[serde(default)]
    text: TextLen,
    /// `thinking_delta`
    #[serde(default)]
    thinking: TextLen,
    /// `input_json_delta` (tool input)
    #[serde(default)]
    partial_json: TextLen,
}

impl TextBytes for AnthropicDelta {
    fn text_bytes(&self) -> u64 {
        self.text.0.saturating_add(self.thinking.0).saturating_add(self.partial_json.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- fixtures ---------------------------------------------------------------------------

    const ROLE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#;
    const HEL: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],"usage":null}"#;
    const UTF8: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"héllo 🌍"},"finish_reason":null}],"usage":null}"#;
    /// Escapes: ` "ok"é` is 7 bytes once decoded.
    const ESCAPED: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":" \"ok\"\u00e9"},"finish_reason":null}],"usage":null}"#;
    const STOP: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#;
    const USAGE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
    const DONE: &str = "[DONE]";

    const OPENAI_TEXT: u64 = 3 + 11 + 7;

    /// The scanned reading of a chunk is the whole parse's wherever the scan answers.
    #[test]
    fn a_scanned_openai_chunk_reads_as_the_whole_chunk() {
        let read = |c: &OpenAiChunk| {
            (
                c.choices.is_array,
                c.choices.len,
                c.choices.text_bytes,
                c.usage.as_ref().map(|u| u.normalise(ApiFormat::OpenAi)),
            )
        };
        let tricky = [
            r#"{"choices":null,"usage":null}"#,
            r#"{"model":"say \"choices\":[]","choices":[{"delta":{"content":"ab"}},{"text":"cde"}]}"#,
            r#"{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":"many"}}"#,
            r#"{"choices":"none"}"#,
            r#"{"choices":[],"choices":[]}"#,
            r#"{"choices":[{"delta":{"content":"x"}}]"#,
        ];
        for data in [ROLE, HEL, UTF8, ESCAPED, STOP, USAGE].into_iter().chain(tricky) {
            let whole = serde_json::from_slice::<OpenAiChunk>(data.as_bytes()).ok();
            match OpenAiChunk::scanned(data.as_bytes()) {
                Some(scanned) => assert_eq!(Some(read(&scanned)), whole.as_ref().map(read), "{data}"),
                // Left to the whole parse: only where the scan cannot follow or a member fails.
                None => assert!(whole.is_none(), "{data}"),
            }
        }
        assert!(OpenAiChunk::scanned(USAGE.as_bytes()).is_some_and(|c| c.usage.is_some() && c.choices.len == 0));
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

    /// One SSE event of a test stream.
    #[derive(Clone)]
    struct Ev {
        lines: Vec<String>,
        /// The usage-only chunk strip mode removes.
        usage_chunk: bool,
        /// Text bytes it delivers.
        text: u64,
    }

    fn data(payload: &str, text: u64) -> Ev {
        Ev { lines: vec![format!("data: {payload}")], usage_chunk: payload == USAGE, text }
    }

    fn named(name: &str, payload: &str, text: u64) -> Ev {
        Ev { lines: vec![format!("event: {name}"), format!("data: {payload}")], usage_chunk: false, text }
    }

    fn openai_events() -> Vec<Ev> {
        vec![
            data(ROLE, 0),
            data(HEL, 3),
            data(UTF8, 11),
            data(ESCAPED, 7),
            data(STOP, 0),
            data(USAGE, 0),
            data(DONE, 0),
        ]
    }

    fn anthropic_events() -> Vec<Ev> {
        vec![
            named(
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":5,"cache_read_input_tokens":10,"cache_creation":{"ephemeral_5m_input_tokens":5,"ephemeral_1h_input_tokens":0},"output_tokens":1,"service_tier":"standard"}}}"#,
                0,
            ),
            named(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
                0,
            ),
            named("ping", r#"{"type": "ping"}"#, 0),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
                3,
            ),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}"#,
                0,
            ),
            named("content_block_stop", r#"{"type":"content_block_stop","index":0}"#, 0),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"héllo 🌍"}}"#,
                11,
            ),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Paris\"}"}}"#,
                17,
            ),
            named(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
                0,
            ),
            named("message_stop", r#"{"type":"message_stop"}"#, 0),
        ]
    }

    fn anthropic_usage() -> Usage {
        Usage {
            prompt_tokens: 40,
            cached_prompt_tokens: 10,
            cache_write_tokens: 5,
            completion_tokens: 15,
            reasoning_tokens: 0,
        }
    }

    /// Each event's raw bytes with `eol` line ends and a blank line after it.
    fn frame(events: &[Ev], eol: &str) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let mut raw = String::new();
                for line in &e.lines {
                    raw.push_str(line);
                    raw.push_str(eol);
                }
                raw.push_str(eol);
                raw
            })
            .collect()
    }

    #[derive(Debug, PartialEq)]
    struct Outcome {
        usage: Option<Usage>,
        text: u64,
        completed: bool,
        malformed: bool,
    }

    fn outcome(s: &SseUsageScanner) -> Outcome {
        Outcome {
            usage: s.reported_usage(),
            text: s.delivered_text_bytes(),
            completed: s.completed(),
            malformed: s.saw_malformed_event(),
        }
    }

    /// Feeds `pieces` (the last one with `end_of_stream`) and returns the bytes the client
    /// gets; checks that non-strip mode never replaces anything.
    fn run(s: &mut SseUsageScanner, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let eos = i + 1 == pieces.len();
            match s.feed(piece, eos) {
                Forward::Unchanged => out.extend_from_slice(piece),
                Forward::Replace(bytes) => {
                    assert!(s.strip, "non-strip mode replaced a chunk");
                    assert_ne!(&bytes[..], *piece, "Replace with the chunk itself");
                    out.extend_from_slice(&bytes);
                }
            }
        }
        out
    }

    /// What the client must have received, and the text delivered, once `p` bytes of the
    /// framed stream went in (not at end of stream): every complete event, no partial one.
    fn expected_after(framed: &[String], events: &[Ev], strip: bool, p: usize) -> (Vec<u8>, u64) {
        // Without strip mode every byte goes out at once.
        let mut out = if strip { Vec::new() } else { framed.concat().into_bytes()[..p].to_vec() };
        let mut text = 0;
        let mut start = 0;
        for (raw, ev) in framed.iter().zip(events) {
            let end = start + raw.len();
            // A `\r\n\r\n` event completes at its last `\r`; its `\n` follows the event.
            let complete_at = if raw.ends_with("\r\n\r\n") { end - 1 } else { end };
            if p < complete_at {
                break;
            }
            text += ev.text;
            if strip && !ev.usage_chunk {
                out.extend_from_slice(&raw.as_bytes()[..p.min(end) - start]);
            }
            start = end;
        }
        (out, text)
    }

    /// Feeds one stream split in every way worth trying and checks each gives the same output
    /// (the stream minus exactly the usage chunk in strip mode), usage and counts.
    fn check_every_split(format: ApiFormat, strip: bool, events: &[Ev], eol: &str, want: &Outcome) {
        let framed = frame(events, eol);
        let stream = framed.concat();
        let bytes = stream.as_bytes();
        let stripping = strip && format == ApiFormat::OpenAi;
        let expected: Vec<u8> = framed
            .iter()
            .zip(events)
            .filter(|(_, e)| !(stripping && e.usage_chunk))
            .flat_map(|(raw, _)| raw.bytes())
            .collect();
        let ctx = |how: &str| format!("{format:?} strip={strip} eol={eol:?} {how}");

        let mut s = SseUsageScanner::new(format, strip);
        assert_eq!(run(&mut s, &[bytes]), expected, "{}", ctx("whole"));
        assert_eq!(&outcome(&s), want, "{}", ctx("whole"));

        for p in 0..=bytes.len() {
            let (head, tail) = bytes.split_at(p);
            // Two pieces, the second one ending the stream.
            let mut s2 = SseUsageScanner::new(format, strip);
            let mut out = match s2.feed(head, false) {
                Forward::Unchanged => head.to_vec(),
                Forward::Replace(b) => b,
            };
            let (want_out, want_text) = expected_after(&framed, events, stripping, p);
            assert_eq!(out, want_out, "{}", ctx(&format!("after {p} bytes")));
            assert_eq!(s2.delivered_text_bytes(), want_text, "{}", ctx(&format!("text after {p}")));
            match s2.feed(tail, true) {
                Forward::Unchanged => out.extend_from_slice(tail),
                Forward::Replace(b) => out.extend_from_slice(&b),
            }
            assert_eq!(out, expected, "{}", ctx(&format!("split at {p}")));
            assert_eq!(&outcome(&s2), want, "{}", ctx(&format!("split at {p}")));

            // Three pieces: the end of stream arrives empty.
            let mut s = SseUsageScanner::new(format, strip);
            assert_eq!(run(&mut s, &[head, tail, b""]), expected, "{}", ctx(&format!("3 pieces at {p}")));
            assert_eq!(&outcome(&s), want, "{}", ctx(&format!("3 pieces at {p}")));
        }

        // One byte at a time, checking what went out after every byte.
        let mut s = SseUsageScanner::new(format, strip);
        let mut out = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            let piece = std::slice::from_ref(b);
            match s.feed(piece, false) {
                Forward::Unchanged => out.extend_from_slice(piece),
                Forward::Replace(r) => out.extend_from_slice(&r),
            }
            let (want_out, want_text) = expected_after(&framed, events, stripping, i + 1);
            assert_eq!(out, want_out, "{}", ctx(&format!("byte {i}")));
            assert_eq!(s.delivered_text_bytes(), want_text, "{}", ctx(&format!("byte {i}")));
        }
        assert_eq!(s.feed(b"", true), Forward::Unchanged);
        assert_eq!(out, expected, "{}", ctx("bytewise"));
        assert_eq!(&outcome(&s), want, "{}", ctx("bytewise"));

        // Pseudo-random chunk sizes.
        for seed in 1..=20u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut pieces = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = (x % 40) as usize + 1;
                let (a, b) = rest.split_at(n.min(rest.len()));
                pieces.push(a);
                rest = b;
            }
            let mut s = SseUsageScanner::new(format, strip);
            assert_eq!(run(&mut s, &pieces), expected, "{}", ctx(&format!("seed {seed}")));
            assert_eq!(&outcome(&s), want, "{}", ctx(&format!("seed {seed}")));
        }
    }

    // ---- split invariance -------------------------------------------------------------------

    #[test]
    fn openai_stream_at_every_split() {
        let want = Outcome { usage: Some(openai_usage()), text: OPENAI_TEXT, completed: true, malformed: false };
        for eol in ["\n", "\r\n", "\r"] {
            for strip in [false, true] {
                check_every_split(ApiFormat::OpenAi, strip, &openai_events(), eol, &want);
            }
        }
    }

    /// OpenAI's Responses API as it streams (abridged payloads, real shapes): text from the
    /// `output_text` deltas, usage from `response.completed`, no `[DONE]`.
    fn responses_events() -> Vec<Ev> {
        vec![
            named(
                "response.created",
                r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","output":[],"usage":null}}"#,
                0,
            ),
            named(
                "response.output_item.added",
                r#"{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"type":"message","id":"msg_1","status":"in_progress","role":"assistant","content":[]}}"#,
                0,
            ),
            named(
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hello"}"#,
                5,
            ),
            named(
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" w\u00f6rld"}"#,
                7,
            ),
            named(
                "response.output_text.done",
                r#"{"type":"response.output_text.done","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"text":"Hello wörld"}"#,
                0,
            ),
            named(
                "response.completed",
                r#"{"type":"response.completed","sequence_number":5,"response":{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"Hello wörld"}]}],"usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":10},"output_tokens":4,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":34}}}"#,
                0,
            ),
        ]
    }

    #[test]
    fn responses_stream_at_every_split() {
        let usage = Usage {
            prompt_tokens: 30,
            cached_prompt_tokens: 10,
            cache_write_tokens: 0,
            completion_tokens: 4,
            reasoning_tokens: 1,
        };
        let want = Outcome { usage: Some(usage), text: 12, completed: true, malformed: false };
        for eol in ["\n", "\r\n"] {
            check_every_split(ApiFormat::OpenAiResponses, false, &responses_events(), eol, &want);
        }
        // Cut before `response.completed`: text delivered, no usage, not complete.
        let mut events = responses_events();
        events.pop();
        let want = Outcome { usage: None, text: 12, completed: false, malformed: false };
        check_every_split(ApiFormat::OpenAiResponses, false, &events, "\n", &want);
    }

    #[test]
    fn anthropic_stream_at_every_split() {
        let want = Outcome { usage: Some(anthropic_usage()), text: 3 + 11 + 17, completed: true, malformed: false };
        for eol in ["\n", "\r\n"] {
            // The strip flag means nothing for Anthropic: nothing is ever held or removed.
            for strip in [false, true] {
                check_every_split(ApiFormat::Anthropic, strip, &anthropic_events(), eol, &want);
            }
        }
    }

    #[test]
    fn usage_chunk_first_and_last_at_every_split() {
        let want = Outcome { usage: Some(openai_usage()), text: 3, completed: false, malformed: false };
        let events = [data(USAGE, 0), data(HEL, 3)];
        check_every_split(ApiFormat::OpenAi, true, &events, "\r\n", &want);
        let events = [data(HEL, 3), data(USAGE, 0)];
        check_every_split(ApiFormat::OpenAi, true, &events, "\r\n", &want);
        check_every_split(ApiFormat::OpenAi, true, &events, "\n", &want);
    }

    #[test]
    fn anthropic_with_strip_flag_is_never_touched() {
        let stream = frame(&anthropic_events(), "\n").concat();
        let mut s = SseUsageScanner::new(ApiFormat::Anthropic, true);
        for piece in stream.as_bytes().chunks(5) {
            assert_eq!(s.feed(piece, false), Forward::Unchanged);
        }
        assert_eq!(s.feed(b"", true), Forward::Unchanged);
        assert!(s.completed());
    }

    #[test]
    fn non_strip_mode_is_always_unchanged_and_keeps_no_complete_event() {
        let stream = frame(&openai_events(), "\n").concat();
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, false);
        for piece in stream.as_bytes().chunks(7) {
            assert_eq!(s.feed(piece, false), Forward::Unchanged);
            assert!(s.pending.len() <= 7 + USAGE.len() + 8);
        }
        assert!(s.pending.is_empty());
        assert_eq!(s.feed(b"", true), Forward::Unchanged);
        assert_eq!(s.reported_usage(), Some(openai_usage()));
    }

    // ---- strip mode -------------------------------------------------------------------------

    fn sse(payloads: &[&str], eol: &str) -> Vec<u8> {
        payloads.iter().flat_map(|p| format!("data: {p}{eol}{eol}").into_bytes()).collect()
    }

    #[test]
    fn strip_whole_events_pass_unchanged_without_copy() {
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(s.feed(&sse(&[ROLE, HEL], "\n"), false), Forward::Unchanged);
        assert_eq!(s.feed(&sse(&[UTF8], "\r\n"), false), Forward::Unchanged);
        assert_eq!(s.feed(b": keep-alive\n\n", false), Forward::Unchanged);
        assert_eq!(s.feed(b"", false), Forward::Unchanged);
        assert_eq!(s.delivered_text_bytes(), 14);
    }

    #[test]
    fn strip_usage_chunk_alone_at_start_middle_and_end_of_a_chunk() {
        // Alone.
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(s.feed(&sse(&[USAGE], "\n"), false), Forward::Replace(vec![]));
        assert_eq!(s.reported_usage(), Some(openai_usage()));
        // At the start.
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(s.feed(&sse(&[USAGE, DONE], "\n"), true), Forward::Replace(sse(&[DONE], "\n")));
        assert!(s.completed());
        // In the middle.
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(
            s.feed(&sse(&[HEL, STOP, USAGE, DONE], "\n"), true),
            Forward::Replace(sse(&[HEL, STOP, DONE], "\n"))
        );
        assert_eq!(s.reported_usage(), Some(openai_usage()));
        // At the end.
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(s.feed(&sse(&[HEL, USAGE], "\n"), false), Forward::Replace(sse(&[HEL], "\n")));
        assert_eq!(s.feed(&sse(&[DONE], "\n"), true), Forward::Unchanged);
        // At the end, unterminated at the end of the stream: still removed.
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        let mut chunk = sse(&[HEL], "\n");
        chunk.extend_from_slice(format!("data: {USAGE}").as_bytes());
        assert_eq!(s.feed(&chunk, true), Forward::Replace(sse(&[HEL], "\n")));
        assert_eq!(s.reported_usage(), Some(openai_usage()));
    }

    #[test]
    fn strip_crlf_usage_chunk_whose_last_lf_comes_later() {
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        let usage = sse(&[USAGE], "\r\n");
        let (head, lf) = usage.split_at(usage.len() - 1);
        assert_eq!(s.feed(head, false), Forward::Replace(vec![]));
        let mut next = lf.to_vec();
        next.extend_from_slice(&sse(&[DONE], "\r\n"));
        assert_eq!(s.feed(&next, true), Forward::Replace(sse(&[DONE], "\r\n")));

        // A kept event's late `\n` is forwarded with the next chunk, and empty chunks in
        // between change nothing.
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        let hel = sse(&[HEL], "\r\n");
        let (head, lf) = hel.split_at(hel.len() - 1);
        assert_eq!(s.feed(head, false), Forward::Unchanged);
        assert_eq!(s.feed(b"", false), Forward::Unchanged);
        assert_eq!(s.feed(lf, false), Forward::Unchanged);
        assert_eq!(s.delivered_text_bytes(), 3);
    }

    #[test]
    fn strip_holds_a_split_event_and_sends_it_whole() {
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        let stream = sse(&[HEL, UTF8], "\n");
        let cut = sse(&[HEL], "\n").len() + 20;
        assert_eq!(s.feed(&stream[..cut], false), Forward::Replace(sse(&[HEL], "\n")));
        assert_eq!(s.feed(&stream[cut..cut + 5], false), Forward::Replace(vec![]));
        assert_eq!(s.feed(&stream[cut + 5..], false), Forward::Replace(sse(&[UTF8], "\n")));
        assert!(s.pending.is_empty());
    }

    #[test]
    fn usage_with_choices_is_recorded_but_never_stripped() {
        // vLLM-style continuous usage: usage on content chunks; the last one wins.
        let first = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8}}"#;
        let second = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#;
        let stream = sse(&[first, second, DONE], "\n");
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(s.feed(&stream, true), Forward::Unchanged);
        let u = s.reported_usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (7, 2));
        assert_eq!(s.delivered_text_bytes(), 3);
    }

    #[test]
    fn usage_without_a_choices_array_is_recorded_but_not_stripped() {
        let no_choices = r#"{"id":"c","usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let null_choices = r#"{"id":"c","choices":null,"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        for payload in [no_choices, null_choices] {
            let stream = sse(&[payload], "\n");
            let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
            assert_eq!(s.feed(&stream, true), Forward::Unchanged);
            assert_eq!(s.reported_usage().unwrap().completion_tokens, 4);
        }
    }

    #[test]
    fn client_asked_usage_chunk_is_kept() {
        let stream = sse(&[HEL, USAGE, DONE], "\n");
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, false);
        assert_eq!(s.feed(&stream, true), Forward::Unchanged);
        assert_eq!(s.reported_usage(), Some(openai_usage()));
    }

    // ---- framing ----------------------------------------------------------------------------

    #[test]
    fn multiple_data_lines_comments_and_other_fields() {
        let stream = ": OPENROUTER PROCESSING\n\n\
                      :comment inside\nevent: chunk\nid: 7\nretry: 1000\n\
                      data: {\"choices\":[{\"delta\":\n\
                      data:{\"content\":\"ab\"}}],\n\
                      data\n\
                      data: \"usage\":null}\n\n\
                      data:[DONE]\n\n";
        for strip in [false, true] {
            let mut s = SseUsageScanner::new(ApiFormat::OpenAi, strip);
            assert_eq!(run(&mut s, &[stream.as_bytes()]), stream.as_bytes());
            assert_eq!(s.delivered_text_bytes(), 2);
            assert!(s.completed() && !s.saw_malformed_event());
        }
        // Data lines join with `\n`, which JSON reads as whitespace between tokens only.
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, false);
        s.feed(b"data: {\"usage\":{\"prompt_tokens\":1\ndata: 2}}\n\n", false);
        assert!(s.saw_malformed_event(), "1\\n2 is not a number");
        assert_eq!(s.reported_usage(), None);
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, false);
        s.feed(b"data: {\"usage\":\ndata: {\"prompt_tokens\":1\ndata: 2}}\n\n", false);
        assert!(s.saw_malformed_event(), "the third line joins with `\\n` too");
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, false);
        s.feed(b"data: {\"usage\":\ndata: {\"prompt_tokens\":1,\ndata: \"completion_tokens\":2}}\n\n", false);
        assert_eq!(s.reported_usage().map(|u| u.total_tokens()), Some(3));

        // A usage chunk spread over data lines is still the usage chunk.
        let (a, b) = USAGE.split_at(USAGE.find("\"usage\"").unwrap());
        let stream = format!("data: {a}\r\ndata: {b}\r\n\r\ndata: [DONE]\r\n\r\n");
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(run(&mut s, &[stream.as_bytes()]), b"data: [DONE]\r\n\r\n".to_vec());
        assert_eq!(s.reported_usage(), Some(openai_usage()));
    }

    #[test]
    fn blank_lines_and_keep_alives_are_harmless() {
        let mut stream = b"\n\r\n".to_vec();
        stream.extend_from_slice(b"data:\n\ndata: \n\ndata:  \t\n\n");
        stream.extend_from_slice(&sse(&[HEL, USAGE, DONE], "\n"));
        for strip in [false, true] {
            let mut s = SseUsageScanner::new(ApiFormat::OpenAi, strip);
            let out = run(&mut s, &stream.chunks(3).collect::<Vec<_>>());
            let mut want = b"\n\r\ndata:\n\ndata: \n\ndata:  \t\n\n".to_vec();
            want.extend_from_slice(&sse(if strip { &[HEL, DONE][..] } else { &[HEL, USAGE, DONE][..] }, "\n"));
            assert_eq!(out, want);
            assert!(!s.saw_malformed_event());
            assert!(s.completed());
        }
    }

    // ---- payload parsing --------------------------------------------------------------------

    #[test]
    fn text_counts_decoded_utf8_bytes_of_every_text_field() {
        let completions = r#"{"id":"cmpl-1","object":"text_completion","choices":[{"text":"ab\n","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#;
        let tools = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"lo"}}]}}]}"#;
        let reasoning =
            r#"{"choices":[{"index":0,"delta":{"content":null,"reasoning_content":"think","reasoning":"think"}}]}"#;
        let two_choices =
            r#"{"choices":[{"index":0,"delta":{"content":"é"}},{"index":1,"delta":{"content":"\ud83c\udf0d"}}]}"#;
        let odd_types = r#"{"choices":[{"index":0,"delta":{"content":[{"type":"text","text":"x"}],"refusal":7}}]}"#;
        let stream = sse(&[completions, tools, reasoning, two_choices, odd_types], "\n");
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, false);
        s.feed(&stream, true);
        assert_eq!(s.delivered_text_bytes(), 3 + 4 + 5 + 2 + 4);
        assert!(!s.saw_malformed_event());
        assert!(!s.completed());
    }

    #[test]
    fn anthropic_type_field_decides_and_event_line_stands_in() {
        let stream = "event: ping\n\
                      data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"abc\"}}\n\n\
                      event: content_block_delta\n\
                      data: {\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"de\"}}\n\n\
                      event: message_stop\n\
                      data: {\"type\":\"ping\"}\n\n";
        let mut s = SseUsageScanner::new(ApiFormat::Anthropic, false);
        s.feed(stream.as_bytes(), false);
        assert_eq!(s.delivered_text_bytes(), 5);
        assert!(!s.completed(), "the JSON said ping");
        s.feed(b"data: {\"type\":\"message_stop\"}\n\n", true);
        assert!(s.completed(), "no event line needed");
    }

    #[test]
    fn anthropic_cumulative_message_delta_updates_input_and_cache() {
        let stream = concat!(
            "event: message_start\n",
            r#"data: {"type":"message_start","message":{"usage":{"input_tokens":100,"output_tokens":1}}}"#,
            "\n\nevent: message_delta\n",
            r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":120,"cache_creation_input_tokens":null,"cache_read_input_tokens":30,"output_tokens":44,"server_tool_use":{"web_search_requests":1}}}"#,
            "\n\n"
        );
        let mut s = SseUsageScanner::new(ApiFormat::Anthropic, false);
        s.feed(stream.as_bytes(), false);
        assert_eq!(
            s.reported_usage(),
            Some(Usage {
                prompt_tokens: 150,
                cached_prompt_tokens: 30,
                cache_write_tokens: 0,
                completion_tokens: 44,
                reasoning_tokens: 0
            })
        );
        assert!(!s.completed());
    }

    #[test]
    fn anthropic_error_event_is_not_completion() {
        let stream = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let mut s = SseUsageScanner::new(ApiFormat::Anthropic, false);
        assert_eq!(s.feed(stream.as_bytes(), true), Forward::Unchanged);
        assert!(!s.completed() && !s.saw_malformed_event());
        assert_eq!(s.reported_usage(), None);
    }

    // ---- cut and broken streams -------------------------------------------------------------

    #[test]
    fn truncated_openai_stream() {
        let stream = sse(&[ROLE, HEL, UTF8, ESCAPED], "\n");
        let cut = stream.len() - 30; // inside the last event
        for strip in [false, true] {
            let mut s = SseUsageScanner::new(ApiFormat::OpenAi, strip);
            let mut out = Vec::new();
            for piece in stream[..cut].chunks(11) {
                match s.feed(piece, false) {
                    Forward::Unchanged => out.extend_from_slice(piece),
                    Forward::Replace(r) => out.extend_from_slice(&r),
                }
            }
            assert!(!s.completed());
            assert_eq!(s.reported_usage(), None);
            assert_eq!(s.delivered_text_bytes(), 14, "only complete events count");
            if strip {
                assert_eq!(out, sse(&[ROLE, HEL, UTF8], "\n"), "the partial event is held");
            }
            // The stream then ends there: the partial event is forwarded as it is.
            match s.feed(b"", true) {
                Forward::Unchanged => {}
                Forward::Replace(r) => out.extend_from_slice(&r),
            }
            assert_eq!(out, &stream[..cut]);
            assert_eq!(s.delivered_text_bytes(), 14);
            assert!(!s.completed());
        }
    }

    #[test]
    fn truncated_anthropic_stream_keeps_start_usage() {
        let framed = frame(&anthropic_events(), "\n");
        let upto_text = framed[..7].concat();
        let mut s = SseUsageScanner::new(ApiFormat::Anthropic, false);
        s.feed(upto_text.as_bytes(), false);
        s.feed(&framed[7].as_bytes()[..20], false);
        let u = s.reported_usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (40, 1));
        assert_eq!(s.delivered_text_bytes(), 14);
        assert!(!s.completed());
    }

    #[test]
    fn unterminated_last_event_is_parsed_and_flushed() {
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        let mut out = run(&mut s, &[b"data: [DO", b"NE]"]);
        assert_eq!(out, b"data: [DONE]");
        assert!(s.completed());
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        out = run(&mut s, &[b"data: [DONE]\r"]);
        assert_eq!(out, b"data: [DONE]\r");
        assert!(s.completed());
    }

    #[test]
    fn malformed_events_are_flagged_and_forwarded() {
        let mut stream = b"data: {not json\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]\n\n".to_vec();
        stream.extend_from_slice(&sse(&[UTF8, USAGE, DONE], "\n"));
        let mut want = b"data: {not json\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]\n\n".to_vec();
        want.extend_from_slice(&sse(&[UTF8, DONE], "\n"));
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        assert_eq!(run(&mut s, &stream.chunks(13).collect::<Vec<_>>()), want);
        assert!(s.saw_malformed_event());
        assert_eq!(s.reported_usage(), Some(openai_usage()));
        assert_eq!(s.delivered_text_bytes(), 11);
        assert!(s.completed());

        // Invalid UTF-8, a bad usage type, and an Anthropic event that is not JSON.
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, false);
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"\xff\"}}]}\n\n", false);
        assert!(s.saw_malformed_event());
        let mut s = SseUsageScanner::new(ApiFormat::OpenAi, true);
        let bad = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":\"12\"}}\n\n";
        assert_eq!(s.feed(bad, false), Forward::Unchanged, "not understood: kept");
        assert!(s.saw_malformed_event());
        assert_eq!(s.reported_usage(), None);
        let mut s = SseUsageScanner::new(ApiFormat::Anthropic, false);
        s.feed(b"event: message_stop\ndata: message_stop\n\n", true);
        assert!(s.saw_malformed_event());
        assert!(!s.completed());
    }

    // ---- the memory bound -------------------------------------------------------------------

    /// An OpenAI content chunk of exactly `size` bytes once framed with `\n\n`.
    fn padded_event(size: usize) -> Vec<u8> {
        let head = b"data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}],\"usage\":null";
        let mut ev = head.to_vec();
        ev.resize(size - 3, b' ');
        ev.extend_from_slice(b"}\n\n");
        ev
    }

    #[test]
    fn events_up_to_the_bound_are_parsed_bigger_ones_are_not() {
        for (size, parsed) in [(MAX_EVENT_BYTES, true), (MAX_EVENT_BYTES + 1, false)] {
            let mut stream = padded_event(size);
            stream.extend_from_slice(&sse(&[HEL, USAGE, DONE], "\n"));
            let mut want = padded_event(size);
            want.extend_from_slice(&sse(&[HEL, DONE], "\n"));
            for split in [0, 1, 1000, size - 3, size - 2, size - 1, size, size + 5] {
                for strip in [false, true] {
                    let mut s = SseUsageScanner::new(ApiFormat::OpenAi, strip);
                    let out = run(&mut s, &[&stream[..split], &stream[split..]]);
                    if strip {
                        assert_eq!(out, want, "size {size} split {split}");
                    }
                    assert_eq!(s.saw_malformed_event(), !parsed, "size {size} split {split}");
                    assert_eq!(s.delivered_text_bytes(), if parsed { 5 } else { 3 });
                    assert_eq!(s.reported_usage(), Some(openai_usage()));
                    assert!(s.completed());
                }
            }
        }
    }

    #[test]
    fn a_huge_event_is_never_buffered_whole() {
        let big = format!("data: {{\"x\":\"{}\"}}\n\n", "y".repeat(3 * MAX_EVENT_BYTES));
        let mut stream = big.clone().into_bytes();
        stream.extend_from_slice(&sse(&[UTF8, USAGE, DONE], "\n"));
        let mut want = big.into_bytes();
        want.extend_from_slice(&sse(&[UTF8, DONE], "\n"));
        for strip in [false, true] {
            let mut s = SseUsageScanner::new(ApiFormat::OpenAi, strip);
            let mut out = Vec::new();
            let mut held_at_most = 0;
            for piece in stream.chunks(64 << 10) {
                match s.feed(piece, false) {
                    Forward::Unchanged => out.extend_from_slice(piece),
                    Forward::Replace(r) => out.extend_from_slice(&r),
                }
                assert!(s.pending.len() <= MAX_EVENT_BYTES);
                held_at_most = held_at_most.max(s.pending.capacity());
            }
            assert_eq!(s.feed(b"", true), Forward::Unchanged);
            assert!(held_at_most <= 2 * MAX_EVENT_BYTES, "{held_at_most}");
            assert!(s.saw_malformed_event());
            assert_eq!(s.reported_usage(), Some(openai_usage()), "parsing resumes");
            assert_eq!(s.delivered_text_bytes(), 11);
            assert!(s.completed());
            if strip {
                assert_eq!(out, want);
            }
        }
    }

    #[test]
    fn a_stream_without_any_line_end_passes_through() {
        let blob = vec![b'z'; 2 * MAX_EVENT_BYTES + 17];
        for strip in [false, true] {
            let mut s = SseUsageScanner::new(ApiFormat::OpenAi, strip);
            let out = run(&mut s, &blob.chunks(100_000).collect::<Vec<_>>());
            assert_eq!(out, blob);
            assert!(s.saw_malformed_event());
            assert!(s.pending.capacity() <= MAX_EVENT_BYTES);
        }
    }
}
