//! A client and a deployment that speak different formats: which translation applies, and the
//! request, response, stream and error mappings of `sluice_core::conversion` behind one type,
//! so `flow.rs` routes and meters the same way whatever the pair.

use sluice_core::config::{Deployment, Provider};
use sluice_core::conversion::openai_bedrock::EmbeddingsCalls;
use sluice_core::conversion::{
    EmbeddingsAsk, Target, anthropic_openai, openai_anthropic, openai_bedrock, openai_gemini, vertex,
};
use sluice_core::endpoint::Endpoint;
use sluice_core::error::{ErrorFormat, GatewayError};
use sluice_core::usage::{ApiFormat, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// An OpenAI Chat Completions client, an Anthropic Messages deployment.
    OpenAiToAnthropic,
    /// An Anthropic Messages client (Claude Code, the Anthropic SDK), an OpenAI deployment.
    AnthropicToOpenAi,
    /// An OpenAI Chat Completions client, a Gemini deployment.
    OpenAiToGemini,
    /// An Anthropic Messages client, a Gemini deployment: through OpenAI's format both ways
    /// (the two translations composed, each tested on its own).
    AnthropicToGemini,
    /// An OpenAI Chat Completions client, a Bedrock (Converse) deployment.
    OpenAiToBedrock,
    /// An Anthropic Messages client, a Bedrock deployment: through OpenAI's format both ways.
    AnthropicToBedrock,
    /// An OpenAI `/v1/embeddings` client, a Gemini deployment (`batchEmbedContents`).
    OpenAiEmbeddingsToGemini,
    /// An OpenAI `/v1/embeddings` client, a Bedrock deployment (InvokeModel: Titan, Cohere).
    OpenAiEmbeddingsToBedrock,
}

impl Direction {
    /// The error shape the client reads: its route's.
    pub fn client_format(self) -> ErrorFormat {
        let client = match self {
            Self::OpenAiToAnthropic | Self::OpenAiToGemini | Self::OpenAiToBedrock => Endpoint::ChatCompletions,
            Self::OpenAiEmbeddingsToGemini | Self::OpenAiEmbeddingsToBedrock => Endpoint::Embeddings,
            Self::AnthropicToOpenAi | Self::AnthropicToGemini | Self::AnthropicToBedrock => Endpoint::Messages,
        };
        client.error_format()
    }

    /// The translation a request on `endpoint` needs to reach `provider`, if one exists.
    pub fn between(endpoint: Endpoint, provider: Provider) -> Option<Direction> {
        match (endpoint, provider.format()) {
            (Endpoint::ChatCompletions, ApiFormat::Anthropic) => Some(Self::OpenAiToAnthropic),
            (Endpoint::Messages, ApiFormat::OpenAi) => Some(Self::AnthropicToOpenAi),
            (Endpoint::ChatCompletions, ApiFormat::Gemini) => Some(Self::OpenAiToGemini),
            (Endpoint::Messages, ApiFormat::Gemini) => Some(Self::AnthropicToGemini),
            (Endpoint::ChatCompletions, ApiFormat::Bedrock) => Some(Self::OpenAiToBedrock),
            (Endpoint::Messages, ApiFormat::Bedrock) => Some(Self::AnthropicToBedrock),
            // Vertex embeds through `:predict`, not Gemini's `batchEmbedContents`.
            (Endpoint::Embeddings, ApiFormat::Gemini) if provider == Provider::Gemini => {
                Some(Self::OpenAiEmbeddingsToGemini)
            }
            (Endpoint::Embeddings, ApiFormat::Bedrock) => Some(Self::OpenAiEmbeddingsToBedrock),
            _ => None,
        }
    }

    /// The route the deployment is called on (Gemini's path names its own method:
    /// `Deployment::upstream_path`).
    pub fn upstream_endpoint(self) -> Endpoint {
        match self {
            Self::OpenAiToAnthropic => Endpoint::Messages,
            Self::OpenAiEmbeddingsToGemini | Self::OpenAiEmbeddingsToBedrock => Endpoint::Embeddings,
            Self::AnthropicToOpenAi
            | Self::OpenAiToGemini
            | Self::AnthropicToGemini
            | Self::OpenAiToBedrock
            | Self::AnthropicToBedrock => Endpoint::ChatCompletions,
        }
    }
}

