//! Where a JSON object's top-level members lie, without building them: the hot path's reads of
//! a provider's answers, which want one or two members (a whole answer's `usage`, a stream
//! chunk's `choices` and `usage`) out of documents that are mostly the answer's text.
//!
//! The scan checks the document's structure (one object; every string closed; brackets
//! balanced, each closed by its own kind, at most [`MAX_DEPTH`] deep; nothing after it) and
//! skips strings with `memchr` (SIMD where the target has it) instead of decoding them, so an
//! answer's text costs a fraction of a byte-by-byte parse. It does not check the grammar
//! inside the spans it skips (numbers, escapes, literals): the caller parses the member it
//! wants with serde, which checks that member in full. Anything the scan does not expect (a
//! member name with an escape in it, a name twice, a structure it cannot follow) is `None`, and
//! the caller falls back to a full parse, so what is found is what serde would find.

/// Nesting deeper than this is left to serde (whose own limit is 128).
pub const MAX_DEPTH: u32 = 128;

/// The values of the top-level members named `names` (their raw JSON text), or `None` when
/// `doc` is not a JSON object the scan can follow or names one of them twice.
pub fn top_level_members<'a, const N: usize>(doc: &'a [u8], names: [&str; N]) -> Option<[Option<&'a [u8]>; N]> {
    let mut found = [None; N];
    let mut i = skip_ws(doc, 0);
    if doc.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(doc, i + 1);
    if doc.get(i) == Some(&b'}') {
        return (skip_ws(doc, i + 1) == doc.len()).then_some(found);
    }
    loop {
        if doc.get(i) != Some(&b'"') {
            return None;
        }
        let name_end = skip_string(doc, i)?;
        let name = doc.get(i + 1..name_end - 1)?;
        if name.contains(&b'\\') {
            return None; // an escaped name: serde decodes it
        }
        i = skip_ws(doc, name_end);
        if doc.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(doc, i + 1);
        let value_end = skip_value(doc, value_start)?;
        if let Some(slot) = names.iter().position(|n| n.as_bytes() == name) {
            let slot = found.get_mut(slot)?;
            if slot.is_some() {
                return None; // serde refuses a duplicate field
            }
            *slot = Some(doc.get(value_start..value_end)?);
        }
        i = skip_ws(doc, value_end);
        match doc.get(i) {
            Some(b',') => i = skip_ws(doc, i + 1),
            Some(b'}') => return (skip_ws(doc, i + 1) == doc.len()).then_some(found),
            _ => return None,
        }
    }
}

fn skip_ws(doc: &[u8], mut i: usize) -> usize {
    while matches!(doc.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// From the opening quote at `start` to just past the closing one.
fn skip_string(doc: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', doc.get(i..)?)?;
        if doc.get(at) == Some(&b'"') {
            return Some(at + 1);
        }
        i = at + 2; // a backslash and the byte it escapes (`\"` included)
    }
}

/// The bytes `skip_value` stops at: a string's quote and the brackets. Everything else inside
/// a container (names' colons, commas, numbers, literals, whitespace) is passed over in a
/// tight loop.
const STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    stops[b'"' as usize] = true;
    stops[b'{' as usize] = true;
    stops[b'}' as usize] = true;
    stops[b'[' as usize] = true;
    stops[b']' as usize] = true;
    stops
};

/// From the first byte of a value at `start` to just past it.
fn skip_value(doc: &[u8], start: usize) -> Option<usize> {
    // One bit per open bracket: set for `{`, clear for `[`.
    let mut kinds: u128 = 0;
    let mut depth: u32 = 0;
    let mut i = start;
    loop {
        if depth > 0 {
            i += doc.get(i..)?.iter().position(|&b| STOPS[usize::from(b)])?;
        }
        let byte = *doc.get(i)?;
        match byte {
            b'"' => {
                i = skip_string(doc, i)?;
                if depth == 0 {
                    return Some(i);
                }
                continue;
            }
            b'{' | b'[' => {
                if depth == MAX_DEPTH {
                    return None;
                }
                kinds = (kinds << 1) | u128::from(byte == b'{');
                depth += 1;
            }
            b'}' | b']' => {
                if depth == 0 || (kinds & 1 == 1) != (byte == b'}') {
                    return None;
                }
                kinds >>= 1;
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            // A scalar at the top: up to the byte that ends it.
            _ if depth == 0 => {
                let len =
                    doc.get(i..)?.iter().position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'));
                return Some(len.map_or(doc.len(), |len| i + len)).filter(|&end| end > start);
            }
            _ => {}
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn usage_of(doc: &str) -> Option<[Option<&str>; 2]> {
        top_level_members(doc.as_bytes(), ["usage", "n"])
            .map(|found| found.map(|v| v.map(|v| std::str::from_utf8(v).unwrap())))
    }

    #[test]
    fn finds_top_level_members_past_long_text_and_nested_lookalikes() {
        let doc = r#" {"id":"x","choices":[{"message":{"content":"a \"usage\": {} \\ text","usage":{"fake":1}}}],
            "n" : -1.5e3 , "usage":{"prompt_tokens":3,"nested":[{"a":"}"}]}} "#;
        assert_eq!(usage_of(doc), Some([Some(r#"{"prompt_tokens":3,"nested":[{"a":"}"}]}"#), Some("-1.5e3")]));
        assert_eq!(usage_of(r#"{"usage":null,"n":true}"#), Some([Some("null"), Some("true")]));
        assert_eq!(usage_of("{}"), Some([None, None]));
        // Quotes and backslashes before, at and past the short-string loop's reach.
        for text in ["0123456789abcd\\\"", "0123456789abcde\\\"", "0123456789abcdef0123\\\"xyz\\\\", ""] {
            let doc = format!(r#"{{"t":"{text}","usage":1}}"#);
            assert_eq!(usage_of(&doc), Some([Some("1"), None]), "{doc}");
        }
        assert_eq!(usage_of(r#"{"other":"usage"}"#), Some([None, None]));
    }

    #[test]
    fn refuses_what_serde_would_read_differently_or_not_at_all() {
        for doc in [
            "",
            "[]",
            r#""usage""#,
            r#"{"usage":1,"usage":2}"#, // a duplicate: serde's error
            r#"{"us\u0061ge":1}"#,      // an escaped name: serde decodes it
            r#"{"usage":{"a":1}"#,      // unclosed
            r#"{"usage":{"a":1]}"#,     // mismatched
            r#"{"usage":"open}"#,       // unterminated string
            r#"{"usage":1} trailing"#,  // more after the object
            r#"{"usage":1,}"#,          // a trailing comma
            r#"{"usage" 1}"#,           // no colon
            r#"{"usage":}"#,            // no value
            r#"{"a":1 "usage":2}"#,     // no comma
        ] {
            assert_eq!(usage_of(doc), None, "{doc}");
        }
        let deep = format!(r#"{{"usage":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        assert_eq!(usage_of(&deep), None);
        let ok = format!(r#"{{"usage":{}{}}}"#, "[".repeat(127), "]".repeat(127));
        assert!(usage_of(&ok).is_some());
    }
}
