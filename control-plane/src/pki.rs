//! The data-plane port's identities: a private CA (`sluice pki init`), the control plane's
//! server certificate, one client certificate per Envoy node (`sluice pki envoy`), and the check
//! that an Envoy asks for configuration only as the node its certificate names.
//!
//! A node's identity is the DNS name `<node-id>.envoy.sluice` in its certificate's subject
//! alternative names (a wildcard `*.envoy.sluice` is a fleet certificate, valid for any node).
//! DNS names, because rustls-webpki (already verifying the chain) can check them; any CA can
//! issue such certificates (cert-manager: `dnsNames: [edge-1.envoy.sluice]`). Envoy
//! certificates carry only the clientAuth usage and the control plane's only serverAuth, so
//! neither can stand in for the other.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, DnsName, ServerName};

/// The domain under which node identities live.
pub const NODE_DOMAIN: &str = "envoy.sluice";
const CA_NAME: &str = "Sluice data-plane CA";
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 825;

/// `<node-id>.envoy.sluice`, if the node id can be one DNS label (lowercase letters, digits,
/// `-`, 1–63 characters, not starting or ending with `-`).
pub fn node_name(node_id: &str) -> Result<String, String> {
    let label_ok = (1..=63).contains(&node_id.len())
        && node_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !node_id.starts_with('-')
        && !node_id.ends_with('-');
    if label_ok {
        Ok(format!("{node_id}.{NODE_DOMAIN}"))
    } else {
        Err(format!("node id {node_id:?} cannot be a certificate identity: use 1-63 lowercase letters, digits and '-'"))
    }
}

/// Whether the client certificate `cert` (the verified end-entity certificate of the
/// connection) may act as node `node_id`.
pub fn check_node(cert: &CertificateDer<'_>, node_id: &str) -> Result<(), String> {
    let name = node_name(node_id)?;
    let dns = DnsName::try_from(name.clone()).map_err(|_| format!("{name:?} is not a DNS name"))?;
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable client certificate: {e}"))?;
    cert.verify_is_valid_for_subject_name(&ServerName::DnsName(dns))
        .map_err(|_| format!("the client certificate does not name node {node_id:?} ({name} or *.{NODE_DOMAIN})"))
}

/// The node the client certificate `cert` names: the label of its first DNS name
/// `<label>.envoy.sluice`, or `*` for a fleet certificate (`*.envoy.sluice`). For callers that
/// cannot say which node they are (the native module cannot read Envoy's node id): the
/// certificate names them instead.
pub fn node_label(cert: &CertificateDer<'_>) -> Result<String, String> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable client certificate: {e}"))?;
    let suffix = format!(".{NODE_DOMAIN}");
    cert.valid_dns_names()
        .find_map(|name| {
            let label = name.to_ascii_lowercase().strip_suffix(&suffix)?.to_owned();
            (label == "*" || node_name(&label).is_ok()).then_some(label)
        })
        .ok_or_else(|| {
            format!("the client certificate names no Envoy node (<node-id>.{NODE_DOMAIN} or *.{NODE_DOMAIN})")
        })
}

/// Whether the client certificate `cert` is an Envoy's at all: it names some node
/// (`<label>.envoy.sluice`) or the fleet (`*.envoy.sluice`). The data-plane port's CA may be a
/// shared one (a cluster-wide cert-manager issuer) that also signs other workloads' client
/// certificates; those are not Envoys and get nothing.
pub fn check_envoy(cert: &CertificateDer<'_>) -> Result<(), String> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable client certificate: {e}"))?;
    let suffix = format!(".{NODE_DOMAIN}");
    let names_a_node = cert.valid_dns_names().any(|name| {
        let name = name.to_ascii_lowercase();
        name.strip_suffix(&suffix).is_some_and(|label| label == "*" || node_name(label).is_ok())
    });
    if names_a_node {
        Ok(())
    } else {
        Err(format!("the client certificate names no Envoy node (<node-id>.{NODE_DOMAIN} or *.{NODE_DOMAIN})"))
    }
}

/// The verified end-entity certificate of a data-plane connection, or UNAUTHENTICATED.
pub fn peer_certificate<T>(request: &tonic::Request<T>) -> Result<CertificateDer<'static>, tonic::Status> {
    request
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .ok_or_else(|| tonic::Status::unauthenticated("the data-plane port requires a client certificate"))
}

