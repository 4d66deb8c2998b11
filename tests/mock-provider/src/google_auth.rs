//! Google's credentials for Vertex AI: the OAuth 2 token endpoint `POST /token` (as
//! `https://oauth2.googleapis.com/token`, a form: a service account's JWT assertion, grant type
//! `urn:ietf:params:oauth:grant-type:jwt-bearer`, or an authorized user's `refresh_token`) and
//! the GCE metadata server's `GET /computeMetadata/v1/instance/service-accounts/default/token`
//! (wants `Metadata-Flavor: Google`). Both issue `ya29.mock-…` access tokens that expire after
//! `--google-token-ttl` seconds, which the Vertex AI paths want under `--google-auth`. A JWT's
//! shape, header and claims are checked as Google checks them, its signature not (the gateway's
//! own tests verify that); errors are OAuth's `{"error":…,"error_description":…}`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::providers::Reply;
use crate::request::Received;
use crate::{Config, MockBody};

/// Google's token endpoint (`https://oauth2.googleapis.com/token`), at the mock's root.
pub const TOKEN_PATH: &str = "/token";
/// The metadata server's token for the instance's default service account.
pub const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// The scope Vertex AI wants a token for.
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google's words for an assertion whose `iat`/`exp` it refuses, verbatim.
const TIMEFRAME: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. \
                         Check your iat and exp values in the JWT claim.";
/// The longest lifetime past the clock any real one would give (ten years): no overflow.
const MAX_TTL_SECS: u64 = 315_360_000;

/// The access tokens issued, with their expiry. `/mock/reset` leaves them: a gateway's cached
/// token stays good across a test's reset, as Google's would.
#[derive(Default)]
pub struct Tokens {
    issued: AtomicU64,
    valid: Mutex<HashMap<String, Instant>>,
}

impl Tokens {
    /// A fresh access token good for `ttl` seconds, as Google's token JSON (Entra ID's has the
    /// same members).
    pub fn issue(&self, ttl: u64) -> Value {
        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        // The clock's nanoseconds keep two mocks in one process from issuing the same token.
        let salt = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let token = format!("ya29.mock-{n}-{salt:08x}");
        let now = Instant::now();
        if let Ok(mut valid) = self.valid.lock() {
            // Expired ones go, so a long benchmark's map stays small.
            valid.retain(|_, expiry| *expiry > now);
            valid.insert(token.clone(), now + Duration::from_secs(ttl.min(MAX_TTL_SECS)));
        }
        json!({"access_token": token, "expires_in": ttl, "token_type": "Bearer"})
    }

    /// Whether the request carries `Authorization: Bearer <token>` with a token issued here
    /// that has not expired.
    pub fn authorised(&self, received: &Received) -> bool {
        let Some((scheme, token)) = received.header("authorization").and_then(|v| v.trim().split_once(' ')) else {
            return false;
        };
        let now = Instant::now();
        scheme.eq_ignore_ascii_case("bearer")
            && self.valid.lock().is_ok_and(|valid| valid.get(token.trim()).is_some_and(|expiry| *expiry > now))
    }
}

/// `POST /token`: a token for a valid grant; OAuth's 400 naming what is wrong otherwise.
pub fn token(received: &Received, config: &Config, tokens: &Tokens) -> Reply {
    let form = form(&received.body);
    let field = |name: &str| form.get(name).map_or("", String::as_str);
    let checked = match field("grant_type") {
        JWT_BEARER => check_assertion(field("assertion"), unix_now()),
        "refresh_token" => check_refresh(field("client_id"), field("client_secret"), field("refresh_token")),
        other => {
            return Reply::json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "unsupported_grant_type", "error_description": format!("Invalid grant_type: {other}")}),
            );
        }
    };
    match checked {
        Ok(()) => Reply::ok(&tokens.issue(config.google_token_ttl_secs)),
        Err(why) => Reply::json(StatusCode::BAD_REQUEST, &json!({"error": "invalid_grant", "error_description": why})),
    }
}