/// What a translated request sends its deployment.
#[derive(Debug)]
pub enum Upstream {
    /// The request's body, for the router to send.
    Body(Vec<u8>),
    /// Several calls (Titan's embeddings of several texts), sent by the filter itself.
    Calls(EmbeddingsCalls),
}

/// One request's translation.
#[derive(Debug, Clone)]
pub struct Translation {
    pub direction: Direction,
    /// The `model` the client asked for: what its responses name.
    pub client_model: String,
    /// An OpenAI client asked for `stream_options.include_usage`.
    pub include_usage: bool,
    /// An embeddings request: what its answer must honour (`encoding_format`) and the
    /// gateway\'s estimate of its input, noted when the request is translated.
    pub embeddings: Option<EmbeddingsAsk>,
    /// The client's parameters the translation left out under `drop_params` (counted once the
    /// request is admitted).
    pub dropped_params: usize,
    /// The client's JSON schema is answered by a forced tool call, translated back as content
    /// (`sluice_core::conversion::JSON_TOOL`).
    pub json_mode: bool,
}

impl Translation {
    /// The body for `deployment`; a request that cannot be translated is the client's error.
    /// (An embeddings request also notes what its answer must honour: `embeddings`.) A request
    /// that takes several calls (`Upstream::Calls`) is refused here: only the request path
    /// sends those (`flow/fan_out.rs`).
    pub fn request(
        &mut self,
        body: &[u8],
        deployment: &Deployment,
        upstream_model: &str,
        default_max_tokens: u64,
    ) -> Result<Vec<u8>, GatewayError> {
        match self.upstream(body, deployment, upstream_model, default_max_tokens)? {
            Upstream::Body(body) => Ok(body),
            Upstream::Calls(calls) => Err(GatewayError::InvalidField {
                param: "input",
                detail: format!("{upstream_model} embeds one text a call: {} texts need as many", calls.bodies.len()),
            }),
        }
    }

    /// What `deployment` is sent: one body, or (Titan embeddings of several texts) a call per
    /// text.
    pub fn upstream(
        &mut self,
        body: &[u8],
        deployment: &Deployment,
        upstream_model: &str,
        default_max_tokens: u64,
    ) -> Result<Upstream, GatewayError> {
        let target = Target {
            model: upstream_model,
            default_max_tokens: deployment.max_output_tokens.unwrap_or(default_max_tokens),
            drop_params: deployment.drop_params,
        };
        let translated = match self.direction {
            Direction::OpenAiToAnthropic => openai_anthropic::request(body, &target)?,
            Direction::AnthropicToOpenAi => anthropic_openai::request(body, &target)?,
            Direction::OpenAiToGemini => openai_gemini::request(body, &target)?,
            Direction::AnthropicToGemini => {
                let openai = anthropic_openai::request(body, &target)?;
                self.dropped_params = openai.dropped.len();
                openai_gemini::request(&openai.body, &target)?
            }
            Direction::OpenAiToBedrock => openai_bedrock::request(body, &target)?,
            Direction::AnthropicToBedrock => {
                let openai = anthropic_openai::request(body, &target)?;
                self.dropped_params = openai.dropped.len();
                openai_bedrock::request(&openai.body, &target)?
            }
            Direction::OpenAiEmbeddingsToGemini => {
                let (translated, ask) = openai_gemini::embeddings_request(body, &target)?;
                self.embeddings = Some(ask);
                translated
            }
            Direction::OpenAiEmbeddingsToBedrock => {
                let mut calls = openai_bedrock::embeddings_request(body, &target)?;
                self.embeddings = Some(calls.ask);
                self.dropped_params = calls.dropped.len();
                return Ok(match calls.bodies.pop() {
                    Some(one) if calls.bodies.is_empty() => Upstream::Body(one),
                    Some(last) => {
                        calls.bodies.push(last);
                        Upstream::Calls(calls)
                    }
                    None => return Err(GatewayError::Internal { detail: "no embeddings call" }),
                });
            }
        };
        self.dropped_params = self.dropped_params.saturating_add(translated.dropped.len());
        self.json_mode = translated.json_mode;
        if deployment.provider == Provider::VertexAnthropic {
            return Ok(Upstream::Body(vertex::anthropic_request(&translated.body)?));
        }
        Ok(Upstream::Body(translated.body))
    }

