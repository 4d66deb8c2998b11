//! `sluice_core::sse` and `sluice_core::usage`: the streaming SSE scanner (OpenAI and Anthropic)
//! and the usage of non-streaming responses.
//!
//! The strong property: however a stream is cut into chunks, the client receives the same
//! bytes and the gateway reads the same usage, text and state as from the stream in one chunk.
//! For generated streams an oracle also says what that result must be.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;
use sluice_core::sse::{Forward, MAX_EVENT_BYTES, SseUsageScanner};
use sluice_core::usage::{ApiFormat, Usage, parse_response_usage};

use crate::common::{config, heavy_config, hostile_bytes, json_value, split_at_points};

fn format() -> impl Strategy<Value = ApiFormat> {
    prop_oneof![Just(ApiFormat::OpenAi), Just(ApiFormat::Anthropic)]
}

#[derive(Debug, PartialEq)]
struct Outcome {
    delivered: Vec<u8>,
    usage: Option<Usage>,
    text: u64,
    completed: bool,
    malformed: bool,
}

/// Feeds `pieces` (end of stream with the last, or with one more empty chunk) and returns what
/// the client got and what the scanner read. Checks the `Forward` contract on the way: never
/// a replacement without strip mode, never a replacement equal to the chunk.
fn run(format: ApiFormat, strip: bool, pieces: &[&[u8]], empty_end: bool) -> Result<Outcome, TestCaseError> {
    let stripping = strip && format == ApiFormat::OpenAi;
    let mut s = SseUsageScanner::new(format, strip);
    let mut delivered = Vec::new();
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in pieces.iter().enumerate() {
        match s.feed(piece, i == last && !empty_end) {
            Forward::Unchanged => delivered.extend_from_slice(piece),
            Forward::Replace(bytes) => {
                prop_assert!(stripping, "replaced a chunk without strip mode");
                prop_assert_ne!(&bytes[..], *piece, "Replace with the chunk itself");
                delivered.extend_from_slice(&bytes);
            }
        }
    }
    if empty_end || pieces.is_empty() {
        match s.feed(b"", true) {
            Forward::Unchanged => {}
            Forward::Replace(bytes) => delivered.extend_from_slice(&bytes),
        }
    }
    Ok(Outcome {
        delivered,
        usage: s.reported_usage(),
        text: s.delivered_text_bytes(),
        completed: s.completed(),
        malformed: s.saw_malformed_event(),
    })
}

// ---- generated streams with an oracle -----------------------------------------------------------

/// One event of a generated stream and what it must do.
#[derive(Debug, Clone)]
struct Ev {
    lines: Vec<String>,
    eol: &'static str,
    /// Output text bytes it carries.
    text: u64,
    /// OpenAI: the usage it reports (replaces any earlier one).
    usage: Option<Usage>,
    /// Anthropic: `message_start` usage (replaces) or `message_delta` usage (merges).
    anthropic: Option<(bool, RawUsage)>,
    done: bool,
    malformed: bool,
    /// The OpenAI usage-only chunk (removed in strip mode).
    usage_chunk: bool,
}

impl Ev {
    fn new(lines: Vec<String>) -> Self {
        Ev {
            lines,
            eol: "\n",
            text: 0,
            usage: None,
            anthropic: None,
            done: false,
            malformed: false,
            usage_chunk: false,
        }
    }

    fn framed(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(line);
            out.push_str(self.eol);
        }
        out.push_str(self.eol);
        out
    }

    /// Byte length up to the end of the last line's content (no terminator).
    fn payload_len(&self) -> usize {
        let lines: usize = self.lines.iter().map(String::len).sum();
        lines + self.eol.len() * self.lines.len().saturating_sub(1)
    }
}

/// Anthropic's usage fields as the stream sends them.
#[derive(Debug, Clone, Copy, Default)]
struct RawUsage {
    input: Option<u64>,
    output: Option<u64>,
    cache_write: Option<u64>,
    cache_read: Option<u64>,
}

