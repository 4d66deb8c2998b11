//! Token usage as providers report it, normalised to one shape.

use serde::{Deserialize, Serialize};

/// Which wire format a response is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiFormat {
    /// OpenAI chat/completions/embeddings (and OpenAI-compatible servers).
    OpenAi,
    /// Anthropic `/v1/messages`.
    Anthropic,
    /// OpenAI's Responses API (`/v1/responses`): `input_tokens` (cached ones included) and
    /// `output_tokens`, and in a stream, typed events ending in `response.completed`.
    OpenAiResponses,
    /// Google Gemini's `generateContent`: `usageMetadata`, always behind a translation.
    Gemini,
    /// AWS Bedrock's Converse API: `inputTokens` (without cache reads and writes, like
    /// Anthropic's), always behind a translation.
    Bedrock,
}

/// Normalised token counts of one request.
///
/// `prompt_tokens` counts every input token, including those read from or written to a
/// provider's prompt cache; `cached_prompt_tokens` and `cache_write_tokens` are subsets of it.
/// `completion_tokens` counts every output token, reasoning tokens included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub cache_write_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// The usual ~4 bytes per token, rounded up: for estimates only (reservations, cut streams).
pub fn estimate_tokens_from_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(4)
}

/// The `usage` object of either provider, every field optional (they may be absent or null).
#[derive(Debug, Deserialize, Default)]
pub(crate) struct RawUsage {
    // OpenAI
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
    // Anthropic
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    // OpenAI Responses
    input_tokens_details: Option<PromptDetails>,
    output_tokens_details: Option<CompletionDetails>,
    // Gemini (`usageMetadata`)
    #[serde(rename = "promptTokenCount")]
    prompt_token_count: Option<u64>,
    #[serde(rename = "candidatesTokenCount")]
    candidates_token_count: Option<u64>,
    #[serde(rename = "cachedContentTokenCount")]
    cached_content_token_count: Option<u64>,
    #[serde(rename = "thoughtsTokenCount")]
    thoughts_token_count: Option<u64>,
    // Bedrock Converse
    #[serde(rename = "inputTokens")]
    converse_input_tokens: Option<u64>,
    #[serde(rename = "outputTokens")]
    converse_output_tokens: Option<u64>,
    #[serde(rename = "cacheReadInputTokens")]
    converse_cache_read_tokens: Option<u64>,
    #[serde(rename = "cacheWriteInputTokens")]
    converse_cache_write_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

impl RawUsage {
    pub(crate) fn normalise(&self, format: ApiFormat) -> Usage {
        match format {
            ApiFormat::OpenAi => Usage {
                prompt_tokens: self.prompt_tokens.unwrap_or(0),
                cached_prompt_tokens: self.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0),
                cache_write_tokens: 0,
                completion_tokens: self.completion_tokens.unwrap_or(0),
                reasoning_tokens: self.completion_tokens_details.as_ref().and_then(|d| d.reasoning_tokens).unwrap_or(0),
            },
            // Unlike Anthropic's, these input tokens already include the cached ones.
            ApiFormat::OpenAiResponses => Usage {
                prompt_tokens: self.input_tokens.unwrap_or(0),
                cached_prompt_tokens: self.input_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0),
                cache_write_tokens: 0,
                completion_tokens: self.output_tokens.unwrap_or(0),
                reasoning_tokens: self.output_tokens_details.as_ref().and_then(|d| d.reasoning_tokens).unwrap_or(0),
            },
            // The prompt count includes cached content; thinking is billed as output.
            ApiFormat::Gemini => {
                let thoughts = self.thoughts_token_count.unwrap_or(0);
                Usage {
                    prompt_tokens: self.prompt_token_count.unwrap_or(0),
                    cached_prompt_tokens: self.cached_content_token_count.unwrap_or(0),
                    cache_write_tokens: 0,
                    completion_tokens: self.candidates_token_count.unwrap_or(0).saturating_add(thoughts),
                    reasoning_tokens: thoughts,
                }
            }
            ApiFormat::Bedrock => {
                let writes = self.converse_cache_write_tokens.unwrap_or(0);
                let reads = self.converse_cache_read_tokens.unwrap_or(0);
                Usage {
                    prompt_tokens: self.converse_input_tokens.unwrap_or(0).saturating_add(writes).saturating_add(reads),
                    cached_prompt_tokens: reads,
                    cache_write_tokens: writes,
                    completion_tokens: self.converse_output_tokens.unwrap_or(0),
                    reasoning_tokens: 0,
                }
            }
            ApiFormat::Anthropic => {
                let writes = self.cache_creation_input_tokens.unwrap_or(0);
                let reads = self.cache_read_input_tokens.unwrap_or(0);
                Usage {
                    // Anthropic's input_tokens excludes cache reads and writes; ours counts all.
                    prompt_tokens: self.input_tokens.unwrap_or(0).saturating_add(writes).saturating_add(reads),
                    cached_prompt_tokens: reads,
                    cache_write_tokens: writes,
                    completion_tokens: self.output_tokens.unwrap_or(0),
                    reasoning_tokens: 0,
                }
            }
        }
    }

    /// Anthropic's `message_delta` repeats or updates some fields; later values win.
    pub(crate) fn merge_from(&mut self, later: RawUsage) {
        let RawUsage {
            prompt_tokens,
            completion_tokens,
            prompt_tokens_details,
            completion_tokens_details,
            input_tokens,
            output_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens,
            input_tokens_details,
            output_tokens_details,
            prompt_token_count,
            candidates_token_count,
            cached_content_token_count,
            thoughts_token_count,
            converse_input_tokens,
            converse_output_tokens,
            converse_cache_read_tokens,
            converse_cache_write_tokens,
        } = later;
        self.prompt_tokens = prompt_tokens.or(self.prompt_tokens);
        self.completion_tokens = completion_tokens.or(self.completion_tokens);
        self.prompt_tokens_details = prompt_tokens_details.or(self.prompt_tokens_details.take());
        self.completion_tokens_details = completion_tokens_details.or(self.completion_tokens_details.take());
        self.input_tokens = input_tokens.or(self.input_tokens);
        self.output_tokens = output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = cache_read_input_tokens.or(self.cache_read_input_tokens);
        self.input_tokens_details = input_tokens_details.or(self.input_tokens_details.take());
        self.output_tokens_details = output_tokens_details.or(self.output_tokens_details.take());
        self.prompt_token_count = prompt_token_count.or(self.prompt_token_count);
        self.candidates_token_count = candidates_token_count.or(self.candidates_token_count);
        self.cached_content_token_count = cached_content_token_count.or(self.cached_content_token_count);
        self.thoughts_token_count = thoughts_token_count.or(self.thoughts_token_count);
        self.converse_input_tokens = converse_input_tokens.or(self.converse_input_tokens);
        self.converse_output_tokens = converse_output_tokens.or(self.converse_output_tokens);
        self.converse_cache_read_tokens = converse_cache_read_tokens.or(self.converse_cache_read_tokens);
        self.converse_cache_write_tokens = converse_cache_write_tokens.or(self.converse_cache_write_tokens);
    }
}