    /// A whole response body in the client's format: the answer, or the provider's error.
    pub fn response(&self, status: u16, body: &[u8], created_unix_secs: u64) -> Vec<u8> {
        let format = self.direction.client_format();
        let untranslatable = |e: sluice_core::conversion::ConversionError| GatewayError::from(e).body_for(format);
        let asked = self.embeddings.unwrap_or_default();
        match (self.direction, (200..300).contains(&status)) {
            (Direction::OpenAiToAnthropic, true) => {
                openai_anthropic::response(body, &self.client_model, created_unix_secs, self.json_mode)
                    .unwrap_or_else(untranslatable)
            }
            (Direction::OpenAiToAnthropic, false) => openai_anthropic::error(body),
            (Direction::AnthropicToOpenAi, true) => {
                anthropic_openai::response(body, &self.client_model).unwrap_or_else(untranslatable)
            }
            (Direction::AnthropicToOpenAi, false) => anthropic_openai::error(body, status),
            (Direction::OpenAiToGemini, true) => {
                openai_gemini::response(body, &self.client_model, created_unix_secs).unwrap_or_else(untranslatable)
            }
            (Direction::OpenAiToGemini, false) => openai_gemini::error(body),
            (Direction::AnthropicToGemini, true) => {
                openai_gemini::response(body, &self.client_model, created_unix_secs)
                    .and_then(|openai| anthropic_openai::response(&openai, &self.client_model))
                    .unwrap_or_else(untranslatable)
            }
            (Direction::AnthropicToGemini, false) => anthropic_openai::error(&openai_gemini::error(body), status),
            (Direction::OpenAiToBedrock, true) => {
                openai_bedrock::response(body, &self.client_model, created_unix_secs, self.json_mode)
                    .unwrap_or_else(untranslatable)
            }
            (Direction::OpenAiToBedrock, false) => openai_bedrock::error(body, status),
            (Direction::AnthropicToBedrock, true) => {
                openai_bedrock::response(body, &self.client_model, created_unix_secs, false)
                    .and_then(|openai| anthropic_openai::response(&openai, &self.client_model))
                    .unwrap_or_else(untranslatable)
            }
            (Direction::AnthropicToBedrock, false) => {
                anthropic_openai::error(&openai_bedrock::error(body, status), status)
            }
            (Direction::OpenAiEmbeddingsToGemini, true) => {
                openai_gemini::embeddings_response(body, &self.client_model, asked).unwrap_or_else(untranslatable)
            }
            (Direction::OpenAiEmbeddingsToGemini, false) => openai_gemini::error(body),
            (Direction::OpenAiEmbeddingsToBedrock, true) => {
                openai_bedrock::embeddings_response(body, &self.client_model, asked).unwrap_or_else(untranslatable)
            }
            (Direction::OpenAiEmbeddingsToBedrock, false) => openai_bedrock::error(body, status),
        }
    }

    /// The prompt tokens of an embeddings answer whose provider counts none (Gemini, Cohere on
    /// Bedrock): the estimate noted with the request, the same figure the client's `usage`
    /// shows. None for any other request, or a body that is not an embeddings answer (a JSON
    /// object with `embeddings`; read without building it, as it is only metered here).
    pub fn uncounted_embeddings_prompt(&self, status: u16, body: &[u8]) -> Option<u64> {
        #[derive(serde::Deserialize)]
        struct Answer {
            embeddings: Option<serde::de::IgnoredAny>,
        }
        let asked = self.embeddings?;
        let answer: Answer = serde_json::from_slice(body).ok()?;
        ((200..300).contains(&status) && answer.embeddings.is_some()).then_some(asked.prompt_estimate)
    }