impl RawUsage {
    fn merge(&mut self, later: RawUsage) {
        self.input = later.input.or(self.input);
        self.output = later.output.or(self.output);
        self.cache_write = later.cache_write.or(self.cache_write);
        self.cache_read = later.cache_read.or(self.cache_read);
    }

    fn normalise(&self) -> Usage {
        let writes = self.cache_write.unwrap_or(0);
        let reads = self.cache_read.unwrap_or(0);
        Usage {
            prompt_tokens: self.input.unwrap_or(0).saturating_add(writes).saturating_add(reads),
            cached_prompt_tokens: reads,
            cache_write_tokens: writes,
            completion_tokens: self.output.unwrap_or(0),
            reasoning_tokens: 0,
        }
    }

    fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("input_tokens", self.input),
            ("output_tokens", self.output),
            ("cache_creation_input_tokens", self.cache_write),
            ("cache_read_input_tokens", self.cache_read),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v.into());
            }
        }
        m.into()
    }
}

/// Text for a content field: any Unicode (JSON-escaped on the wire, counted decoded).
fn content() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z ]{0,8}", crate::common::odd_string()]
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..100_000, any::<u64>()]
}

/// A comment or a field the scanner ignores (no line terminators inside).
fn noise() -> impl Strategy<Value = Ev> {
    prop_oneof![
        "[ -~]{0,20}".prop_map(|c| Ev::new(vec![format!(":{c}")])),
        Just(Ev::new(vec!["data:".into()])),
        Just(Ev::new(vec!["data: ".into()])),
        Just(Ev::new(vec!["id: 7".into(), "retry: 1000".into()])),
        "[a-z_]{1,12}".prop_map(|n| Ev::new(vec![format!("event: {n}")])),
    ]
}

/// Data not JSON (and not `[DONE]`): flagged, forwarded, otherwise ignored.
fn garbage() -> impl Strategy<Value = Ev> {
    "[ -~]{0,20}".prop_map(|g| Ev { malformed: true, ..Ev::new(vec![format!("data: {{not json {g}")]) })
}

fn openai_event() -> impl Strategy<Value = Ev> {
    let text_chunk = (content(), prop::sample::select(&["content", "refusal", "text"][..]), any::<bool>()).prop_map(
        |(text, field, two_lines)| {
            let payload = if field == "text" {
                json!({"id":"c","choices":[{"index":0,"text":text}],"usage":null})
            } else {
                json!({"id":"c","choices":[{"index":0,"delta":{field:text},"finish_reason":null}],"usage":null})
            };
            let payload = payload.to_string();
            // Data lines join with `\n`: a payload may be cut between two JSON tokens.
            let lines = match (two_lines, payload.find("\"choices\":")) {
                (true, Some(at)) => {
                    let (a, b) = payload.split_at(at + "\"choices\":".len());
                    vec![format!("data: {a}"), format!("data:{b}")]
                }
                _ => vec![format!("data: {payload}")],
            };
            Ev { text: text.len() as u64, ..Ev::new(lines) }
        },
    );
    let usage_chunk = (count(), count(), count(), count()).prop_map(|(p, c, cached, reasoning)| {
        let payload = json!({"id":"c","choices":[],"usage":{"prompt_tokens":p,"completion_tokens":c,
            "total_tokens":null,"prompt_tokens_details":{"cached_tokens":cached},
            "completion_tokens_details":{"reasoning_tokens":reasoning}}});
        Ev {
            usage: Some(Usage {
                prompt_tokens: p,
                cached_prompt_tokens: cached,
                cache_write_tokens: 0,
                completion_tokens: c,
                reasoning_tokens: reasoning,
            }),
            usage_chunk: true,
            ..Ev::new(vec![format!("data: {payload}")])
        }
    });
    prop_oneof![
        6 => text_chunk,
        2 => usage_chunk,
        1 => Just(Ev { done: true, ..Ev::new(vec!["data: [DONE]".into()]) }),
        2 => noise(),
        1 => garbage(),
    ]
}

