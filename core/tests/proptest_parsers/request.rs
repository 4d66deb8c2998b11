//! `sluice_core::request`: the request body scanner and its byte-splicing rewrite.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value};
use sluice_core::error::GatewayError;
use sluice_core::request::{LlmRequest, parse_request, rewrite_body};

use crate::common::{config, hostile_bytes, json_key, json_object, json_value, odd_string};

/// Members the scanner reads; the generated "other" members never use these names.
const SPECIAL: &[&str] = &["model", "stream", "stream_options", "max_tokens", "max_completion_tokens"];

/// JSON whitespace, including none.
const WS: &[&str] = &["", " ", "\n", "\r\n", "\t", "  "];

#[derive(Debug, Clone)]
enum StreamOptions {
    Absent,
    Null,
    /// `include_usage` as true / false / null / absent, plus other members.
    Object(Option<Value>, Map<String, Value>),
}

/// A request body built member by member, so whitespace, member order and the spelling of
/// `model` (plain or every character `\u`-escaped) vary too.
#[derive(Debug, Clone)]
struct Body {
    others: Vec<(String, Value)>,
    model: String,
    escape_model: bool,
    stream: Option<bool>,
    stream_options: StreamOptions,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    /// Where each present special member goes among the others.
    positions: Vec<Index>,
    ws: Vec<&'static str>,
}

/// Every character as `\uXXXX` (surrogate pairs above the BMP).
fn escape_all(s: &str) -> String {
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

impl Body {
    fn text(&self) -> String {
        let mut members: Vec<(String, String)> =
            self.others.iter().map(|(k, v)| (k.clone(), serde_json::to_string(v).unwrap())).collect();
        let model =
            if self.escape_model { escape_all(&self.model) } else { serde_json::to_string(&self.model).unwrap() };
        let mut special = vec![("model".to_owned(), model)];
        if let Some(s) = self.stream {
            special.push(("stream".into(), s.to_string()));
        }
        match &self.stream_options {
            StreamOptions::Absent => {}
            StreamOptions::Null => special.push(("stream_options".into(), "null".into())),
            StreamOptions::Object(include, extra) => {
                let mut obj = extra.clone();
                if let Some(v) = include {
                    obj.insert("include_usage".into(), v.clone());
                }
                special.push(("stream_options".into(), serde_json::to_string(&obj).unwrap()));
            }
        }
        if let Some(n) = self.max_tokens {
            special.push(("max_tokens".into(), n.to_string()));
        }
        if let Some(n) = self.max_completion_tokens {
            special.push(("max_completion_tokens".into(), n.to_string()));
        }
        for (member, at) in special.into_iter().zip(&self.positions) {
            let i = at.index(members.len() + 1);
            members.insert(i, member);
        }
        let mut n = 0;
        let mut ws = || {
            n += 1;
            self.ws[n % self.ws.len()]
        };
        let mut out = String::new();
        out.push_str(ws());
        out.push('{');
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(ws());
            out.push_str(&serde_json::to_string(k).unwrap());
            out.push_str(ws());
            out.push(':');
            out.push_str(ws());
            out.push_str(v);
            out.push_str(ws());
        }
        out.push_str(ws());
        out.push('}');
        out.push_str(ws());
        out
    }

    fn client_wants_usage(&self) -> bool {
        matches!(&self.stream_options, StreamOptions::Object(Some(Value::Bool(true)), _))
    }
}

fn model_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(&["gpt-4o", "claude-3-5-sonnet", "m", " ", "", "\u{a0}"][..]).prop_map(str::to_owned),
        6 => odd_string(),
    ]
}

/// A model name that is not blank (odd whitespace kept around a visible character).
fn nonblank_model() -> impl Strategy<Value = String> {
    model_name().prop_map(|m| if m.trim().is_empty() { format!("{m}x") } else { m })
}

fn body() -> impl Strategy<Value = Body> {
    body_with(model_name())
}

