//! LiteLLM's management REST API (`/key/generate`, `/key/info`, …) on the admin port, beside
//! the gRPC services: a thin mapping of LiteLLM's request and response shapes onto the same
//! services, so one code path authorises, validates and audits both (the caller's
//! `Authorization: Bearer …`, or LiteLLM's `x-litellm-api-key`, becomes the gRPC metadata the
//! services read). Keys first; the rest of LiteLLM's management surface follows (issue 13).

mod audit;
mod budgets;
mod customers;
mod keys;
mod limits;
mod models;
mod organizations;
mod spend;
mod spend_report;
mod teams;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

use crate::admin::Admin;
use crate::store::Store;

/// The largest request body a management call takes (LiteLLM's bodies are small objects).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The REST routes, to be served with the admin port's gRPC services.
pub fn router<S: Store>(admin: Arc<Admin<S>>) -> Router {
    keys::routes::<S>()
        .merge(teams::routes::<S>())
        .merge(users::routes::<S>())
        .merge(organizations::routes::<S>())
        .merge(customers::routes::<S>())
        .merge(budgets::routes::<S>())
        .merge(models::routes::<S>())
        .merge(spend::routes::<S>())
        .merge(spend_report::routes::<S>())
        .merge(audit::routes::<S>())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(admin)
}

/// A refusal in LiteLLM's shape (its `ProxyException`): `{"error": {"message", "type",
/// "param", "code"}}`, the code being the HTTP status as a string.
#[derive(Debug)]
pub struct RestError {
    status: StatusCode,
    message: String,
    param: Option<String>,
}

impl RestError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        RestError { status: StatusCode::BAD_REQUEST, message: message.into(), param: None }
    }

    /// A field of the wrong type or shape (LiteLLM's pydantic answers 422).
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        RestError { status: StatusCode::UNPROCESSABLE_ENTITY, message: message.into(), param: Some(param.to_owned()) }
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 | 403 => "auth_error",
            404 => "not_found_error",
            422 => "validation_error",
            429 => "rate_limit_error",
            500..=599 => "internal_server_error",
            _ => "bad_request_error",
        }
    }
}

impl From<tonic::Status> for RestError {
    /// The services' refusals, by their gRPC code (their messages are already the client's).
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let http = match status.code() {
            Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        RestError { status: http, message: status.message().to_owned(), param: None }
    }
}

impl From<axum::extract::rejection::BytesRejection> for RestError {
    /// A body that could not be read: over [`MAX_BODY_BYTES`] (413), or cut off.
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than {MAX_BODY_BYTES} bytes")
        } else {
            format!("the request body could not be read: {}", rejection.body_text())
        };
        RestError { status, message, param: None }
    }
}

/// A request body as the handlers take it: a body that could not be read is answered in
/// LiteLLM's shape, not axum's plain text.
pub type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.status.as_u16().to_string(),
        }});
        json_response(self.status, &body)
    }
}

pub type RestResult = Result<Response, RestError>;

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A gRPC request for the services, carrying the REST caller's credential as they expect it.
pub fn grpc_request<T>(headers: &HeaderMap, message: T) -> Result<tonic::Request<T>, RestError> {
    let mut request = tonic::Request::new(message);
    // LiteLLM's clients send `Authorization: Bearer <key>`, or the key in `x-litellm-api-key`.
    let credential = match (headers.get(header::AUTHORIZATION), headers.get("x-litellm-api-key")) {
        (Some(value), _) => Some(value.as_bytes().to_vec()),
        (None, Some(key)) => {
            let key = key.as_bytes();
            Some(if key.starts_with(b"Bearer ") { key.to_vec() } else { [b"Bearer ".as_slice(), key].concat() })
        }
        (None, None) => None,
    };
    if let Some(credential) = credential {
        let value = MetadataValue::try_from(credential.as_slice())
            .map_err(|_| RestError::bad_request("the Authorization header is not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A JSON body as `T`: not JSON is a 400, a field of the wrong type a 422 naming it. Fields
/// `T` does not know are ignored, as LiteLLM ignores them.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, RestError> {
    if body.is_empty() {
        return Err(RestError::bad_request("the request body must be a JSON object"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| RestError::bad_request(format!("the request body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(RestError::bad_request("the request body must be a JSON object"));
    }
    serde_json::from_value(value.clone()).map_err(|e| {
        let message = e.to_string();
        // serde names a missing field in its message ("missing field `key`"), not a field of
        // the wrong type: that one is the field without which the body parses.
        let culprit = value.as_object().and_then(|fields| {
            fields.keys().find(|name| {
                let mut rest = fields.clone();
                rest.remove(*name);
                match serde_json::from_value::<T>(Value::Object(rest)) {
                    Ok(_) => true,
                    // A required field of the wrong type: without it, it is missing.
                    Err(e) => e.to_string().starts_with(&format!("missing field `{name}`")),
                }
            })
        });
        let param = match culprit {
            Some(name) => name.clone(),
            None => message.split('`').nth(1).unwrap_or("body").to_owned(),
        };
        RestError::invalid(&param, format!("invalid request body: {param}: {message}"))
    })
}

/// A query string as `T` (`?key=…&page=2`), a bad value a 422 naming it.
pub fn parse_query<T: DeserializeOwned>(query: Option<&str>) -> Result<T, RestError> {
    serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| {
        let message = e.to_string();
        let param = message.split('`').nth(1).unwrap_or("query").to_owned();
        RestError::invalid(&param, format!("invalid query parameters: {message}"))
    })
}

/// Settings LiteLLM has that Sluice would not enforce: refused by name when given (a stored
/// setting nothing enforces would look like protection that is not there).
pub fn refuse_unsupported(body: &Value, names: &[&str]) -> Result<(), RestError> {
    let given = |name: &&&str| body.get(**name).is_some_and(|v| !v.is_null() && v != &json!({}) && v != &json!([]));
    match names.iter().find(given) {
        Some(name) => Err(RestError::bad_request(format!("{name}: not supported by Sluice"))),
        None => Ok(()),
    }
}

/// Settings given as "off" (`false`, a `spend` of 0) ask for nothing Sluice lacks: a client that
/// sends LiteLLM's defaults is not refused for them.
pub fn refuse_unless_off(body: &Value, names: &[&str]) -> Result<(), RestError> {
    let mut given = body.clone();
    if let Some(fields) = given.as_object_mut() {
        fields.retain(|name, v| !(v == &json!(false) || (name == "spend" && v.as_f64() == Some(0.0))));
    }
    refuse_unsupported(&given, names)?;
    refuse_unsupported(&given, &["spend"])
}
