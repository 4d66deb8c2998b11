//! `sluice-mock-provider --listen 127.0.0.1:8081 [--latency-ms N] [--status N] [--openai-key K]
//! [--anthropic-key K] [--azure-key K] [--gemini-key K] [--aws-access-key-id AKID]
//! [--google-auth] [--google-token-ttl SECS] [--azure-ad-client-id ID --azure-ad-client-secret S]
//! [--context-window N] [--workers N]`
//!
//! Besides the providers' paths (Vertex AI's under `/v1/projects/…` among them) it serves
//! Entra ID's token endpoint at `POST /{tenant}/oauth2/v2.0/token`, Google's OAuth 2 token
//! endpoint at `POST /token` and the GCE metadata server's
//! `GET /computeMetadata/v1/instance/service-accounts/default/token`, for Vertex AI's tokens.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sluice_mock_provider::{Config, DEFAULT_GOOGLE_TOKEN_TTL_SECS, serve};

#[derive(Parser)]
#[command(
    about = "Mock OpenAI/Azure OpenAI/Anthropic/Gemini/Vertex AI/Bedrock provider for Sluice's tests, benchmarks and \
             quickstart, with Google's OAuth 2 token endpoint (/token) and GCE metadata server token"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Delay before every response's headers, unless a request sets x-mock-latency-ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Answer every request with this error status (a deployment that is down but reachable),
    /// unless a request sets x-mock-status.
    #[arg(long)]
    status: Option<u16>,
    /// Require `Authorization: Bearer <key>` on OpenAI-format endpoints.
    #[arg(long)]
    openai_key: Option<String>,
    /// Require `x-api-key: <key>` on /v1/messages.
    #[arg(long)]
    anthropic_key: Option<String>,
    /// Require `api-key: <key>` on Azure OpenAI paths (/openai/deployments/…, /openai/v1/…).
    #[arg(long)]
    azure_key: Option<String>,
    /// Require `x-goog-api-key: <key>` (or `?key=<key>`) on Gemini paths (/v1beta/models/…, /v1/models/…).
    #[arg(long)]
    gemini_key: Option<String>,
    /// Require a SigV4 signature for this access key id on Bedrock paths (/model/…/converse…):
    /// `authorization: AWS4-HMAC-SHA256 Credential=<id>/…/bedrock/aws4_request, SignedHeaders=…,
    /// Signature=…` and `x-amz-date` (present and shaped so, not verified).
    #[arg(long)]
    aws_access_key_id: Option<String>,
    /// Require `Authorization: Bearer <token>` on Vertex AI paths (/v1/projects/…/publishers/…),
    /// with a token this mock issued at POST /token (a service account's JWT assertion or a
    /// refresh token) or at the metadata server's
    /// GET /computeMetadata/v1/instance/service-accounts/default/token, not yet expired.
    #[arg(long)]
    google_auth: bool,
    /// Lifetime in seconds of the access tokens /token and the metadata server issue (0 issues
    /// tokens already expired).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_GOOGLE_TOKEN_TTL_SECS)]
    google_token_ttl: u64,
    /// An Entra ID application: its token endpoint at POST /{tenant}/oauth2/v2.0/token issues
    /// tokens for this client id and `--azure-ad-client-secret` (client credentials), which Azure
    /// OpenAI paths then take as `Authorization: Bearer` in place of `api-key`.
    #[arg(long, requires = "azure_ad_client_secret")]
    azure_ad_client_id: Option<String>,
    #[arg(long, requires = "azure_ad_client_id")]
    azure_ad_client_secret: Option<String>,
    /// Refuse a prompt of more than N tokens (its bytes over four) as longer than the model's
    /// context window, with the provider's own error (OpenAI's `context_length_exceeded`,
    /// Anthropic's "prompt is too long").
    #[arg(long)]
    context_window: Option<u64>,
    /// Runtime worker threads (1 leaves room for Envoy during benchmarks on small machines).
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(args.workers.max(1)).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("sluice-mock-provider: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    let config = Arc::new(Config {
        latency_ms: args.latency_ms,
        status: args.status,
        openai_key: args.openai_key,
        anthropic_key: args.anthropic_key,
        azure_key: args.azure_key,
        gemini_key: args.gemini_key,
        aws_access_key_id: args.aws_access_key_id,
        context_window: args.context_window,
        google_auth: args.google_auth,
        google_token_ttl_secs: args.google_token_ttl,
        azure_ad_client: args.azure_ad_client_id.zip(args.azure_ad_client_secret),
    });
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!("sluice-mock-provider listening on {}", listener.local_addr()?);
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            Ok::<(), std::io::Error>(())
        };
        serve(listener, config, shutdown).await;
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-mock-provider: {e}");
            ExitCode::FAILURE
        }
    }
}
