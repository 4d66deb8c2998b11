//! What every API reads of a request alike: the request as it arrived, and what a path that
//! names its model (Gemini's, Bedrock's, Vertex AI's) asks for.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;

/// A request as it arrived: its path, raw query string, headers (lowercase names) and body.
pub struct Received {
    pub path: String,
    pub query: Option<String>,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The values the query string gives `name`, in order (`name=value` pairs, not decoded).
    pub fn query_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        let pairs = self.query.as_deref().map(|q| q.split('&')).into_iter().flatten();
        pairs.filter_map(move |pair| pair.strip_prefix(name)?.strip_prefix('='))
    }

    /// The body as JSON, None when it is not.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What a path that names its model asks for (Gemini's `models/{model}:…`, Bedrock's
/// `/model/{modelId}/…`, Vertex AI's `…/publishers/{p}/models/{model}:…`): a generation by that
/// model, streamed or not, embeddings, a token count, or nothing it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Model {
        model: String,
        stream: bool,
    },
    /// Embeddings by that model (Gemini's `:batchEmbedContents`, Bedrock's `/invoke` of a
    /// Titan or Cohere embedding model).
    Embed {
        model: String,
    },
    /// A count of the prompt's tokens for that model (Gemini's `:countTokens`, Claude on
    /// Vertex's `count-tokens:rawPredict`, whose body names the model).
    Count {
        model: String,
    },
    /// Another method or operation, or a path without a usable model: the provider's 404.
    NotFound,
}

impl Target {
    pub fn model(&self) -> Option<&str> {
        match self {
            Target::Model { model, .. } | Target::Embed { model } | Target::Count { model } => Some(model),
            Target::NotFound => None,
        }
    }

    pub fn stream(&self) -> bool {
        matches!(self, Target::Model { stream: true, .. })
    }
}
