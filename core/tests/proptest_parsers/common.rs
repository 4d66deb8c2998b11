//! Shared strategies: case counts, odd strings, arbitrary JSON values and JSON-ish byte soups.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// A property's config: `cases` unless `PROPTEST_CASES` is set (then that, for every property).
/// No failure files: a failure prints its shrunk input, which becomes a plain unit test.
pub fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig { failure_persistence: None, ..ProptestConfig::default() };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// For a property whose cases are costly: `cases`, or a 256th of `PROPTEST_CASES`.
pub fn heavy_config(cases: u32) -> ProptestConfig {
    let mut config = config(cases);
    if std::env::var_os("PROPTEST_CASES").is_some() {
        config.cases = (config.cases / 256).max(1);
    }
    config
}

/// Characters that break naive string handling: NUL and controls, quotes and backslashes,
/// multi-byte UTF-8 (2, 3 and 4 bytes), BOM, bidi overrides, non-characters, Unicode spaces.
pub const ODD_CHARS: &[char] = &[
    'a',
    'Z',
    '0',
    ' ',
    '"',
    '\\',
    '/',
    '\n',
    '\r',
    '\t',
    '\u{0}',
    '\u{1}',
    '\u{1f}',
    '\u{7f}',
    'é',
    'ß',
    '\u{a0}',
    '\u{2028}',
    '\u{2029}',
    '\u{200b}',
    '\u{202e}',
    '\u{feff}',
    '\u{fffd}',
    '\u{ffff}',
    '中',
    '🌍',
    '\u{10ffff}',
    '\u{1f600}',
    '{',
    '}',
    '[',
    ']',
    ':',
    ',',
];

/// Strings of odd characters, or any Unicode at all.
pub fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(ODD_CHARS), 0..16).prop_map(|v| v.into_iter().collect()),
        any::<String>(),
        "[a-z0-9._-]{0,12}",
    ]
}

/// Object keys: the names the parsers look for (at any depth) and arbitrary ones.
pub fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "model",
                "stream",
                "stream_options",
                "include_usage",
                "messages",
                "content",
                "max_tokens",
                "usage",
                "choices",
                "delta",
                "text",
                "prompt_tokens",
                "completion_tokens",
                "type",
            ][..]
        )
        .prop_map(str::to_owned),
        odd_string(),
    ]
}

pub fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        odd_string().prop_map(Value::String),
    ]
}

/// Any JSON value, nested a few levels.
pub fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

pub fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((json_key(), json_value()), 0..6).prop_map(|kv| kv.into_iter().collect())
}

/// Bytes that look like JSON (and SSE) often enough to get past the first byte of a parser:
/// tokens, names the parsers look for, numbers too big for any integer type, deep brackets,
/// broken escapes and UTF-8, mixed with raw bytes.
pub fn json_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(
            &[
                "{",
                "}",
                "[",
                "]",
                ":",
                ",",
                "\"",
                "\"model\"",
                "\"stream\"",
                "\"stream_options\"",
                "\"include_usage\"",
                "\"max_tokens\"",
                "\"max_completion_tokens\"",
                "\"usage\"",
                "\"prompt_tokens\"",
                "\"choices\"",
                "true",
                "false",
                "null",
                "0",
                "-1",
                "1e400",
                "-0.0",
                "18446744073709551616",
                "99999999999999999999999999999",
                "1.5",
                "\"m\"",
                "\"\\u0000\"",
                "\"\\ud83c\\udf0d\"",
                "\"\\ud800\"",
                "\"\\u12\"",
                "\"\\x\"",
                " ",
                "\n",
                "\r\n",
                "\t",
                "\u{a0}",
                "\u{feff}",
                "[[[[[[[[",
                "]]]]]]]]",
                "{\"a\":{\"a\":{\"a\":",
                "}}}",
            ][..],
        )
        .prop_map(|s: &str| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 1..4),
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

/// Untrusted bytes: uniform garbage or JSON soup.
pub fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..256), json_soup()]
}

/// Splits `bytes` at the given points (sorted; repeats give empty pieces).
pub fn split_at_points<'a>(bytes: &'a [u8], points: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points.iter().map(|i| i.index(bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut at = 0;
    for cut in cuts {
        pieces.push(&bytes[at..cut]);
        at = cut;
    }
    pieces.push(&bytes[at..]);
    pieces
}