/// Lets a data-plane call through only with an Envoy's certificate ([`check_envoy`]): on the key
/// lookup, usage and limit services (ADS checks the exact node on its stream's first message).
/// Not `enforced` only under `--insecure-data-plane`, where there are no certificates.
#[derive(Clone)]
pub struct EnvoyOnly {
    pub enforced: bool,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl tonic::service::Interceptor for EnvoyOnly {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !self.enforced {
            return Ok(request);
        }
        let checked =
            peer_certificate(&request).and_then(|cert| check_envoy(&cert).map_err(tonic::Status::permission_denied));
        if let Err(refused) = &checked {
            crate::metrics::inc(&self.metrics.data_plane_refused, 1);
            eprintln!("sluice: data plane: refused a call: {}", refused.message());
        }
        checked.map(|()| request)
    }
}

/// Where `sluice pki` keeps its files.
#[derive(Debug, Clone)]
pub struct PkiDir(pub PathBuf);

impl PkiDir {
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.0.join("control-plane.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.0.join("control-plane.key")
    }
    pub fn envoy_cert(&self, node: &str) -> PathBuf {
        self.0.join(format!("envoy-{node}.pem"))
    }
    pub fn envoy_key(&self, node: &str) -> PathBuf {
        self.0.join(format!("envoy-{node}.key"))
    }
}

fn err(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The CA's parameters. Fixed, so the CA can sign again later from its key alone.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn leaf_params(common_name: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params
}

fn valid_for(params: &mut CertificateParams, days: i64) {
    valid_for_secs(params, days * 86_400);
}

fn valid_for_secs(params: &mut CertificateParams, secs: i64) {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::Duration::from_millis(crate::store::now_ms().try_into().unwrap_or(0));
    // An hour back: clocks on the Envoy hosts may be a little behind.
    params.not_before = now - std::time::Duration::from_secs(3600);
    params.not_after = now + std::time::Duration::from_secs(secs.unsigned_abs());
}

/// Writes a file only if it is new; keys readable by the owner only.
fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!("{}: already exists (not overwritten)", path.display()),
        _ => format!("{}: {e}", path.display()),
    })?;
    file.write_all(contents.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

fn san(host: &str) -> Result<SanType, String> {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => {
            Ok(SanType::DnsName(host.try_into().map_err(|_| format!("{host:?} is not a DNS name or IP address"))?))
        }
    }
}

/// `sluice pki init`: a new CA and the control plane's certificate for `hosts` (the names or
/// addresses Envoys dial). Refuses to overwrite anything.
pub fn init(dir: &PkiDir, hosts: &[String]) -> Result<Vec<PathBuf>, String> {
    if hosts.is_empty() {
        return Err("--host: name at least one host name or address Envoys use to reach the control plane".into());
    }
    let sans = hosts.iter().map(|h| san(h)).collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("{}: {e}", dir.0.display()))?;
    let ca_key = KeyPair::generate().map_err(err("CA key"))?;
    let mut params = ca_params();
    valid_for(&mut params, CA_DAYS);
    let ca_cert = params.self_signed(&ca_key).map_err(err("CA certificate"))?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let key = KeyPair::generate().map_err(err("control-plane key"))?;
    let mut leaf = leaf_params("sluice control plane", sans, ExtendedKeyUsagePurpose::ServerAuth);
    valid_for(&mut leaf, LEAF_DAYS);
    let cert = leaf.signed_by(&key, &issuer).map_err(err("control-plane certificate"))?;
    // The CA's key last: a half-written directory is refused next time rather than reused.
    write_new(&dir.ca_cert(), &ca_cert.pem(), false)?;
    write_new(&dir.server_cert(), &cert.pem(), false)?;
    write_new(&dir.server_key(), &key.serialize_pem(), true)?;
    write_new(&dir.ca_key(), &ca_key.serialize_pem(), true)?;
    Ok(vec![dir.ca_cert(), dir.server_cert(), dir.server_key(), dir.ca_key()])
}