fn body_with(model: impl Strategy<Value = String>) -> impl Strategy<Value = Body> {
    let others = prop::collection::vec(
        (json_key().prop_filter("not a member the scanner reads", |k| !SPECIAL.contains(&k.as_str())), json_value()),
        0..5,
    );
    let stream_options = prop_oneof![
        Just(StreamOptions::Absent),
        Just(StreamOptions::Null),
        (
            prop::option::of(prop::sample::select(vec![Value::Bool(true), Value::Bool(false), Value::Null])),
            json_object().prop_map(|mut m| {
                m.remove("include_usage");
                m
            }),
        )
            .prop_map(|(i, m)| StreamOptions::Object(i, m)),
    ];
    (
        others,
        model,
        any::<bool>(),
        prop::option::of(any::<bool>()),
        stream_options,
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
        prop::collection::vec(any::<Index>(), 5),
        prop::collection::vec(prop::sample::select(WS), 1..6),
    )
        .prop_map(
            |(
                others,
                model,
                escape_model,
                stream,
                stream_options,
                max_tokens,
                max_completion_tokens,
                positions,
                ws,
            )| {
                Body {
                    others,
                    model,
                    escape_model,
                    stream,
                    stream_options,
                    max_tokens,
                    max_completion_tokens,
                    positions,
                    ws,
                }
            },
        )
}

/// A refusal is a 400 with an OpenAI-shaped JSON error body.
fn assert_clean_400(err: &GatewayError) -> Result<(), TestCaseError> {
    prop_assert_eq!(err.status(), 400, "{:?}", err);
    let v: Value = serde_json::from_slice(&err.body()).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert_eq!(v["error"]["code"].as_str(), Some(err.code()));
    prop_assert!(v["error"]["message"].is_string());
    Ok(())
}