/// The metadata server's token: as the token endpoint's, for a request with
/// `Metadata-Flavor: Google` (a 403 in plain text without it, as GCE's). Every answer carries
/// `Metadata-Flavor: Google`, which clients check to know they reached the metadata server.
pub fn metadata(received: &Received, config: &Config, tokens: &Tokens) -> Response<MockBody> {
    let mut response = if received.header("metadata-flavor") == Some("Google") {
        let body = serde_json::to_vec(&tokens.issue(config.google_token_ttl_secs)).unwrap_or_default();
        crate::json_response(StatusCode::OK, body)
    } else {
        let mut response = Response::new(MockBody::Full(Some(Bytes::from_static(
            b"Missing required header: Metadata-Flavor: Google\n",
        ))));
        *response.status_mut() = StatusCode::FORBIDDEN;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    };
    response.headers_mut().insert("metadata-flavor", HeaderValue::from_static("Google"));
    response
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// An `application/x-www-form-urlencoded` body's fields (the first of a repeated name wins).
pub fn form(body: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    for (name, value) in serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default() {
        fields.entry(name).or_insert(value);
    }
    fields
}

/// Unpadded base64url (RFC 4648 §5, as JWTs use it) decoded; None for anything else.
fn base64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// A service account's assertion, checked as Google checks it at `now` (Unix seconds): three
/// base64url parts, an RS256 JWT header, claims with an issuer, the cloud-platform scope, the
/// token endpoint as audience and an hour at most between `iat` and `exp`, unexpired and not
/// issued in the future (a minute's skew allowed), and a signature (not verified).
fn check_assertion(assertion: &str, now: i64) -> Result<(), String> {
    if assertion.is_empty() {
        return Err("Missing required parameter: assertion".to_owned());
    }
    let parts: Vec<&str> = assertion.split('.').collect();
    let decoded: Option<Vec<Vec<u8>>> = parts.iter().map(|p| base64url(p)).collect();
    let Some([header, claims, signature]) = decoded.and_then(|d| <[Vec<u8>; 3]>::try_from(d).ok()) else {
        return Err("Invalid JWT: not three dot-separated base64url parts without padding".to_owned());
    };
    let Ok(header) = serde_json::from_slice::<Value>(&header) else {
        return Err("Invalid JWT: the header is not JSON".to_owned());
    };
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(format!("Invalid JWT: alg must be RS256, not {}", header.get("alg").unwrap_or(&Value::Null)));
    }
    if header.get("typ").and_then(Value::as_str) != Some("JWT") {
        return Err(format!("Invalid JWT: typ must be JWT, not {}", header.get("typ").unwrap_or(&Value::Null)));
    }
    let Ok(claims) = serde_json::from_slice::<Value>(&claims) else {
        return Err("Invalid JWT: the claim set is not JSON".to_owned());
    };
    let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    if text("iss").trim().is_empty() {
        return Err("Invalid JWT: iss (the service account's email) is missing".to_owned());
    }
    if !text("scope").split_whitespace().any(|s| s == CLOUD_PLATFORM) {
        return Err(format!("Invalid JWT: scope does not include {CLOUD_PLATFORM}"));
    }
    if !text("aud").ends_with("/token") {
        return Err(format!("Invalid JWT: aud must be the token endpoint (…/token), not {:?}", text("aud")));
    }
    let (Some(iat), Some(exp)) = (claims.get("iat").and_then(Value::as_i64), claims.get("exp").and_then(Value::as_i64))
    else {
        return Err("Invalid JWT: iat and exp must be integers (Unix seconds)".to_owned());
    };
    if exp <= now {
        return Err(format!("{TIMEFRAME} (exp {exp} is past, now {now})"));
    }
    if exp.saturating_sub(iat) > 3600 {
        return Err(format!("{TIMEFRAME} (exp - iat is {}s, over 3600)", exp.saturating_sub(iat)));
    }
    if iat > now.saturating_add(60) {
        return Err(format!("{TIMEFRAME} (iat {iat} is in the future, now {now})"));
    }
    if signature.is_empty() {
        return Err("Invalid JWT Signature.".to_owned());
    }
    Ok(())
}