/// `sluice pki envoy`: a client certificate for one node (or, with `any_node`, a fleet
/// certificate valid for every node), signed by the CA `init` made.
pub fn issue_envoy(dir: &PkiDir, node: &str, any_node: bool) -> Result<Vec<PathBuf>, String> {
    let name = if any_node { format!("*.{NODE_DOMAIN}") } else { node_name(node)? };
    let (cert, key) = sign_client(dir, &name, LEAF_DAYS * 86_400)?;
    write_new(&dir.envoy_cert(node), &cert, false)?;
    write_new(&dir.envoy_key(node), &key, true)?;
    Ok(vec![dir.envoy_cert(node), dir.envoy_key(node)])
}

/// A client certificate for one tool run (`sluice usage import`): valid for an hour, kept in
/// memory only, so no lasting data-plane identity is left on the operator's disk. Needs the
/// CA's key, which can make any identity anyway. (PEM certificate, PEM key.)
pub fn ephemeral_client(dir: &PkiDir, node: &str) -> Result<(String, String), String> {
    sign_client(dir, &node_name(node)?, 3600)
}

/// A clientAuth certificate for the DNS name `name`, signed by the CA in `dir`.
fn sign_client(dir: &PkiDir, name: &str, valid_secs: i64) -> Result<(String, String), String> {
    let ca_pem = std::fs::read_to_string(dir.ca_key()).map_err(|e| format!("{}: {e}", dir.ca_key().display()))?;
    let ca_key = KeyPair::from_pem(&ca_pem).map_err(err("CA key"))?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let key = KeyPair::generate().map_err(err("client key"))?;
    let dns = name.to_owned().try_into().map_err(|_| format!("{name:?} is not a DNS name"))?;
    let mut leaf = leaf_params(name, vec![SanType::DnsName(dns)], ExtendedKeyUsagePurpose::ClientAuth);
    valid_for_secs(&mut leaf, valid_secs);
    let cert = leaf.signed_by(&key, &issuer).map_err(err("client certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn node_ids_must_be_dns_labels() {
        assert_eq!(node_name("edge-1").unwrap(), "edge-1.envoy.sluice");
        for bad in ["", "Edge", "edge.1", "-edge", "edge-", "a b", &"x".repeat(64), "*"] {
            assert!(node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_envoy_certificate_names_its_node_only_and_a_fleet_certificate_any() {
        let dir = PkiDir(std::env::temp_dir().join(format!("sluice-pki-{}", crate::store::now_ms())));
        init(&dir, &["127.0.0.1".into(), "cp.internal".into()]).unwrap();
        issue_envoy(&dir, "edge-1", false).unwrap();
        issue_envoy(&dir, "fleet", true).unwrap();
        let edge = cert(&dir.envoy_cert("edge-1"));
        check_node(&edge, "edge-1").unwrap();
        let e = check_node(&edge, "edge-2").unwrap_err();
        assert!(e.contains("edge-2"), "{e}");
        let fleet = cert(&dir.envoy_cert("fleet"));
        check_node(&fleet, "edge-1").unwrap();
        check_node(&fleet, "pod-7").unwrap();
        // The control plane's own certificate names no node.
        assert!(check_node(&cert(&dir.server_cert()), "edge-1").is_err());
        assert!(check_envoy(&cert(&dir.server_cert())).is_err());
        check_envoy(&edge).unwrap();
        check_envoy(&fleet).unwrap();
        // The node a certificate names, for callers that do not say.
        assert_eq!(node_label(&edge).unwrap(), "edge-1");
        assert_eq!(node_label(&fleet).unwrap(), "*");
        assert!(node_label(&cert(&dir.server_cert())).is_err());
        // A tool's certificate for one run: valid for its name, nothing written.
        let files = std::fs::read_dir(&dir.0).unwrap().count();
        let (pem, _key) = ephemeral_client(&dir, "usage-import").unwrap();
        check_node(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(), "usage-import").unwrap();
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), files);
        // Nothing is overwritten.
        assert!(init(&dir, &["127.0.0.1".into()]).unwrap_err().contains("already exists"));
        assert!(issue_envoy(&dir, "edge-1", false).unwrap_err().contains("already exists"));
        let mode = |p: PathBuf| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
        assert_eq!(mode(dir.ca_key()) & 0o777, 0o600);
        assert_eq!(mode(dir.envoy_key("edge-1")) & 0o777, 0o600);
        std::fs::remove_dir_all(&dir.0).unwrap();
    }
}