/// A rewrite of an accepted body is a body the scanner accepts again, with the new model.
fn check_rewrite(body: &[u8], req: &LlmRequest<'_>, upstream: &str, add: bool) -> Result<(), TestCaseError> {
    let Some(out) = rewrite_body(body, req, upstream, add) else {
        prop_assert!(req.model == upstream && (!add || req.client_wants_usage));
        return Ok(());
    };
    if upstream.trim().is_empty() {
        prop_assert!(matches!(parse_request(&out), Err(GatewayError::MissingModel)));
        return Ok(());
    }
    let again = parse_request(&out).map_err(|e| TestCaseError::fail(format!("rewrite refused: {e:?}")))?;
    prop_assert_eq!(again.model.as_ref(), upstream);
    prop_assert_eq!(again.stream, req.stream);
    prop_assert_eq!(again.max_output_tokens, req.max_output_tokens);
    prop_assert_eq!(again.client_wants_usage, req.client_wants_usage || add);
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes: a request or a clean 400, never a panic.
    #[test]
    fn any_bytes_parse_or_are_a_clean_400(bytes in hostile_bytes()) {
        match parse_request(&bytes) {
            Ok(req) => check_rewrite(&bytes, &req, "upstream-model", true)?,
            Err(e) => assert_clean_400(&e)?,
        }
    }

    /// Any JSON value as the body, and any value as `model`.
    #[test]
    fn any_json_parses_or_is_a_clean_400(value in json_value(), model in json_value()) {
        for body in [value.clone(), serde_json::json!({ "model": model, "other": value })] {
            let text = serde_json::to_vec(&body).unwrap();
            match parse_request(&text) {
                Ok(req) => {
                    prop_assert_eq!(Some(req.model.as_ref()), body.get("model").and_then(Value::as_str));
                    check_rewrite(&text, &req, "m2", true)?;
                }
                Err(e) => assert_clean_400(&e)?,
            }
        }
    }

    /// A well-formed body (odd whitespace, member order, unicode and escapes in `model`) reads
    /// back exactly what it says.
    #[test]
    fn a_valid_body_reads_back_its_fields(b in body()) {
        let text = b.text();
        let result = parse_request(text.as_bytes());
        if b.model.trim().is_empty() {
            prop_assert!(matches!(result, Err(GatewayError::MissingModel)), "{:?}", result);
            return Ok(());
        }
        let req = result.map_err(|e| TestCaseError::fail(format!("{e:?} for {text}")))?;
        prop_assert_eq!(req.model.as_ref(), b.model.as_str());
        prop_assert_eq!(req.stream, b.stream.unwrap_or(false));
        prop_assert_eq!(req.client_wants_usage, b.client_wants_usage());
        prop_assert_eq!(req.max_output_tokens, b.max_completion_tokens.or(b.max_tokens));
    }

    /// The rewrite of a valid body is valid JSON with the new model, `include_usage` where it
    /// was asked for, and every other member (and other members of `stream_options`) unchanged.
    #[test]
    fn a_rewrite_changes_only_model_and_stream_options(
        b in body_with(nonblank_model()),
        upstream in nonblank_model(),
        add in any::<bool>(),
    ) {
        let text = b.text();
        let req = parse_request(text.as_bytes()).unwrap();
        let Some(out) = rewrite_body(text.as_bytes(), &req, &upstream, add) else {
            prop_assert!(b.model == upstream && (!add || b.client_wants_usage()));
            return Ok(());
        };
        let before: Map<String, Value> = serde_json::from_str(&text).unwrap();
        let after: Map<String, Value> = serde_json::from_slice(&out)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
        prop_assert_eq!(&after["model"], &Value::String(upstream.clone()));
        let adds_usage = add && !b.client_wants_usage();
        for (k, v) in &before {
            if k == "model" || (k == "stream_options" && adds_usage) {
                continue;
            }
            prop_assert_eq!(after.get(k), Some(v), "member {:?} changed", k);
        }
        let new_members: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
        if adds_usage {
            let opts = after.get("stream_options").and_then(Value::as_object).unwrap();
            prop_assert_eq!(opts.get("include_usage"), Some(&Value::Bool(true)));
            if let Some(Value::Object(old)) = before.get("stream_options") {
                for (k, v) in old.iter().filter(|(k, _)| *k != "include_usage") {
                    prop_assert_eq!(opts.get(k), Some(v));
                }
                prop_assert_eq!(opts.len(), old.len() + usize::from(!old.contains_key("include_usage")));
            } else {
                prop_assert_eq!(opts.len(), 1);
            }
            prop_assert!(new_members.iter().all(|k| *k == "stream_options"));
        } else {
            prop_assert!(new_members.is_empty());
        }
        check_rewrite(text.as_bytes(), &req, &upstream, add)?;
    }

    /// Nesting thousands deep, wherever it is, is read without recursion trouble.
    #[test]
    fn deep_nesting_never_overflows(depth in 0usize..5000, place in 0u8..4, arrays in any::<bool>()) {
        let (open, close) = if arrays { ("[", "]") } else { ("{\"a\":", "}") };
        let nested = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let text = match place {
            0 => format!(r#"{{"model":"m","messages":{nested}}}"#),
            1 => format!(r#"{{"model":{nested}}}"#),
            2 => format!(r#"{{"model":"m","stream_options":{nested}}}"#),
            _ => format!(r#"{{"model":"m","max_tokens":{nested}}}"#),
        };
        match parse_request(text.as_bytes()) {
            Ok(req) => check_rewrite(text.as_bytes(), &req, "m2", true)?,
            Err(e) => assert_clean_400(&e)?,
        }
    }

    /// Numbers no integer or float holds: ignored where the scanner does not read them (and
    /// carried through a rewrite byte for byte), a clean 400 where it does.
    #[test]
    fn huge_numbers_are_carried_or_refused(
        number in prop_oneof![
            prop::sample::select(&["1e400", "-1e400", "1E+999999999999", "18446744073709551616",
                "-9223372036854775809", "0.0000000000000000000000000000000000001e-400"][..]).prop_map(str::to_owned),
            "-?[1-9][0-9]{20,60}(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,5})?",
        ],
        key in prop::sample::select(&["temperature", "max_tokens", "max_completion_tokens", "stream"][..]),
    ) {
        let text = format!(r#"{{"model":"m","{key}":{number},"stream":true}}"#);
        match parse_request(text.as_bytes()) {
            Ok(req) => {
                prop_assert_eq!(key, "temperature");
                let out = rewrite_body(text.as_bytes(), &req, "m2", true).unwrap();
                let out = String::from_utf8(out).unwrap();
                prop_assert!(out.contains(&format!("\"temperature\":{number}")), "{}", out);
                check_rewrite(text.as_bytes(), &req, "m2", true)?;
            }
            Err(e) => {
                prop_assert_ne!(key, "temperature");
                assert_clean_400(&e)?;
            }
        }
    }
}
