//! The OpenAI side of an `/v1/embeddings` client in front of a provider with its own embeddings
//! API (`openai_gemini`, `openai_bedrock`): reading the request (`input`, `dimensions`,
//! `encoding_format`) and writing the `list` of embeddings it gets back, as floats or as
//! base64 (little-endian f32s, what OpenAI sends and its Python SDK asks for by default).
//! What each provider makes of them stays in its own module.

use serde_json::{Map, Value, json};

use super::{ConversionError, Target, bad_response, openai_side};
use crate::usage::estimate_tokens_from_bytes;

/// How the client wants its vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// JSON numbers (OpenAI's default).
    #[default]
    Float,
    /// Standard base64 of the vector's little-endian f32 bytes.
    Base64,
}

/// What an embeddings client asked that its answer must honour, and the gateway's estimate of
/// its input (the providers translated to report no token counts, but Titan): noted when the
/// request is translated, used when the answer is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddingsAsk {
    pub encoding: Encoding,
    /// The input's tokens, estimated as everywhere in the gateway (bytes / 4, at least one, per
    /// input).
    pub prompt_estimate: u64,
}

/// An embeddings request as a provider module needs it.
#[derive(Debug)]
pub(super) struct EmbeddingsRequest {
    /// Each input text, in order.
    pub inputs: Vec<String>,
    /// `dimensions`, where the provider takes it (else refused, or dropped under `drop_params`).
    pub dimensions: Option<u64>,
    pub ask: EmbeddingsAsk,
    /// The client parameters left out under `drop_params`.
    pub dropped: Vec<String>,
}

/// Fields an embeddings request carries that say nothing to the provider: the model (in the
/// URL) and `user` (no field for it).
const IGNORED: &[&str] = &["model", "user"];

/// Reads an OpenAI embeddings request for `provider`, which takes `dimensions` when
/// `takes_dimensions`, and the provider-specific fields `extra` (passed on by its module).
pub(super) fn read(
    body: &[u8],
    target: &Target<'_>,
    provider: &'static str,
    takes_dimensions: bool,
    extra: &[&str],
) -> Result<(EmbeddingsRequest, Map<String, Value>), ConversionError> {
    let req = super::request_object(body)?;
    let dropped = openai_side::unsupported_params(provider, &req, target, |name, value| {
        IGNORED.contains(&name)
            || extra.contains(&name)
            || matches!(name, "input" | "encoding_format")
            || (name == "dimensions" && (takes_dimensions || value.is_null()))
    })?;
    let inputs = inputs(req.get("input"))?;
    let dimensions = if takes_dimensions {
        match openai_side::present(&req, "dimensions") {
            None => None,
            Some(v) => {
                Some(v.as_u64().filter(|d| *d > 0).ok_or_else(|| field("dimensions", "must be a positive integer"))?)
            }
        }
    } else {
        None
    };
    let encoding = match openai_side::present(&req, "encoding_format").map(Value::as_str) {
        None | Some(Some("float")) => Encoding::Float,
        Some(Some("base64")) => Encoding::Base64,
        Some(_) => return Err(field("encoding_format", "must be \"float\" or \"base64\"")),
    };
    // At least a token a text: an embedding is never metered as nothing.
    let prompt_estimate =
        inputs.iter().fold(0u64, |sum, text| sum.saturating_add(estimate_tokens_from_bytes(text.len() as u64).max(1)));
    let read = EmbeddingsRequest { inputs, dimensions, ask: EmbeddingsAsk { encoding, prompt_estimate }, dropped };
    Ok((read, req))
}

/// `input`: a string, or a non-empty array of strings. Token-id arrays (OpenAI takes them for
/// its own tokenizer) mean nothing to another provider's model.
fn inputs(input: Option<&Value>) -> Result<Vec<String>, ConversionError> {
    const ARRAY_OF_STRINGS: &str = "must be a string or an array of strings (token-id arrays are OpenAI's own and \
                                    cannot be sent to this provider)";
    match input {
        None | Some(Value::Null) => Err(field("input", "is required")),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.is_empty() => Err(field("input", "must not be empty")),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(|| field("input", ARRAY_OF_STRINGS)))
            .collect(),
        Some(_) => Err(field("input", ARRAY_OF_STRINGS)),
    }
}