    pub fn stream(&self, created_unix_secs: u64) -> StreamTranslation {
        match self.direction {
            Direction::OpenAiToAnthropic => StreamTranslation::ToOpenAi(openai_anthropic::StreamTranslator::new(
                &self.client_model,
                created_unix_secs,
                self.include_usage,
                self.json_mode,
            )),
            Direction::AnthropicToOpenAi => {
                StreamTranslation::ToAnthropic(anthropic_openai::StreamTranslator::new(&self.client_model))
            }
            Direction::OpenAiToGemini => StreamTranslation::GeminiToOpenAi(openai_gemini::StreamTranslator::new(
                &self.client_model,
                created_unix_secs,
                self.include_usage,
            )),
            // The middle stream always carries the usage chunk: the Anthropic side needs it.
            Direction::AnthropicToGemini => StreamTranslation::GeminiToAnthropic(Box::new((
                openai_gemini::StreamTranslator::new(&self.client_model, created_unix_secs, true),
                anthropic_openai::StreamTranslator::new(&self.client_model),
            ))),
            Direction::OpenAiToBedrock => {
                StreamTranslation::BedrockToOpenAi(Box::new(openai_bedrock::StreamTranslator::new(
                    &self.client_model,
                    created_unix_secs,
                    self.include_usage,
                    self.json_mode,
                )))
            }
            Direction::AnthropicToBedrock => StreamTranslation::BedrockToAnthropic(Box::new((
                openai_bedrock::StreamTranslator::new(&self.client_model, created_unix_secs, true, false),
                anthropic_openai::StreamTranslator::new(&self.client_model),
            ))),
            // Embeddings never stream: a provider that streams one anyway gets the client an
            // error, as an answer it cannot translate.
            Direction::OpenAiEmbeddingsToGemini | Direction::OpenAiEmbeddingsToBedrock => {
                StreamTranslation::NotAStream(ErrorFormat::OpenAi)
            }
        }
    }
}

/// A stream being translated, chunk by chunk.
#[derive(Debug)]
pub enum StreamTranslation {
    ToOpenAi(openai_anthropic::StreamTranslator),
    ToAnthropic(anthropic_openai::StreamTranslator),
    GeminiToOpenAi(openai_gemini::StreamTranslator),
    /// Gemini's events to OpenAI chunks, those to Anthropic events (boxed: the pair is twice
    /// the size of the others).
    GeminiToAnthropic(Box<(openai_gemini::StreamTranslator, anthropic_openai::StreamTranslator)>),
    /// AWS's binary event stream to OpenAI chunks.
    BedrockToOpenAi(Box<openai_bedrock::StreamTranslator>),
    /// AWS's event stream to OpenAI chunks, those to Anthropic events.
    BedrockToAnthropic(Box<(openai_bedrock::StreamTranslator, anthropic_openai::StreamTranslator)>),
    /// A stream where the request asked for none (embeddings): nothing of it is sent on, and the
    /// client gets an error in its format when it ends.
    NotAStream(ErrorFormat),
}

impl StreamTranslation {
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        match self {
            Self::ToOpenAi(t) => t.feed(chunk, end_of_stream),
            Self::ToAnthropic(t) => t.feed(chunk, end_of_stream),
            Self::GeminiToOpenAi(t) => t.feed(chunk, end_of_stream),
            Self::GeminiToAnthropic(pair) => {
                let (gemini, anthropic) = &mut **pair;
                anthropic.feed(&gemini.feed(chunk, end_of_stream), end_of_stream)
            }
            Self::BedrockToOpenAi(t) => t.feed(chunk, end_of_stream),
            Self::BedrockToAnthropic(pair) => {
                let (bedrock, anthropic) = &mut **pair;
                anthropic.feed(&bedrock.feed(chunk, end_of_stream), end_of_stream)
            }
            Self::NotAStream(format) if end_of_stream => GatewayError::Untranslatable {
                detail: "the provider streamed an answer to a request that does not stream".into(),
            }
            .body_for(*format),
            Self::NotAStream(_) => Vec::new(),
        }
    }

    /// What the provider reported (the request is charged this).
    pub fn usage(&self) -> Usage {
        match self {
            Self::ToOpenAi(t) => t.usage(),
            Self::ToAnthropic(t) => t.usage(),
            Self::GeminiToOpenAi(t) => t.usage(),
            Self::GeminiToAnthropic(pair) => pair.0.usage(),
            Self::BedrockToOpenAi(t) => t.usage(),
            Self::BedrockToAnthropic(pair) => pair.0.usage(),
            Self::NotAStream(_) => Usage::default(),
        }
    }

    /// The provider's stream ended properly.
    pub fn completed(&self) -> bool {
        match self {
            Self::ToOpenAi(t) => t.completed(),
            Self::ToAnthropic(t) => t.completed(),
            Self::GeminiToOpenAi(t) => t.completed(),
            Self::GeminiToAnthropic(pair) => pair.0.completed(),
            Self::BedrockToOpenAi(t) => t.completed(),
            Self::BedrockToAnthropic(pair) => pair.0.completed(),
            Self::NotAStream(_) => false,
        }
    }
}