fn raw_usage() -> impl Strategy<Value = RawUsage> {
    (prop::option::of(count()), prop::option::of(count()), prop::option::of(count()), prop::option::of(count()))
        .prop_map(|(input, output, cache_write, cache_read)| RawUsage { input, output, cache_write, cache_read })
}

fn anthropic_event() -> impl Strategy<Value = Ev> {
    let named = |name: &str, payload: serde_json::Value, with_name: bool| {
        let mut lines = Vec::new();
        if with_name {
            lines.push(format!("event: {name}"));
        }
        lines.push(format!("data: {payload}"));
        Ev::new(lines)
    };
    let start = (raw_usage(), any::<bool>()).prop_map(move |(u, with_name)| Ev {
        anthropic: Some((true, u)),
        ..named("message_start", json!({"type":"message_start","message":{"id":"m","usage":u.json()}}), with_name)
    });
    let delta = (raw_usage(), any::<bool>()).prop_map(move |(u, with_name)| Ev {
        anthropic: Some((false, u)),
        ..named(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":u.json()}),
            with_name,
        )
    });
    let text = (content(), prop::sample::select(&["text", "thinking", "partial_json"][..]), any::<bool>()).prop_map(
        move |(t, field, with_name)| Ev {
            text: t.len() as u64,
            ..named("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{field:t}}), with_name)
        },
    );
    let other = prop::sample::select(&["ping", "content_block_start", "content_block_stop", "error"][..])
        .prop_map(move |kind| named(kind, json!({"type":kind,"index":0}), true));
    prop_oneof![
        2 => start,
        2 => delta,
        5 => text,
        1 => any::<bool>().prop_map(move |n| Ev { done: true, ..named("message_stop", json!({"type":"message_stop"}), n) }),
        2 => other,
        2 => noise(),
        1 => garbage(),
    ]
}

/// A generated stream: events with their own line ends (`\n`, `\r\n` or `\r`).
fn stream(format: ApiFormat) -> BoxedStrategy<Vec<Ev>> {
    let event = match format {
        ApiFormat::OpenAi => openai_event().boxed(),
        ApiFormat::Anthropic => anthropic_event().boxed(),
        // `format()` does not generate it: the Responses stream is checked at every split by
        // the unit tests in sse.rs.
        ApiFormat::OpenAiResponses | ApiFormat::Gemini | ApiFormat::Bedrock => unreachable!("not generated"),
    };
    prop::collection::vec((event, prop::sample::select(&["\n", "\r\n", "\r"][..])), 0..12)
        .prop_map(|evs| evs.into_iter().map(|(e, eol)| Ev { eol, ..e }).collect())
        .boxed()
}

fn any_stream() -> impl Strategy<Value = (ApiFormat, Vec<Ev>)> {
    format().prop_flat_map(|f| (Just(f), stream(f)))
}

/// What the scanner must make of the first `upto` bytes of a stream that then ends: events
/// whose last line is complete are read, an event cut before that is forwarded unread.
fn oracle(format: ApiFormat, strip: bool, events: &[Ev], upto: usize) -> Outcome {
    let stripping = strip && format == ApiFormat::OpenAi;
    let mut out = Outcome { delivered: Vec::new(), usage: None, text: 0, completed: false, malformed: false };
    let mut anthropic: Option<RawUsage> = None;
    let mut start = 0;
    for e in events {
        if start >= upto {
            break;
        }
        let framed = e.framed();
        let end = start + framed.len();
        let have = &framed.as_bytes()[..upto.min(end) - start];
        if upto >= start + e.payload_len() {
            out.text += e.text;
            out.completed |= e.done;
            out.malformed |= e.malformed;
            if e.usage.is_some() {
                out.usage = e.usage;
            }
            match e.anthropic {
                Some((true, u)) => anthropic = Some(u),
                Some((false, u)) => anthropic.get_or_insert_with(RawUsage::default).merge(u),
                None => {}
            }
            if !(stripping && e.usage_chunk) {
                out.delivered.extend_from_slice(have);
            }
        } else {
            out.delivered.extend_from_slice(have);
            // The cut event is read at the end of the stream as far as it came. No prefix of a
            // generated payload is JSON (nor `[DONE]`): malformed unless no data came at all.
            let seen = String::from_utf8_lossy(have);
            let data: Vec<&str> = seen
                .split(['\n', '\r'])
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|v| v.strip_prefix(' ').unwrap_or(v))
                .collect();
            out.malformed |= !data.join("\n").trim_ascii().is_empty();
        }
        start = end;
    }
    if format == ApiFormat::Anthropic {
        out.usage = anthropic.map(|u| u.normalise());
    }
    out
}

