//! `sluice usage import`: replays the usage records in Envoy logs through the data-plane port,
//! as an Envoy's singleton would have shipped them.
//!
//! Every admitted request's record is written to Envoy's log (`sluice.usage {…}`) as well as
//! queued for the control plane; an Envoy that stops while the control plane is unreachable
//! takes its queue with it, but not its log. Ingestion is idempotent by record id, so replaying
//! a whole log adds exactly the records the control plane never got.

use std::io::BufRead;
use std::path::PathBuf;

use sluice_control_plane::pki::{self, PkiDir};
use sluice_proto::gateway::v1::ReportUsageRequest;
use sluice_proto::gateway::v1::usage_service_client::UsageServiceClient;
use sluice_proto::usage_line::record_from_log_line;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Records per Report call, as the singleton sends them.
const BATCH: usize = 500;

/// How to reach the control plane's data-plane port (where Envoys ship usage).
#[derive(clap::Args)]
pub struct DataPlaneArgs {
    /// HOST:PORT of the control plane's data-plane port (`sluice serve --xds-listen`).
    #[arg(long)]
    pub xds: Option<String>,
    /// mTLS from `sluice pki`'s directory: its ca.pem, and a client certificate for this run
    /// signed in memory with its ca.key (valid for an hour, never written to disk).
    #[arg(long, value_name = "DIR", conflicts_with = "xds_ca")]
    pki_dir: Option<PathBuf>,
    /// The node name of that certificate (`<name>.envoy.sluice`).
    #[arg(long, default_value = "usage-import")]
    node_id: String,
    /// Or the files themselves: the CA, a client certificate and its key (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["xds_cert", "xds_key"])]
    xds_ca: Option<PathBuf>,
    #[arg(long, value_name = "PEM")]
    xds_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM")]
    xds_key: Option<PathBuf>,
    /// Plaintext, to a control plane run with --insecure-data-plane (local development).
    #[arg(long, conflicts_with_all = ["pki_dir", "xds_ca"])]
    insecure_data_plane: bool,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    data_plane: DataPlaneArgs,
    /// Envoy log files (`-` or none: standard input).
    files: Vec<PathBuf>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A channel to the data-plane port, as an Envoy would open it.
pub async fn channel(args: &DataPlaneArgs) -> Result<Channel, String> {
    let xds = args.xds.as_deref().ok_or("--xds HOST:PORT (the control plane's data-plane port) is required")?;
    let (host, _) = xds.rsplit_once(':').ok_or_else(|| format!("--xds {xds:?}: use HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // (CA, certificate, key), PEM.
    let pem = match (&args.pki_dir, &args.xds_ca, &args.xds_cert, &args.xds_key) {
        (Some(dir), ..) => {
            let dir = PkiDir(dir.clone());
            let (cert, key) = pki::ephemeral_client(&dir, &args.node_id)?;
            Some((read(&dir.ca_cert())?, cert.into_bytes(), key.into_bytes()))
        }
        (None, Some(ca), Some(cert), Some(key)) => Some((read(ca)?, read(cert)?, read(key)?)),
        _ if args.insecure_data_plane => None,
        _ => return Err("the data-plane port needs mTLS: --pki-dir or --xds-ca/--xds-cert/--xds-key (or --insecure-data-plane for a local development control plane)".into()),
    };
    let scheme = if pem.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{xds}")).map_err(|e| format!("--xds: {e}"))?;
    if let Some((ca, cert, key)) = pem {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(host);
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    endpoint.connect().await.map_err(|e| format!("cannot reach the data-plane port {xds}: {e}"))
}

pub async fn run(args: ImportArgs) -> Result<(), String> {
    let mut records = Vec::new();
    let mut lines = 0u64;
    let mut scan = |reader: &mut dyn BufRead, name: &str| -> Result<(), String> {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    lines += 1;
                    records.extend(record_from_log_line(&line));
                }
                // A line that is not UTF-8 is not Sluice's.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {}
                Err(e) => return Err(format!("{name}: {e}")),
            }
        }
    };
    let stdin = args.files.is_empty() || args.files.iter().any(|f| f.as_os_str() == "-");
    if stdin {
        scan(&mut std::io::stdin().lock(), "standard input")?;
    }
    for path in args.files.iter().filter(|f| f.as_os_str() != "-") {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        scan(&mut std::io::BufReader::new(file), &path.display().to_string())?;
    }
    let found = records.len();
    let mut client = UsageServiceClient::new(channel(&args.data_plane).await?);
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    for batch in records.chunks(BATCH) {
        let answer = client
            .report(ReportUsageRequest { records: batch.to_vec() })
            .await
            .map_err(|s| format!("the control plane refused a batch ({:?}): {}", s.code(), s.message()))?
            .into_inner();
        accepted += u64::from(answer.accepted);
        duplicates += u64::from(answer.duplicates);
    }
    println!(
        "{lines} lines read, {found} usage records: {accepted} new, {duplicates} already known to the control plane"
    );
    Ok(())
}
