//! Vertex AI's OAuth 2 access tokens, minted here and handed to Envoy.
//!
//! Google's REST APIs take an access token, and Envoy 1.40 has no filter that mints one:
//! `gcp_authn` fetches identity tokens (which Vertex refuses) and the OAuth2 credential
//! injector speaks client credentials only. So the control plane mints each token and the xDS
//! snapshot carries it as an SDS secret that the deployment's cluster sets as
//! `authorization: Bearer …` (Envoy's `credential_injector`, as for API keys). A private key
//! never leaves this process; a token never enters a filter's config or a log line.
//!
//! Where a token comes from (LiteLLM's `vertex_credentials`, else Google's application default
//! credentials, as Google's own libraries look for them):
//! - a service account's JSON key: a JWT signed RS256 with its private key, exchanged at its
//!   `token_uri` (RFC 7523's bearer grant);
//! - an authorized user's JSON (`gcloud auth application-default login`): its refresh token
//!   exchanged at its `token_uri`;
//! - neither (no `vertex_credentials`, no `GOOGLE_APPLICATION_CREDENTIALS`): the metadata
//!   server of GKE's workload identity, GCE or Cloud Run (`GCE_METADATA_HOST`, else
//!   `metadata.google.internal`).
//!
//! The first snapshot rebuild that asks for a source's token starts a task that keeps it
//! fresh: it fetches one, and another when it is due (five minutes before it expires, or
//! halfway through its life when that is shorter). A failed fetch keeps the previous token
//! while it is valid, is retried after 1 s doubling to a minute, and is logged once per
//! distinct error. A new token wakes the snapshot writer, so Envoys get it at once. A source
//! no rebuild has asked for in ten minutes (its deployments are gone) is dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::body::Bytes;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use sluice_core::litellm::GoogleCredentials;
use tokio::sync::Notify;

use crate::http_client::{self, Call, HttpTarget};

/// What a token lets its holder do: Vertex AI (Google's scope for it is the platform's).
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint when a credentials file names none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// How long a service account's assertion is valid (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Refresh this long before expiry (or halfway through a shorter life).
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// A token endpoint or metadata server that has not answered by then has failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The tokens of every credential source deployments name.
#[derive(Debug)]
pub struct GoogleTokens {
    sources: Mutex<HashMap<GoogleCredentials, Source>>,
    /// The snapshot writer's wake-up: a new token is a new SDS secret.
    changed: Arc<Notify>,
    /// `SSL_CERT_FILE`: CAs trusted besides Mozilla's roots (a private token endpoint's).
    extra_roots: Option<PathBuf>,
}

/// One source's state.
#[derive(Debug)]
struct Source {
    token: Option<Token>,
    /// Its refresh task is running.
    running: bool,
    /// When a snapshot last asked for it: a source no deployment names any more is dropped.
    last_asked: Instant,
    /// The last failure logged (the next identical one is not).
    logged: Option<String>,
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    expires_at: Instant,
    refresh_at: Instant,
}

/// A source not asked for this long (its deployments are gone) stops being refreshed.
const UNUSED_AFTER: Duration = Duration::from_secs(600);