#[derive(Deserialize)]
struct WithUsage {
    /// Gemini calls it `usageMetadata`.
    #[serde(alias = "usageMetadata")]
    usage: Option<RawUsage>,
    /// Amazon Titan's embeddings (Bedrock InvokeModel) count their input at the top level.
    #[serde(rename = "inputTextTokenCount")]
    input_text_token_count: Option<u64>,
}

/// A `usage` object already parsed as JSON (a translator's), normalised; a malformed one
/// counts nothing.
pub(crate) fn usage_of_value(format: ApiFormat, usage: &serde_json::Value) -> Usage {
    RawUsage::deserialize(usage).map(|u| u.normalise(format)).unwrap_or_default()
}

/// Usage of a complete non-streaming response body, or None if it is not JSON or has none
/// (Gemini's and Cohere's embeddings count nothing: the caller estimates those).
///
/// The answer's members are found by a structural scan (`json_scan`) and only `usage` is
/// parsed: most of an answer is its text, which the scan skips at memchr's speed. Whatever the
/// scan cannot follow is parsed whole, as before.
pub fn parse_response_usage(format: ApiFormat, body: &[u8]) -> Option<Usage> {
    let parsed = match crate::json_scan::top_level_members(body, ["usage", "usageMetadata", "inputTextTokenCount"]) {
        // Both names: serde's duplicate field (`usageMetadata` is an alias of `usage`).
        Some([Some(_), Some(_), _]) => return None,
        Some([usage, usage_metadata, input]) => WithUsage {
            usage: usage.or(usage_metadata).map(serde_json::from_slice).transpose().ok()?.flatten(),
            input_text_token_count: input.map(serde_json::from_slice).transpose().ok()?.flatten(),
        },
        None => serde_json::from_slice(body).ok()?,
    };
    parsed.normalise(format)
}

