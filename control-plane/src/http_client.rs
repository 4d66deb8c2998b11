//! A small HTTP/1 client for the control plane's own calls out (budget webhooks, Google's
//! token endpoints): hyper on a fresh connection per call, over rustls (ring) for https. The
//! server's certificate must chain to a root of `webpki-roots` (Mozilla's, compiled in) or to a
//! CA in the PEM file `SSL_CERT_FILE` names (added to those roots, for private CAs), and name
//! the URL's host (SNI and the hostname check are rustls's; verification is never turned off).
//! Errors never repeat a URL beyond `host[:port]`: a path often carries a secret.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

/// An `http(s)://host[:port][/path][?query]` URL, split for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host[:port]` as written (the `Host` header).
    pub(crate) authority: String,
    /// Path and query (`/` when the URL has none).
    pub(crate) path: String,
}

impl HttpUrl {
    /// `what` names the setting in errors, which never repeat the URL: a webhook URL often
    /// carries a secret in its path.
    pub fn parse(url: &str, what: &str) -> Result<Self, String> {
        let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => return Err(format!("{what} must be an http:// or https:// URL")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
        if authority.is_empty() || authority.contains('@') || path.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!("{what} must be http(s)://host[:port][/path] (no user info, no spaces)"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            // [v6]:port
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(|| format!("{what}: unclosed [ in the host"))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            None if https => 443,
            None => 80,
            Some(p) => p.parse::<u16>().map_err(|_| format!("{what}: the port is not a number from 0 to 65535"))?,
        };
        if host.is_empty() {
            return Err(format!("{what} has no host"));
        }
        Ok(Self { https, host: host.to_owned(), port, authority: authority.to_owned(), path })
    }

    /// `host[:port]`: what may be logged (the path may hold a secret).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    pub fn is_https(&self) -> bool {
        self.https
    }
}

/// A URL ready to be called: the URL and, for https, the TLS client and the name the
/// server's certificate must carry. Built ahead, so that an https URL whose trust settings
/// cannot be loaded is refused at once (a webhook stops `sluice serve`) rather than failing
/// every call later.
#[derive(Clone)]
pub struct HttpTarget {
    url: HttpUrl,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl fmt::Debug for HttpTarget {
    // Never the path: it may hold a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTarget").field("authority", &self.url.authority).field("https", &self.url.https).finish()
    }
}

impl HttpTarget {
    /// `extra_roots`: a PEM file of CA certificates trusted besides `webpki-roots`
    /// (`SSL_CERT_FILE`); read only for an https URL.
    pub fn new(url: HttpUrl, extra_roots: Option<&Path>) -> Result<Self, String> {
        if !url.https {
            return Ok(Self { url, tls: None });
        }
        let name = ServerName::try_from(url.host.clone())
            .map_err(|_| format!("{}: the host is neither a DNS name nor an IP address", url.authority))?;
        let config = tls_client_config(extra_roots)?;
        Ok(Self { url, tls: Some((TlsConnector::from(Arc::new(config)), name)) })
    }

    /// [`HttpUrl::parse`], then [`HttpTarget::new`].
    pub fn parse(url: &str, what: &str, extra_roots: Option<&Path>) -> Result<Self, String> {
        Self::new(HttpUrl::parse(url, what)?, extra_roots)
    }

    /// `host[:port]`: what may be logged.
    pub fn authority(&self) -> &str {
        self.url.authority()
    }

    pub fn is_https(&self) -> bool {
        self.url.https
    }
}

/// `SSL_CERT_FILE`: a PEM file of CAs trusted besides Mozilla's roots, for private CAs (read
/// only for https URLs).
pub fn extra_roots_from_env() -> Option<std::path::PathBuf> {
    std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()).map(std::path::PathBuf::from)
}

/// rustls on ring, trusting `webpki-roots` plus the CAs of `extra_roots` (a PEM file). The
/// default verifier checks the chain, validity and the server name; it is never replaced.
pub fn tls_client_config(extra_roots: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = extra_roots {
        let file = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("SSL_CERT_FILE {file}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("SSL_CERT_FILE {file}: {e}"))?;
        let (added, _unusable) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("SSL_CERT_FILE {file}: no usable CA certificate in it"));
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Why a call failed, and whether trying again may help.
#[derive(Debug)]
pub struct Failure {
    pub retry: bool,
    pub why: String,
}

impl Failure {
    fn transient(why: String) -> Self {
        Self { retry: true, why }
    }
}

/// A call's answer: its status and body (at most [`MAX_ANSWER_BYTES`]).
#[derive(Debug)]
pub struct Answer {
    pub status: hyper::StatusCode,
    pub body: Bytes,
}

/// The most of an answer's body read: the callers read small JSON documents.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What to send: the method, its headers (beyond Host, User-Agent and Connection) and body.
#[derive(Debug)]
pub struct Call<'a> {
    pub method: hyper::Method,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Bytes,
}

/// How a delivery is retried: attempts in all, the first wait (doubling after each), and how long
/// one attempt may take.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    pub attempts: u32,
    pub first_backoff: std::time::Duration,
    pub attempt_timeout: std::time::Duration,
}