impl GoogleTokens {
    pub fn new(changed: Arc<Notify>, extra_roots: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self { sources: Mutex::default(), changed, extra_roots })
    }

    /// The token to give Envoy now for `source`, if a valid one is held; starts the source's
    /// refresh task when it has none (outside a tokio runtime: never).
    pub fn current(self: &Arc<Self>, source: &GoogleCredentials) -> Option<String> {
        let now = Instant::now();
        let Ok(mut sources) = self.sources.lock() else { return None };
        let state = sources.entry(source.clone()).or_insert_with(|| Source {
            token: None,
            running: false,
            last_asked: now,
            logged: None,
        });
        state.last_asked = now;
        if !state.running
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            state.running = true;
            runtime.spawn(Arc::clone(self).keep_fresh(source.clone()));
        }
        state.token.as_ref().filter(|t| t.expires_at > now).map(|t| t.value.clone())
    }

    /// A source's refresh task: fetch, then sleep until the token is due (or out a backoff
    /// after a failure), until no snapshot has asked for the source for [`UNUSED_AFTER`].
    async fn keep_fresh(self: Arc<Self>, source: GoogleCredentials) {
        let mut backoff = Duration::ZERO;
        loop {
            let fetched = match tokio::time::timeout(FETCH_TIMEOUT, fetch(&source, self.extra_roots.clone())).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())),
            };
            let now = Instant::now();
            let (wait, got_one) = {
                let Ok(mut sources) = self.sources.lock() else { return };
                let Some(state) = sources.get_mut(&source) else { return };
                if now.duration_since(state.last_asked) > UNUSED_AFTER {
                    sources.remove(&source);
                    return;
                }
                match fetched {
                    Ok(token) => {
                        backoff = Duration::ZERO;
                        state.logged = None;
                        let wait = token.refresh_at.saturating_duration_since(now);
                        state.token = Some(token);
                        (wait, true)
                    }
                    Err(why) => {
                        backoff = (backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                        if state.logged.as_deref() != Some(why.as_str()) {
                            eprintln!("sluice: vertex ai: no access token from {}: {why}", describe(&source));
                            state.logged = Some(why);
                        }
                        (backoff, false)
                    }
                }
            };
            if got_one {
                self.changed.notify_one();
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Standalone mode (no control plane to serve SDS): the SDS secret of deployment cluster
/// `cluster` lives in `<dir>/<sds_file_name>`, which Envoy's bootstrap names and re-reads when
/// [`keep_files_fresh`] replaces it.
pub fn sds_file_name(cluster: &str) -> String {
    format!("{cluster}.json")
}

/// The SDS secret's name for deployment cluster `cluster`.
pub fn secret_name(cluster: &str) -> String {
    format!("sluice-vertex-{cluster}")
}

/// `sluice google-tokens`: keeps each Vertex AI deployment's token in its SDS file in `dir`
/// (written to a temporary file and renamed over it, the move Envoy watches for; mode 0600),
/// rewriting a file whenever its source's token changes. `ready` is called once every
/// deployment has a file. Runs until the process stops.
pub async fn keep_files_fresh(
    deployments: Vec<(String, GoogleCredentials)>,
    dir: PathBuf,
    extra_roots: Option<PathBuf>,
    ready: impl FnOnce(),
) -> Result<(), String> {
    let changed = Arc::new(Notify::new());
    let tokens = GoogleTokens::new(Arc::clone(&changed), extra_roots);
    let mut written: HashMap<String, String> = HashMap::new();
    let mut ready = Some(ready);
    loop {
        for (cluster, source) in &deployments {
            let Some(token) = tokens.current(source) else { continue };
            if written.get(cluster) == Some(&token) {
                continue;
            }
            write_sds_file(&dir, cluster, &token)?;
            written.insert(cluster.clone(), token);
        }
        if written.len() == deployments.len()
            && let Some(ready) = ready.take()
        {
            ready();
        }
        // A new token wakes this at once; the sources are asked again every few seconds.
        let _ = tokio::time::timeout(Duration::from_secs(5), changed.notified()).await;
    }
}

fn write_sds_file(dir: &std::path::Path, cluster: &str, token: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let secret = serde_json::json!({"resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": secret_name(cluster),
        "generic_secret": {"secret": {"inline_string": token}},
    }]});
    let path = dir.join(sds_file_name(cluster));
    let temporary = dir.join(format!(".{}.tmp", sds_file_name(cluster)));
    // Never the token in an error: only the file's name.
    let failed = |e: std::io::Error| format!("cannot write {}: {}", path.display(), e.kind());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(failed)?;
    file.write_all(secret.to_string().as_bytes()).and_then(|()| file.sync_all()).map_err(failed)?;
    std::fs::rename(&temporary, &path).map_err(failed)
}

/// What a log line may say of a source: never the JSON an environment variable holds.
fn describe(source: &GoogleCredentials) -> String {
    match source {
        GoogleCredentials::File(path) => format!("the credentials file {path}"),
        GoogleCredentials::Env(name) => format!("the credentials in ${name}"),
        GoogleCredentials::ApplicationDefault => "the application default credentials".into(),
    }
}

/// A credentials file's fields that matter here.
#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    token_uri: Option<String>,
}