fn frame(events: &[Ev]) -> Vec<u8> {
    events.iter().map(Ev::framed).collect::<String>().into_bytes()
}

proptest! {
    #![proptest_config(config(256))]

    /// Any bytes in any chunks: no panic, and the same result as in one chunk.
    #[test]
    fn any_bytes_any_split_same_as_one_chunk(
        format in format(),
        strip in any::<bool>(),
        bytes in prop_oneof![hostile_bytes(), sse_soup()],
        points in prop::collection::vec(any::<Index>(), 0..8),
        empty_end in any::<bool>(),
    ) {
        let whole = run(format, strip, &[&bytes], false)?;
        let split = run(format, strip, &split_at_points(&bytes, &points), empty_end)?;
        prop_assert_eq!(&split, &whole);
        if !(strip && format == ApiFormat::OpenAi) {
            prop_assert_eq!(&whole.delivered, &bytes);
        }
    }

    /// A generated stream in any chunks: exactly the usage, text, completion and output the
    /// events say (the usage-only chunk removed in strip mode, nothing else touched).
    #[test]
    fn a_stream_in_any_chunks_reads_exactly_its_events(
        (format, events) in any_stream(),
        strip in any::<bool>(),
        points in prop::collection::vec(any::<Index>(), 0..10),
        empty_end in any::<bool>(),
    ) {
        let bytes = frame(&events);
        let want = oracle(format, strip, &events, bytes.len());
        let whole = run(format, strip, &[&bytes], false)?;
        prop_assert_eq!(&whole, &want);
        let split = run(format, strip, &split_at_points(&bytes, &points), empty_end)?;
        prop_assert_eq!(&split, &want);
    }

    /// A stream cut anywhere (the upstream went away): what was complete is read, the cut
    /// event is forwarded as it is, nothing panics.
    #[test]
    fn a_truncated_stream_reads_what_was_complete(
        (format, events) in any_stream(),
        strip in any::<bool>(),
        cut in any::<Index>(),
        points in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let bytes = frame(&events);
        let upto = cut.index(bytes.len() + 1);
        let want = oracle(format, strip, &events, upto);
        let got = run(format, strip, &split_at_points(&bytes[..upto], &points), false)?;
        prop_assert_eq!(got, want);
    }

    /// A non-streaming response body: any bytes give a usage or none, never a panic.
    #[test]
    fn response_usage_of_any_bytes(format in format(), bytes in hostile_bytes(), value in json_value()) {
        let _ = parse_response_usage(format, &bytes);
        let _ = parse_response_usage(format, &serde_json::to_vec(&json!({"usage": value})).unwrap());
    }

    /// A response's usage reads the same whatever members surround it: the scan that finds it
    /// skips any JSON (strings with quotes, escapes and `usage` in them, nested `usage` keys,
    /// deep brackets) and agrees with the whole parse on what is there, malformed usage
    /// included.
    #[test]
    fn response_usage_is_the_same_among_any_members(
        format in prop_oneof![Just(ApiFormat::OpenAi), Just(ApiFormat::Anthropic), Just(ApiFormat::Bedrock)],
        others in crate::common::json_object(),
        usage in prop_oneof![
            json_value(),
            raw_usage().prop_map(|u| json!({"input_tokens":u.input,"output_tokens":u.output,"prompt_tokens":u.cache_read})),
        ],
        pretty in any::<bool>(),
    ) {
        let mut doc = others;
        for name in ["usage", "usageMetadata", "inputTextTokenCount"] {
            doc.remove(name);
        }
        doc.insert("usage".into(), usage.clone());
        let write = |v: &serde_json::Value| if pretty { serde_json::to_vec_pretty(v) } else { serde_json::to_vec(v) }.unwrap();
        let among_others = parse_response_usage(format, &write(&serde_json::Value::Object(doc)));
        let alone = parse_response_usage(format, &write(&json!({"usage": usage})));
        prop_assert_eq!(among_others, alone);
    }

    /// A response's usage object is read exactly, whatever the counts (up to u64::MAX).
    #[test]
    fn response_usage_reads_the_counts(u in raw_usage(), p in prop::option::of(count()), c in prop::option::of(count())) {
        let body = json!({"id":"x","usage":{"prompt_tokens":p,"completion_tokens":c,
            "input_tokens":u.input,"output_tokens":u.output,
            "cache_creation_input_tokens":u.cache_write,"cache_read_input_tokens":u.cache_read}});
        let bytes = serde_json::to_vec(&body).unwrap();
        prop_assert_eq!(parse_response_usage(ApiFormat::Anthropic, &bytes), Some(u.normalise()));
        let openai = parse_response_usage(ApiFormat::OpenAi, &bytes).unwrap();
        prop_assert_eq!((openai.prompt_tokens, openai.completion_tokens), (p.unwrap_or(0), c.unwrap_or(0)));
    }
}