/// POSTs `body` until an answer is 2xx, retrying what may succeed later (no answer, a failed
/// connection, 408, 429, 5xx) with exponential backoff. The error: the attempts made and the
/// last reason (never the URL's path: it often carries a secret).
pub async fn post_with_retries(
    target: &HttpTarget,
    headers: &[(&str, &str)],
    body: Bytes,
    retries: Retries,
) -> Result<(), (u32, String)> {
    let mut backoff = retries.first_backoff;
    let mut attempt = 1;
    loop {
        let post = Call { method: hyper::Method::POST, headers, body: body.clone() };
        let answer = tokio::time::timeout(retries.attempt_timeout, call(target, post)).await;
        let (retry, why) = match answer.map(|a| a.map(|a| a.status)) {
            Ok(Ok(status)) if status.is_success() => return Ok(()),
            Ok(Ok(status)) => {
                // A refusal (4xx) would be refused again.
                let retry = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
                (retry, format!("HTTP {status}"))
            }
            Ok(Err(failure)) => (failure.retry, failure.why),
            Err(_) => (true, format!("no answer within {} ms", retries.attempt_timeout.as_millis())),
        };
        if !retry || attempt >= retries.attempts {
            return Err((attempt, why));
        }
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2);
        attempt += 1;
    }
}

/// One call on a fresh connection (the callers call rarely: no pool).
pub async fn call(target: &HttpTarget, call: Call<'_>) -> Result<Answer, Failure> {
    let url = &target.url;
    let stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| Failure::transient(format!("cannot connect to {}: {e}", url.authority)))?;
    match &target.tls {
        None => exchange(stream, url, call).await,
        Some((connector, name)) => {
            let stream = connector.connect(name.clone(), stream).await.map_err(|e| {
                // A certificate that does not verify will not verify on the next attempt.
                let rejected = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
                Failure { retry: !rejected, why: format!("TLS with {}: {e}", url.authority) }
            })?;
            exchange(stream, url, call).await
        }
    }
}

/// The HTTP/1 request and its answer, on a connected (and, for https, encrypted) stream.
async fn exchange<S>(stream: S, url: &HttpUrl, call: Call<'_>) -> Result<Answer, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::transient(format!("HTTP: {e}")))?;
    let connection = tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(call.method)
        .uri(url.path.as_str())
        .header(hyper::header::HOST, url.authority.as_str())
        .header(hyper::header::USER_AGENT, concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::CONNECTION, "close");
    for (name, value) in call.headers {
        request = request.header(*name, *value);
    }
    // Never the error's text: it would be about the path.
    let request = request
        .body(Full::new(call.body))
        .map_err(|_| Failure { retry: false, why: "the request could not be built".into() })?;
    let answered = async {
        let response = sender.send_request(request).await.map_err(|e| Failure::transient(format!("HTTP: {e}")))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Failure::transient(format!("HTTP: reading the answer: {e}")))?
            .to_bytes();
        Ok(Answer { status, body })
    }
    .await;
    connection.abort();
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_for_the_client_without_echoing_the_url_in_errors() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/hooks/budget?x=1#frag", "WEBHOOK_URL").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority.as_str(), u.path.as_str(), u.https),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "/hooks/budget?x=1", false)
        );
        let u = HttpUrl::parse("http://alerts.internal", "WEBHOOK_URL").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("alerts.internal", 80, "/"));
        let u = HttpUrl::parse("http://[::1]:9/x", "WEBHOOK_URL").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.authority.as_str()), ("::1", 9, "[::1]:9"));
        assert_eq!(HttpUrl::parse("http://h?q", "WEBHOOK_URL").unwrap().path, "/?q");
        let u = HttpUrl::parse("https://hooks.slack.com/services/T0/B0/X", "WEBHOOK_URL").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority.as_str(), u.path.as_str(), u.https),
            ("hooks.slack.com", 443, "hooks.slack.com", "/services/T0/B0/X", true)
        );
        assert_eq!(HttpUrl::parse("https://h:8443/", "WEBHOOK_URL").unwrap().port, 8443);
        for bad in [
            "ftp://h/T0SECRET",
            "http://u:T0SECRET@h/",
            "https://u:T0SECRET@h/",
            "http://h:99999/",
            "https://h/T0SECRET x",
            "https://:443/T0SECRET",
        ] {
            let e = HttpUrl::parse(bad, "WEBHOOK_URL").unwrap_err();
            assert!(!e.contains("T0SECRET") && !e.contains("99999"), "{e}");
        }
        // What is logged and debug-printed is the authority, never the path.
        let target = HttpTarget::parse("https://hooks.example/T0SECRET", "WEBHOOK_URL", None).unwrap();
        assert_eq!(target.authority(), "hooks.example");
        assert!(!format!("{target:?}").contains("T0SECRET"));
    }

    #[test]
    fn ssl_cert_file_must_hold_a_ca_and_is_read_only_for_https() {
        let missing = Path::new("/nonexistent/sluice-ca.pem");
        let e = HttpTarget::parse("https://h/T0SECRET", "WEBHOOK_URL", Some(missing)).unwrap_err();
        assert!(e.contains("SSL_CERT_FILE /nonexistent/sluice-ca.pem") && !e.contains("T0SECRET"), "{e}");
        assert!(HttpTarget::parse("http://h/x", "WEBHOOK_URL", Some(missing)).is_ok(), "http needs no trust store");
        let ca = crate::test_certs::TestCa::new("webhook test CA");
        let leaf = ca.leaf("only-a-key", "DNS:localhost");
        let e = HttpTarget::parse("https://h/", "WEBHOOK_URL", Some(&leaf.key)).unwrap_err();
        assert!(e.contains("no usable CA certificate"), "{e}");
        assert!(HttpTarget::parse("https://h/", "WEBHOOK_URL", Some(&ca.cert())).is_ok());
    }
}