/// A token endpoint's (or the metadata server's) answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

/// Fetches a token for `source` (the environment is read now: a rotated key file is used).
async fn fetch(source: &GoogleCredentials, extra_roots: Option<PathBuf>) -> Result<Token, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let json = match source {
        GoogleCredentials::File(path) => Some(read(path)?),
        GoogleCredentials::Env(name) => {
            let value = env(name).ok_or_else(|| format!("${name} is not set"))?;
            // The JSON itself, or its path.
            Some(if value.trim_start().starts_with('{') { value } else { read(&value)? })
        }
        GoogleCredentials::ApplicationDefault => env("GOOGLE_APPLICATION_CREDENTIALS").map(|p| read(&p)).transpose()?,
    };
    let (url, request) = match json {
        Some(json) => token_request(&json, unix_now())?,
        None => metadata_request(env("GCE_METADATA_HOST").as_deref()),
    };
    let target = HttpTarget::parse(&url, "the token endpoint", extra_roots.as_deref())?;
    let call = Call { method: request.method, headers: &request.headers, body: request.body };
    let answer = http_client::call(&target, call).await.map_err(|f| f.why)?;
    let issued = Instant::now();
    if !answer.status.is_success() {
        return Err(format!(
            "{} answered HTTP {}{}",
            target.authority(),
            answer.status.as_u16(),
            oauth_error(&answer.body)
        ));
    }
    let token: TokenAnswer = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("{} answered without an access token: {e}", target.authority()))?;
    if token.access_token.is_empty() || token.access_token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!("{} answered an unusable access token", target.authority()));
    }
    let life = Duration::from_secs(token.expires_in);
    Ok(Token {
        value: token.access_token,
        expires_at: issued + life,
        refresh_at: issued + life.saturating_sub(REFRESH_AHEAD.min(life / 2)),
    })
}

/// An OAuth error's `error` and `error_description` (RFC 6749's; never a token).
fn oauth_error(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct OAuthError {
        error: Option<String>,
        error_description: Option<String>,
    }
    let Ok(e) = serde_json::from_slice::<OAuthError>(body) else { return String::new() };
    let short = |s: String| s.chars().take(200).collect::<String>();
    match (e.error.map(short), e.error_description.map(short)) {
        (Some(error), Some(description)) => format!(": {error}: {description}"),
        (Some(error), None) => format!(": {error}"),
        _ => String::new(),
    }
}