/// gcloud's user credentials ("authorized_user"): all three present.
fn check_refresh(client_id: &str, client_secret: &str, refresh_token: &str) -> Result<(), String> {
    let missing: Vec<&str> =
        [("client_id", client_id), ("client_secret", client_secret), ("refresh_token", refresh_token)]
            .into_iter()
            .filter(|(_, value)| value.is_empty())
            .map(|(name, _)| name)
            .collect();
    if missing.is_empty() { Ok(()) } else { Err(format!("Missing required parameter: {}", missing.join(", "))) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn jwt(header: &Value, claims: &Value) -> String {
        format!(
            "{}.{}.{}",
            encode(header.to_string().as_bytes()),
            encode(claims.to_string().as_bytes()),
            encode(b"sig")
        )
    }

    const NOW: i64 = 1_700_000_000;

    fn header() -> Value {
        json!({"alg": "RS256", "typ": "JWT", "kid": "k1"})
    }

    fn claims() -> Value {
        json!({"iss": "sa@p.iam.gserviceaccount.com", "scope": format!("openid {CLOUD_PLATFORM}"),
            "aud": "https://oauth2.googleapis.com/token", "iat": NOW, "exp": NOW + 3600})
    }

    fn received(body: &str, headers: &[(&str, &str)]) -> Received {
        Received {
            path: TOKEN_PATH.to_owned(),
            query: None,
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<HashMap<_, _>>(),
            body: Bytes::from(body.to_owned()),
        }
    }

    fn json_of(reply: &Reply) -> (u16, Value) {
        match reply {
            Reply::Json { status, body } => (status.as_u16(), serde_json::from_slice(body).unwrap()),
            Reply::Stream { .. } => panic!("a token answer is not a stream"),
        }
    }

    #[test]
    fn base64url_round_trips_and_refuses_padding_and_other_alphabets() {
        for text in ["", "a", "ab", "abc", "abcd", "\u{ff}\u{fe}?>"] {
            assert_eq!(base64url(&encode(text.as_bytes())).unwrap(), text.as_bytes(), "{text}");
        }
        assert_eq!(encode(b"\xfb\xff"), "-_8");
        for bad in ["YQ==", "a+b/", "abcde", "a b"] {
            assert_eq!(base64url(bad), None, "{bad}");
        }
    }

    #[test]
    fn forms_decode_percent_escapes_and_plus() {
        let form = form(b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&a=x+y%2Bz&a=second");
        assert_eq!(form["grant_type"], JWT_BEARER);
        assert_eq!(form["a"], "x y+z", "the first value wins");
    }

    #[test]
    fn a_well_formed_assertion_passes() {
        assert_eq!(check_assertion(&jwt(&header(), &claims()), NOW), Ok(()));
        // A minute of clock skew is allowed, and any token endpoint's address.
        let mut skewed = claims();
        skewed["iat"] = json!(NOW + 60);
        skewed["aud"] = json!("http://127.0.0.1:8081/token");
        assert_eq!(check_assertion(&jwt(&header(), &skewed), NOW), Ok(()));
    }

    #[test]
    fn assertions_are_refused_naming_what_is_wrong() {
        let good = jwt(&header(), &claims());
        let (h, c) = (good.split('.').next().unwrap(), good.split('.').nth(1).unwrap());
        let with = |field: &str, value: Value| {
            let mut claims = claims();
            claims[field] = value;
            jwt(&header(), &claims)
        };
        let without = |field: &str| {
            let mut claims = claims();
            claims.as_object_mut().unwrap().remove(field);
            jwt(&header(), &claims)
        };
        let cases = [
            (String::new(), "Missing required parameter: assertion"),
            (format!("{h}.{c}"), "not three dot-separated"),
            (format!("{h}.{c}.sig.more"), "not three dot-separated"),
            (format!("{h}=.{c}.c2ln"), "without padding"),
            (format!("{h}.{c}+.c2ln"), "base64url"),
            (format!("{}.{c}.c2ln", encode(b"not json")), "header is not JSON"),
            (jwt(&json!({"alg": "HS256", "typ": "JWT"}), &claims()), "alg must be RS256, not \"HS256\""),
            (jwt(&json!({"alg": "none"}), &claims()), "alg must be RS256"),
            (jwt(&json!({"alg": "RS256"}), &claims()), "typ must be JWT"),
            (format!("{h}.{}.c2ln", encode(b"[1")), "claim set is not JSON"),
            (without("iss"), "iss"),
            (with("iss", json!("  ")), "iss"),
            (without("scope"), "scope does not include"),
            (with("scope", json!("https://www.googleapis.com/auth/cloud-platform.read-only")), "scope"),
            (with("aud", json!("https://oauth2.googleapis.com/")), "aud must be the token endpoint"),
            (without("iat"), "must be integers"),
            (with("exp", json!("soon")), "must be integers"),
            (with("exp", json!(1.7e9)), "must be integers"),
            (with("exp", json!(NOW)), "exp 1700000000 is past"),
            (with("exp", json!(NOW - 10)), "Token must be a short-lived token"),
            (with("exp", json!(NOW + 3601)), "over 3600"),
            (with("iat", json!(NOW + 61)), "in the future"),
            (format!("{h}.{c}."), "Invalid JWT Signature."),
        ];
        for (assertion, wanted) in cases {
            let why = check_assertion(&assertion, NOW).unwrap_err();
            assert!(why.contains(wanted), "{assertion}: {why}");
        }
    }

    #[test]
    fn the_token_endpoint_issues_tokens_for_good_grants_only() {
        let (config, tokens) = (Config { google_token_ttl_secs: 120, ..Config::default() }, Tokens::default());
        let mut claims = claims();
        let now = unix_now();
        claims["iat"] = json!(now);
        claims["exp"] = json!(now + 3600);
        let grant = |header: &Value| {
            let assertion = jwt(header, &claims);
            format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}")
        };
        let body = grant(&header());
        let (status, v) = json_of(&token(&received(&body, &[]), &config, &tokens));
        assert_eq!(status, 200, "{v}");
        assert_eq!((v["expires_in"].as_u64(), v["token_type"].as_str()), (Some(120), Some("Bearer")));
        let access = v["access_token"].as_str().unwrap();
        assert!(access.starts_with("ya29.mock-1-"), "{access}");
        let bearer = format!("Bearer {access}");
        assert!(tokens.authorised(&received("", &[("authorization", &bearer)])));
        let refresh =
            "grant_type=refresh_token&client_id=c.apps.googleusercontent.com&client_secret=s&refresh_token=1%2F%2Fr";
        let (status, v) = json_of(&token(&received(refresh, &[]), &config, &tokens));
        assert_eq!(status, 200, "{v}");
        assert_ne!(v["access_token"].as_str(), Some(access));
        assert_eq!(tokens.issued.load(Ordering::Relaxed), 2);

        let hs256 = grant(&json!({"alg": "HS256", "typ": "JWT"}));
        let refused = [
            ("grant_type=refresh_token&client_id=c&refresh_token=r", "invalid_grant", "client_secret"),
            (
                "grant_type=refresh_token&client_id=&client_secret=s&refresh_token=",
                "invalid_grant",
                "client_id, refresh_token",
            ),
            (&hs256, "invalid_grant", "alg must be RS256"),
            (&body[..body.len() - 5], "invalid_grant", "Invalid JWT"),
            ("grant_type=client_credentials", "unsupported_grant_type", "Invalid grant_type: client_credentials"),
            ("assertion=x", "unsupported_grant_type", "Invalid grant_type: "),
        ];
        for (body, error, description) in refused {
            let (status, v) = json_of(&token(&received(body, &[]), &config, &tokens));
            assert_eq!((status, v["error"].as_str()), (400, Some(error)), "{body}");
            assert!(v["error_description"].as_str().unwrap().contains(description), "{body}: {v}");
        }
        assert_eq!(tokens.issued.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn bearer_tokens_must_be_issued_here_and_unexpired() {
        let tokens = Tokens::default();
        let live = tokens.issue(60)["access_token"].as_str().unwrap().to_owned();
        let dead = tokens.issue(0)["access_token"].as_str().unwrap().to_owned();
        let authorised = |value: &str| tokens.authorised(&received("", &[("authorization", value)]));
        assert!(authorised(&format!("Bearer {live}")));
        assert!(authorised(&format!("bearer {live}")));
        assert!(!authorised(&format!("Bearer {dead}")), "a token past its ttl");
        assert!(!authorised("Bearer ya29.mock-9-0"), "a token never issued");
        assert!(!authorised(&format!("Basic {live}")));
        assert!(!authorised(&live));
        assert!(!tokens.authorised(&received("", &[])));
        // Issuing drops the expired ones.
        tokens.issue(60);
        assert!(tokens.valid.lock().unwrap().get(&dead).is_none());
    }

    #[test]
    fn the_metadata_server_wants_its_header() {
        let (config, tokens) = (Config::default(), Tokens::default());
        let response = metadata(&received("", &[]), &config, &tokens);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()["metadata-flavor"], "Google");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        let response = metadata(&received("", &[("metadata-flavor", "Google")]), &config, &tokens);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["metadata-flavor"], "Google");
        assert_eq!(tokens.issued.load(Ordering::Relaxed), 1);
    }
}