proptest! {
    // Each case moves a megabyte around several times: fewer cases.
    #![proptest_config(heavy_config(16))]

    /// An event over the scanner's bound anywhere in a stream: forwarded untouched, flagged,
    /// never buffered whole, and the events around it read as usual.
    #[test]
    fn an_oversized_event_passes_and_parsing_resumes(
        (format, mut events) in any_stream(),
        at in any::<Index>(),
        extra in 0usize..64,
        points in prop::collection::vec(any::<Index>(), 0..4),
    ) {
        let big = Ev { malformed: true, ..Ev::new(vec![format!("data: {{\"x\":\"{}\"}}", "y".repeat(MAX_EVENT_BYTES + extra))]) };
        events.insert(at.index(events.len() + 1), big);
        let bytes = frame(&events);
        let want = oracle(format, true, &events, bytes.len());
        let got = run(format, true, &split_at_points(&bytes, &points), false)?;
        prop_assert_eq!(got.usage, want.usage);
        prop_assert_eq!(got.text, want.text);
        prop_assert_eq!(got.completed, want.completed);
        prop_assert!(got.malformed);
        prop_assert!(got.delivered == want.delivered, "output differs ({} vs {} bytes)", got.delivered.len(), want.delivered.len());
    }
}

/// Bytes that look like SSE: field names, terminators of every kind, payloads the scanner
/// reads, all run together in any order.
fn sse_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(
            &[
                "data:",
                "data: ",
                "event: ",
                "event: message_start",
                "event: message_stop",
                ":",
                "id: 1",
                "\n",
                "\r",
                "\r\n",
                "\n\n",
                "\r\n\r\n",
                "\r\r",
                "[DONE]",
                " [DONE] ",
                "{",
                "}",
                r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#,
                r#"{"choices":[{"delta":{"content":"hé"}}]}"#,
                r#"{"type":"message_start","message":{"usage":{"input_tokens":3}}}"#,
                r#"{"type":"message_delta","usage":{"output_tokens":9}}"#,
                r#"{"type":"content_block_delta","delta":{"text":"abc"}}"#,
                r#"{"type":"message_stop"}"#,
                "\u{feff}",
                "\u{0}",
            ][..],
        )
        .prop_map(|s: &str| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 1..3),
    ];
    prop::collection::vec(token, 0..30).prop_map(|t| t.concat())
}