fn field(param: &'static str, detail: &str) -> ConversionError {
    ConversionError::InvalidField { param, detail: detail.to_owned() }
}

/// OpenAI's answer: one `embedding` per vector (each a provider's JSON array of numbers), in
/// order, encoded as the client asked, for the client's `model`, with `prompt_tokens` input.
pub(super) fn answer(
    vectors: &[&Value],
    client_model: &str,
    encoding: Encoding,
    prompt_tokens: u64,
) -> Result<Vec<u8>, ConversionError> {
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let numbers =
                vector.as_array().ok_or_else(|| bad_response(format!("embedding {index} is not an array")))?;
            if numbers.iter().any(|n| !n.is_number()) {
                return Err(bad_response(format!("embedding {index} has a value that is not a number")));
            }
            let embedding = match encoding {
                Encoding::Float => (*vector).clone(),
                Encoding::Base64 => Value::String(base64_f32_le(numbers)),
            };
            Ok(json!({"object": "embedding", "index": index, "embedding": embedding}))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = json!({
        "object": "list",
        "data": data,
        "model": client_model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    serde_json::to_vec(&out).map_err(|e| bad_response(e.to_string()))
}

/// Numbers as f32s, little-endian, in standard base64 (with padding).
fn base64_f32_le(numbers: &[Value]) -> String {
    let mut bytes = Vec::with_capacity(numbers.len() * 4);
    for n in numbers {
        // Narrowed as OpenAI's own vectors are: an f64 out of f32's range becomes ±inf.
        #[allow(clippy::cast_possible_truncation)]
        let value = n.as_f64().unwrap_or(0.0) as f32;
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    base64(&bytes)
}

/// Standard base64 (RFC 4648 §4, padded): a few lines rather than a dependency in core.
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let symbol = |sextet: u32| char::from(ALPHABET[(sextet & 63) as usize]);
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let triple = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(symbol(triple >> 18));
        out.push(symbol(triple >> 12));
        out.push(if chunk.len() > 1 { symbol(triple >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { symbol(triple) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn base64_is_rfc_4648s() {
        for (bytes, expected) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xff, 0xfe, 0xfd], "//79"),
        ] {
            assert_eq!(base64(bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn vectors_are_little_endian_f32s() {
        // As Python's base64.b64encode(struct.pack('<2f', 0.5, -2.0)) writes them.
        assert_eq!(base64_f32_le(&[json!(0.5), json!(-2)]), "AAAAPwAAAMA=");
        assert_eq!(base64_f32_le(&[json!(1.0)]), "AACAPw==");
        // A provider's f64s narrowed to f32 (what OpenAI's SDK decodes them as).
        assert_eq!(base64_f32_le(&[json!(0.013168523), json!(-0.008711934), json!(-0.046782676)]), "ysBXPIC8Drwxnz+9");
    }

    #[test]
    fn the_answer_is_openais_list() {
        let (a, b) = (json!([0.5, -2.0]), json!([1.0, 0]));
        let floats: Value =
            serde_json::from_slice(&answer(&[&a, &b], "my-embedder", Encoding::Float, 9).unwrap()).unwrap();
        assert_eq!(
            floats,
            json!({"object": "list", "model": "my-embedder", "usage": {"prompt_tokens": 9, "total_tokens": 9},
                   "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -2.0]},
                            {"object": "embedding", "index": 1, "embedding": [1.0, 0]}]})
        );
        let encoded: Value = serde_json::from_slice(&answer(&[&a], "m", Encoding::Base64, 1).unwrap()).unwrap();
        assert_eq!(encoded["data"][0]["embedding"], "AAAAPwAAAMA=");
        for bad in [json!("0.5"), json!([0.5, "x"]), json!([null]), json!({"values": [1]})] {
            let e = answer(&[&bad], "m", Encoding::Float, 1).unwrap_err();
            assert!(matches!(e, ConversionError::InvalidResponse { .. }), "{bad}: {e:?}");
        }
    }
}