fn read(path: &str) -> Result<String, String> {
    // The error names the path, never the content.
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {}", e.kind()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A request to send: to where, and what.
#[derive(Debug)]
struct TokenRequest {
    method: hyper::Method,
    headers: Vec<(&'static str, &'static str)>,
    body: Bytes,
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// The token request a credentials file asks for: a service account's signed assertion, or an
/// authorized user's refresh token, to its `token_uri`.
fn token_request(json: &str, now: u64) -> Result<(String, TokenRequest), String> {
    let file: CredentialsFile =
        serde_json::from_str(json).map_err(|e| format!("the credentials are not a Google credentials JSON: {e}"))?;
    let token_uri = file.token_uri.clone().unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned());
    let form = match file.kind.as_str() {
        "service_account" => {
            let assertion = assertion(&file, &token_uri, now)?;
            serde_urlencoded::to_string([
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
        }
        "authorized_user" => {
            let field = |v: &Option<String>, name: &str| {
                v.clone().filter(|v| !v.is_empty()).ok_or_else(|| format!("the authorized_user credentials have no {name}"))
            };
            serde_urlencoded::to_string([
                ("grant_type", "refresh_token".to_owned()),
                ("client_id", field(&file.client_id, "client_id")?),
                ("client_secret", field(&file.client_secret, "client_secret")?),
                ("refresh_token", field(&file.refresh_token, "refresh_token")?),
            ])
        }
        other => {
            return Err(format!(
                "credentials of type {other:?} are not supported (a service_account key or authorized_user credentials; \
                 on GKE or GCE leave vertex_credentials unset to use the metadata server)"
            ));
        }
    }
    .map_err(|e| format!("the token request could not be encoded: {e}"))?;
    Ok((token_uri, TokenRequest { method: hyper::Method::POST, headers: vec![FORM], body: Bytes::from(form) }))
}

/// A service account's JWT for Google's token endpoint (RS256 over its private key).
fn assertion(file: &CredentialsFile, token_uri: &str, now: u64) -> Result<String, String> {
    let email =
        file.client_email.as_deref().filter(|e| !e.is_empty()).ok_or("the service account key has no client_email")?;
    let pem = file.private_key.as_deref().ok_or("the service account key has no private_key")?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "the service account's private_key is not a PKCS#8 PEM key")?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| format!("the service account's private_key is not a usable RSA key: {e}"))?;
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = file.private_key_id.as_deref().filter(|k| !k.is_empty()) {
        header["kid"] = kid.into();
    }
    let claims = serde_json::json!({
        "iss": email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "signing the assertion failed")?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// The metadata server's token of the workload's own service account.
fn metadata_request(host: Option<&str>) -> (String, TokenRequest) {
    let host = host.unwrap_or("metadata.google.internal");
    let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
    (url, TokenRequest { method: hyper::Method::GET, headers: vec![("metadata-flavor", "Google")], body: Bytes::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An RSA key made for these tests (and the Vertex integration test) only: it grants nothing.
    const TEST_KEY: &str = include_str!("testdata/test-service-account-key.pem");

    fn service_account(token_uri: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "acme-ml",
            "private_key_id": "kid-1",
            "private_key": TEST_KEY,
            "client_email": "sluice@acme-ml.iam.gserviceaccount.com",
            "token_uri": token_uri,
        })
        .to_string()
    }

    fn form(body: &Bytes) -> HashMap<String, String> {
        serde_urlencoded::from_bytes(body).unwrap()
    }

    fn json_part(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    /// The assertion is the JWT Google's token endpoint wants, and its signature verifies
    /// with the service account's public key.
    #[test]
    fn a_service_account_signs_a_bearer_assertion_for_its_token_uri() {
        let (url, request) = token_request(&service_account("https://oauth2.example/token"), 1_700_000_000).unwrap();
        assert_eq!((url.as_str(), &request.method), ("https://oauth2.example/token", &hyper::Method::POST));
        assert_eq!(request.headers, [FORM]);
        let form = form(&request.body);
        assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
        let parts: Vec<&str> = form["assertion"].split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(json_part(parts[0]), serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "kid-1"}));
        assert_eq!(
            json_part(parts[1]),
            serde_json::json!({
                "iss": "sluice@acme-ml.iam.gserviceaccount.com",
                "scope": "https://www.googleapis.com/auth/cloud-platform",
                "aud": "https://oauth2.example/token",
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
        let der = PrivatePkcs8KeyDer::from_pem_slice(TEST_KEY.as_bytes()).unwrap();
        let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key.public().as_ref(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        // Another message does not verify: the check can fail.
        assert!(public.verify(b"other", &URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).is_err());
    }

    #[test]
    fn authorized_user_credentials_use_their_refresh_token_at_googles_endpoint() {
        let json = r#"{"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"}"#;
        let (url, request) = token_request(json, 0).unwrap();
        assert_eq!(url, DEFAULT_TOKEN_URI);
        let form = form(&request.body);
        assert_eq!(
            (
                form["grant_type"].as_str(),
                form["client_id"].as_str(),
                form["client_secret"].as_str(),
                form["refresh_token"].as_str()
            ),
            ("refresh_token", "c", "s", "r")
        );
        let e = token_request(r#"{"type": "authorized_user", "client_id": "c"}"#, 0).unwrap_err();
        assert!(e.contains("no client_secret"), "{e}");
    }

    /// What cannot mint a token says why, without repeating the credentials.
    #[test]
    fn unusable_credentials_are_refused_without_echoing_them() {
        let cases = [
            (r#"{"type": "external_account", "secret": "SECRETVALUE"}"#, "not supported"),
            (
                r#"{"type": "service_account", "client_email": "a@b", "private_key": "SECRETVALUE"}"#,
                "not a PKCS#8 PEM key",
            ),
            (r#"{"type": "service_account", "private_key": "SECRETVALUE"}"#, "no client_email"),
            ("SECRETVALUE", "not a Google credentials JSON"),
        ];
        for (json, why) in cases {
            let e = token_request(json, 0).unwrap_err();
            assert!(e.contains(why) && !e.contains("SECRETVALUE"), "{e}");
        }
    }

    #[test]
    fn the_metadata_server_is_asked_with_its_header() {
        let (url, request) = metadata_request(None);
        assert_eq!(url, "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token");
        assert_eq!((request.method, request.headers), (hyper::Method::GET, vec![("metadata-flavor", "Google")]));
        assert!(metadata_request(Some("127.0.0.1:8999")).0.starts_with("http://127.0.0.1:8999/computeMetadata/"));
    }

    /// A token endpoint answering each connection with the next of `answers` (status, body),
    /// the last repeating; counts what it was asked.
    async fn token_endpoint(answers: Vec<(u16, String)>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&asked);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (status, body) = answers[n.min(answers.len() - 1)].clone();
                let mut buf = vec![0; 16 * 1024];
                let _ = stream.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        (format!("http://{addr}/token"), asked)
    }

    async fn wait_for_token(tokens: &Arc<GoogleTokens>, source: &GoogleCredentials, not: Option<&str>) -> String {
        for _ in 0..200 {
            if let Some(token) = tokens.current(source).filter(|t| Some(t.as_str()) != not) {
                return token;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no token");
    }

    /// A token is fetched in the background, wakes the snapshot writer, and is fetched again by
    /// itself halfway through a short life; the old one serves meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_are_fetched_in_the_background_and_refreshed_before_they_expire() {
        let (url, asked) = token_endpoint(vec![
            (200, r#"{"access_token": "ya29.first", "expires_in": 2, "token_type": "Bearer"}"#.into()),
            (200, r#"{"access_token": "ya29.second", "expires_in": 3600, "token_type": "Bearer"}"#.into()),
        ])
        .await;
        let dir = std::env::temp_dir().join(format!("sluice-google-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sa.json");
        std::fs::write(&path, service_account(&url)).unwrap();
        let source = GoogleCredentials::File(path.display().to_string());
        let changed = Arc::new(Notify::new());
        let tokens = GoogleTokens::new(Arc::clone(&changed), None);
        assert_eq!(tokens.current(&source), None, "none yet: fetched in the background");
        let first = wait_for_token(&tokens, &source, None).await;
        assert_eq!(first, "ya29.first");
        tokio::time::timeout(Duration::from_secs(1), changed.notified()).await.expect("the writer is woken");
        // Due after half of its two seconds: refreshed without being asked.
        tokio::time::timeout(Duration::from_secs(3), changed.notified()).await.expect("woken again");
        let second = wait_for_token(&tokens, &source, Some("ya29.first")).await;
        assert_eq!(second, "ya29.second");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Not due again for an hour: no more calls.
        for _ in 0..5 {
            assert_eq!(tokens.current(&source).as_deref(), Some("ya29.second"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A refused grant gives no token, says why, and is not asked again before its backoff.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_grant_backs_off() {
        let refusal = r#"{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}"#;
        let (url, asked) = token_endpoint(vec![(400, refusal.into())]).await;
        let dir = std::env::temp_dir().join(format!("sluice-google-refused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sa.json");
        std::fs::write(&path, service_account(&url)).unwrap();
        let source = GoogleCredentials::File(path.display().to_string());
        let error = fetch(&source, None).await.unwrap_err();
        assert!(error.ends_with("answered HTTP 400: invalid_grant: Invalid JWT Signature."), "{error}");
        let asked_before = asked.load(std::sync::atomic::Ordering::SeqCst);
        let tokens = GoogleTokens::new(Arc::new(Notify::new()), None);
        assert_eq!(tokens.current(&source), None);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(tokens.current(&source), None);
        let count = || asked.load(std::sync::atomic::Ordering::SeqCst) - asked_before;
        assert_eq!(count(), 1, "not asked again within the first second's backoff");
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(tokens.current(&source), None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count(), 2, "asked again after it");
        let missing = fetch(&GoogleCredentials::File("/nonexistent/sa.json".into()), None).await.unwrap_err();
        assert!(missing.contains("cannot read /nonexistent/sa.json"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