impl WithUsage {
    fn normalise(self, format: ApiFormat) -> Option<Usage> {
        match (self.usage, self.input_text_token_count) {
            (Some(u), _) => Some(u.normalise(format)),
            (None, Some(input)) if format == ApiFormat::Bedrock => {
                Some(Usage { prompt_tokens: input, ..Usage::default() })
            }
            (None, _) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_chat_usage() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        let u = parse_response_usage(ApiFormat::OpenAi, body).unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 12,
                cached_prompt_tokens: 4,
                cache_write_tokens: 0,
                completion_tokens: 5,
                reasoning_tokens: 2
            }
        );
    }

    /// The scan's reading and a whole parse's agree wherever the scan answers.
    #[test]
    fn the_scan_finds_what_a_whole_parse_finds() {
        let whole = |format, body: &[u8]| serde_json::from_slice::<WithUsage>(body).ok()?.normalise(format);
        for body in [
            r#"{"choices":[{"message":{"content":"say \"usage\":{\"prompt_tokens\":9}","usage":{"prompt_tokens":7}}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            r#"{"usage":null}"#,
            r#"{"usage":{"prompt_tokens":"three"}}"#,
            r#"{"usage":{"prompt_tokens":3},"usageMetadata":{"promptTokenCount":4}}"#,
            r#"{"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1}}"#,
            r#"{"inputTextTokenCount":12,"embedding":[0.1,-2e-3]}"#,
            r#"{"inputTextTokenCount":"12"}"#,
            r#"{"usage":{"prompt_tokens":3}} {"#,
            r#"not json"#,
        ] {
            for format in [ApiFormat::OpenAi, ApiFormat::Gemini, ApiFormat::Bedrock] {
                assert_eq!(parse_response_usage(format, body.as_bytes()), whole(format, body.as_bytes()), "{body}");
            }
        }
    }

    #[test]
    fn openai_responses_usage_counts_cached_input_inside_input_tokens() {
        let body = br#"{"object":"response","output":[],"usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":40},"output_tokens":20,"output_tokens_details":{"reasoning_tokens":8},"total_tokens":120}}"#;
        let u = parse_response_usage(ApiFormat::OpenAiResponses, body).unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 100,
                cached_prompt_tokens: 40,
                cache_write_tokens: 0,
                completion_tokens: 20,
                reasoning_tokens: 8
            }
        );
    }

    #[test]
    fn gemini_usage_metadata_counts_thoughts_as_output() {
        let body = br#"{"candidates":[],"usageMetadata":{"promptTokenCount":50,"candidatesTokenCount":10,"cachedContentTokenCount":20,"thoughtsTokenCount":5,"totalTokenCount":65}}"#;
        let u = parse_response_usage(ApiFormat::Gemini, body).unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 50,
                cached_prompt_tokens: 20,
                cache_write_tokens: 0,
                completion_tokens: 15,
                reasoning_tokens: 5
            }
        );
    }

    #[test]
    fn bedrock_converse_usage_counts_cache_tokens_as_input() {
        let body = br#"{"output":{},"stopReason":"end_turn","usage":{"inputTokens":10,"outputTokens":7,"cacheReadInputTokens":30,"cacheWriteInputTokens":20,"totalTokens":67}}"#;
        let u = parse_response_usage(ApiFormat::Bedrock, body).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.cached_prompt_tokens, u.cache_write_tokens, u.completion_tokens),
            (60, 30, 20, 7)
        );
    }

    #[test]
    fn embeddings_and_nulls() {
        let u = parse_response_usage(ApiFormat::OpenAi, br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#)
            .unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (8, 0));
        let u = parse_response_usage(
            ApiFormat::OpenAi,
            br#"{"usage":{"prompt_tokens":3,"completion_tokens":null,"prompt_tokens_details":null}}"#,
        )
        .unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens), (3, 0, 0));
    }

    #[test]
    fn embeddings_behind_a_translation() {
        // Amazon Titan (Bedrock InvokeModel): the input's exact count, at the top level.
        let titan = br#"{"embedding":[0.5,-0.25],"inputTextTokenCount":7}"#;
        assert_eq!(
            parse_response_usage(ApiFormat::Bedrock, titan),
            Some(Usage { prompt_tokens: 7, ..Usage::default() })
        );
        // Read as Bedrock's only (no other format has the field).
        assert_eq!(parse_response_usage(ApiFormat::OpenAi, titan), None);
        // Gemini's batchEmbedContents and Cohere on Bedrock count nothing.
        assert_eq!(parse_response_usage(ApiFormat::Gemini, br#"{"embeddings":[{"values":[0.5]}]}"#), None);
        let cohere = br#"{"embeddings":[[0.5]],"id":"x","response_type":"embeddings_floats","texts":["hi"]}"#;
        assert_eq!(parse_response_usage(ApiFormat::Bedrock, cohere), None);
        // A Gemini answer that does count (Vertex's shape) is exact.
        let counted = br#"{"embeddings":[{"values":[0.5]}],"usageMetadata":{"promptTokenCount":4}}"#;
        assert_eq!(parse_response_usage(ApiFormat::Gemini, counted).map(|u| u.prompt_tokens), Some(4));
        for bad in [&br#"{"inputTextTokenCount":-1}"#[..], br#"{"inputTextTokenCount":"7"}"#] {
            assert_eq!(parse_response_usage(ApiFormat::Bedrock, bad), None);
        }
    }

    #[test]
    fn anthropic_usage_counts_cache_tokens_as_input() {
        let body = br#"{"type":"message","usage":{"input_tokens":10,"output_tokens":7,"cache_creation_input_tokens":20,"cache_read_input_tokens":30}}"#;
        let u = parse_response_usage(ApiFormat::Anthropic, body).unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 60,
                cached_prompt_tokens: 30,
                cache_write_tokens: 20,
                completion_tokens: 7,
                reasoning_tokens: 0
            }
        );
    }

    #[test]
    fn garbage_and_missing_usage() {
        assert_eq!(parse_response_usage(ApiFormat::OpenAi, b"this is not json {{{"), None);
        assert_eq!(parse_response_usage(ApiFormat::OpenAi, br#"{"usage":null}"#), None);
        assert_eq!(parse_response_usage(ApiFormat::OpenAi, br#"{"choices":[]}"#), None);
        assert_eq!(parse_response_usage(ApiFormat::OpenAi, br#"{"usage":{"prompt_tokens":-1}}"#), None);
        assert_eq!(parse_response_usage(ApiFormat::OpenAi, br#"[1,2]"#), None);
    }

    #[test]
    fn openai_completions_and_null_details() {
        let body = br#"{"id":"cmpl-1","object":"text_completion","choices":[{"text":"hi","index":0}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":null,"audio_tokens":null},"completion_tokens_details":null}}"#;
        let u = parse_response_usage(ApiFormat::OpenAi, body).unwrap();
        assert_eq!(u, Usage { prompt_tokens: 5, completion_tokens: 7, ..Usage::default() });
        assert_eq!(u.total_tokens(), 12);
        // Whitespace around the document is fine.
        let u = parse_response_usage(
            ApiFormat::OpenAi,
            b" \n{\"usage\": {\"prompt_tokens\": 1, \"completion_tokens\": 2}}\r\n",
        )
        .unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (1, 2));
    }

    #[test]
    fn anthropic_without_cache_fields_and_with_newer_fields() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"}],"model":"claude-sonnet-4-5","stop_reason":"end_turn","usage":{"input_tokens":9,"output_tokens":3}}"#;
        let u = parse_response_usage(ApiFormat::Anthropic, body).unwrap();
        assert_eq!(u, Usage { prompt_tokens: 9, completion_tokens: 3, ..Usage::default() });
        let body = br#"{"type":"message","usage":{"input_tokens":9,"cache_creation_input_tokens":null,"cache_read_input_tokens":4,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":3,"server_tool_use":{"web_search_requests":1},"service_tier":"standard"}}"#;
        let u = parse_response_usage(ApiFormat::Anthropic, body).unwrap();
        assert_eq!((u.prompt_tokens, u.cached_prompt_tokens, u.cache_write_tokens), (13, 4, 0));
    }

    #[test]
    fn the_format_decides_which_fields_count() {
        // An OpenAI body read as Anthropic (or the reverse) reports no tokens, not wrong ones.
        let openai = br#"{"usage":{"prompt_tokens":12,"completion_tokens":5}}"#;
        assert_eq!(parse_response_usage(ApiFormat::Anthropic, openai), Some(Usage::default()));
        let anthropic = br#"{"usage":{"input_tokens":12,"output_tokens":5}}"#;
        assert_eq!(parse_response_usage(ApiFormat::OpenAi, anthropic), Some(Usage::default()));
    }

    #[test]
    fn huge_counts_saturate() {
        let body = br#"{"usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":5,"output_tokens":18446744073709551615}}"#;
        let u = parse_response_usage(ApiFormat::Anthropic, body).unwrap();
        assert_eq!(u.prompt_tokens, u64::MAX);
        assert_eq!(u.total_tokens(), u64::MAX);
        assert_eq!(estimate_tokens_from_bytes(u64::MAX), u64::MAX / 4 + 1);
    }

    #[test]
    fn message_delta_merge_keeps_earlier_values_for_absent_or_null_fields() {
        let mut start: RawUsage =
            serde_json::from_str(r#"{"input_tokens":10,"cache_read_input_tokens":3,"output_tokens":1}"#).unwrap();
        let later: RawUsage = serde_json::from_str(r#"{"output_tokens":20,"cache_read_input_tokens":null}"#).unwrap();
        start.merge_from(later);
        let u = start.normalise(ApiFormat::Anthropic);
        assert_eq!((u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens), (13, 3, 20));
    }

    #[test]
    fn not_json_or_wrong_shapes() {
        for body in [
            &b""[..],
            b"   ",
            b"\xff\xfe{}",
            b"{\"usage\":{\"prompt_tokens\":1}",
            b"{\"usage\":5}",
            b"{\"usage\":\"none\"}",
            b"{\"usage\":{\"prompt_tokens\":1.5}}",
            b"data: {\"usage\":{\"prompt_tokens\":1}}\n\n",
            b"null",
        ] {
            assert_eq!(parse_response_usage(ApiFormat::OpenAi, body), None, "{body:?}");
            assert_eq!(parse_response_usage(ApiFormat::Anthropic, body), None, "{body:?}");
        }
        // An empty usage object is usage of nothing, not "no usage".
        assert_eq!(parse_response_usage(ApiFormat::OpenAi, br#"{"usage":{}}"#), Some(Usage::default()));
    }

    #[test]
    fn estimates_round_up() {
        assert_eq!(estimate_tokens_from_bytes(0), 0);
        assert_eq!(estimate_tokens_from_bytes(1), 1);
        assert_eq!(estimate_tokens_from_bytes(8), 2);
        assert_eq!(estimate_tokens_from_bytes(9), 3);
    }
}
