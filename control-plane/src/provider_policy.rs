//! Which provider credentials a deployment may name, and where Envoy may send them.
//!
//! A deployment names its credential (`api_key: os.environ/NAME`) and its upstream (`api_base`);
//! the control plane reads NAME from its own environment and Envoy sends the value to that
//! upstream. Unchecked, anyone allowed to create deployments could name the control plane's own
//! secrets (`SLUICE_MASTER_KEY`, `DATABASE_URL`, …) and point `api_base` at a server they own,
//! or at the cloud's metadata service. So:
//!
//! - a credential is read only from a variable allowed at start (`--provider-credentials`:
//!   names or `PREFIX*`; by default the providers' usual names and those config.yaml's
//!   `model_list` names), and never from one of the control plane's own settings, whatever the
//!   allow-list says;
//! - `api_base` must be http(s) to a host that is not link-local, a metadata service, an
//!   unspecified/broadcast/multicast address or a number in a non-standard form, and, when
//!   `--upstream-hosts` is set, one of the hosts listed there (which may also allow an address
//!   refused by default). Names are not resolved here: pin them with `--upstream-hosts`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sluice_core::litellm::GoogleCredentials;

/// Variables that are the control plane's own secrets or settings, never a provider credential.
const OWN_SECRETS: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_PASSWORD",
    "WEBHOOK_URL",
    "SSL_CERT_FILE",
    "PGPASSWORD",
    "LITELLM_MASTER_KEY",
    "LITELLM_SALT_KEY",
];
/// Any variable with this prefix is the control plane's own.
const OWN_PREFIX: &str = "SLUICE_";
/// Host names of cloud metadata services (compared without case and trailing dot).
const METADATA_NAMES: &[&str] =
    &["metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"];

/// A variable name or a `PREFIX*` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePattern {
    Exact(String),
    Prefix(String),
}

impl NamePattern {
    fn parse(text: &str) -> Result<Self, String> {
        let (name, prefix) = match text.strip_suffix('*') {
            Some(p) => (p, true),
            None => (text, false),
        };
        let valid = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && name.bytes().next().is_some_and(|b| !b.is_ascii_digit());
        if !valid {
            return Err(format!("{text:?} is not an environment variable name or NAME_PREFIX*"));
        }
        Ok(if prefix { Self::Prefix(name.to_owned()) } else { Self::Exact(name.to_owned()) })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(n) => n == name,
            Self::Prefix(p) => name.starts_with(p.as_str()),
        }
    }

    fn show(&self) -> String {
        match self {
            Self::Exact(n) => n.clone(),
            Self::Prefix(p) => format!("{p}*"),
        }
    }
}

/// A host name, `*.suffix`, or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let text = normalise_host(text);
        let valid = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_' | b'*'));
        match text.strip_prefix("*.") {
            Some(suffix) if valid && !suffix.contains('*') && !suffix.is_empty() => Ok(Self::Suffix(suffix.into())),
            None if valid && !text.contains('*') => Ok(Self::Exact(text)),
            _ => Err(format!("{text:?} is not a host name, *.domain or IP address")),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host || parse_ip(h).is_some_and(|ip| parse_ip(host) == Some(ip)),
            Self::Suffix(s) => host.strip_suffix(s.as_str()).is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        }
    }
}

/// The rules, fixed at start.
#[derive(Debug, Clone)]
pub struct ProviderPolicy {
    credentials: Vec<NamePattern>,
    own_secrets: BTreeSet<String>,
    upstream_hosts: Option<Vec<HostPattern>>,
    /// Google credentials files deployments may name: those config.yaml's `model_list` names.
    credential_files: BTreeSet<String>,
}

impl Default for ProviderPolicy {
    /// The providers' usual credential names, any upstream host that is not refused outright.
    fn default() -> Self {
        Self {
            // Credentials allowed when `--provider-credentials` is not given (plus config.yaml's
            // names): each provider's default variables.
            credentials: sluice_core::providers::default_key_names()
                .map(|n| NamePattern::Exact(n.to_owned()))
                .collect(),
            own_secrets: OWN_SECRETS.iter().map(|n| (*n).to_owned()).collect(),
            upstream_hosts: None,
            credential_files: BTreeSet::new(),
        }
    }
}

impl ProviderPolicy {
    /// `credentials`: the `--provider-credentials` list (None: the defaults plus `config_names`,
    /// the variables config.yaml's `model_list` names). `own`: more variables that are the
    /// control plane's own (those its config.yaml reads through `os.environ/`). `hosts`: the
    /// `--upstream-hosts` list, if any.
    pub fn new(
        credentials: Option<&str>,
        config_names: &[String],
        own: &[String],
        hosts: Option<&str>,
    ) -> Result<Self, String> {
        let mut policy = Self::default();
        policy.own_secrets.extend(own.iter().cloned());
        match credentials {
            Some(text) => {
                policy.credentials = list(text)
                    .map(NamePattern::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--provider-credentials: {e}"))?;
            }
            None => {
                for name in config_names {
                    if !policy.credentials.iter().any(|p| p.matches(name)) {
                        policy.credentials.push(NamePattern::Exact(name.clone()));
                    }
                }
            }
        }
        if let Some(text) = hosts {
            let hosts: Vec<HostPattern> = list(text)
                .map(HostPattern::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("--upstream-hosts: {e}"))?;
            if hosts.is_empty() {
                return Err("--upstream-hosts: no host given".into());
            }
            policy.upstream_hosts = Some(hosts);
        }
        Ok(policy)
    }

    /// Allows deployments to name these Google credentials files (`vertex_credentials: <path>`):
    /// those the operator's config.yaml names. Any other path would let whoever may create
    /// deployments mint tokens of any service account whose key this process can read.
    pub fn with_credential_files(mut self, files: impl IntoIterator<Item = String>) -> Self {
        self.credential_files.extend(files);
        self
    }

    /// Why a Vertex AI deployment may not use `credentials`, or send their token to `host`, if
    /// it may not. A Google access token goes only to Vertex AI's own hosts
    /// (`aiplatform.googleapis.com`, `{location}-aiplatform.googleapis.com`) or to a host
    /// `--upstream-hosts` lists by name: it is the workload's Google identity, worth more than
    /// one provider's key.
    pub fn check_google(&self, credentials: &GoogleCredentials, host: &str) -> Result<(), String> {
        match credentials {
            GoogleCredentials::Env(name) => {
                self.check_credential(name).map_err(|e| format!("vertex_credentials: {e}"))?;
            }
            GoogleCredentials::File(path) if !self.credential_files.contains(path) => {
                return Err(format!(
                    "vertex_credentials {path:?} is not a file config.yaml's model_list names; name other credentials \
                     with os.environ/NAME (a variable holding the JSON or its path)"
                ));
            }
            GoogleCredentials::File(_) | GoogleCredentials::ApplicationDefault => {}
        }
        let name = normalise_host(host);
        let vertex = name == "aiplatform.googleapis.com" || name.ends_with("-aiplatform.googleapis.com");
        let listed = self.upstream_hosts.as_ref().is_some_and(|hosts| hosts.iter().any(|p| p.matches(&name)));
        if !vertex && !listed {
            return Err(format!(
                "a Vertex AI access token goes only to Vertex AI's hosts or a host --upstream-hosts lists, not {name:?}"
            ));
        }
        self.check_upstream(host)
    }

    /// Why the variable `name` may not hold a provider credential, if it may not.
    pub fn check_credential(&self, name: &str) -> Result<(), String> {
        if name.starts_with(OWN_PREFIX) || self.own_secrets.contains(name) {
            return Err(format!(
                "os.environ/{name} names one of the control plane's own secrets; it can never be a provider credential"
            ));
        }
        if self.credentials.iter().any(|p| p.matches(name)) {
            return Ok(());
        }
        let allowed: Vec<String> = self.credentials.iter().map(NamePattern::show).collect();
        Err(format!(
            "os.environ/{name} is not an allowed provider credential (allowed: {}); start `sluice serve` with --provider-credentials to allow it",
            if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") }
        ))
    }

    /// Why Envoy may not send a credential to `host` (as `api_base` gives it), if it may not.
    pub fn check_upstream(&self, host: &str) -> Result<(), String> {
        let host = normalise_host(host);
        if let Some(allowed) = &self.upstream_hosts {
            // Listed explicitly: allowed, even an address refused by default.
            if allowed.iter().any(|p| p.matches(&host)) {
                return Ok(());
            }
            return Err(format!(
                "api_base host {host:?} is not in --upstream-hosts; add it there to allow deployments to send credentials to it"
            ));
        }
        match refused_host(&host) {
            Some(why) => {
                Err(format!("api_base host {host:?} is {why}; list it in `sluice serve --upstream-hosts` to allow it"))
            }
            None => Ok(()),
        }
    }
}

/// The entries of a comma-separated flag.
fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn normalise_host(host: &str) -> String {
    host.trim().trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    host.parse().ok()
}

/// Why a host is refused by default, if it is.
fn refused_host(host: &str) -> Option<&'static str> {
    if METADATA_NAMES.contains(&host) {
        return Some("a cloud metadata service");
    }
    match parse_ip(host) {
        Some(IpAddr::V4(ip)) => refused_v4(ip),
        Some(IpAddr::V6(ip)) => refused_v6(ip),
        // getaddrinfo reads `2852039166`, `0xa9fea9fe` or `169.254.43518` as addresses: a name
        // whose last label is not a name is one of those, and bypasses the checks above.
        None => {
            let last = host.rsplit('.').next().unwrap_or(host);
            let numeric = last.bytes().all(|b| b.is_ascii_digit())
                || last.strip_prefix("0x").is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
            numeric.then_some("a number in a non-standard address form")
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_link_local() {
        Some("link-local (cloud metadata services live there)")
    } else if ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("a cloud metadata service")
    } else if ip.octets()[0] == 0 || ip.is_broadcast() || ip.is_multicast() {
        Some("an unspecified, broadcast or multicast address")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    let first = ip.segments()[0];
    if first & 0xffc0 == 0xfe80 {
        Some("link-local (cloud metadata services live there)")
    } else if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some("a cloud metadata service")
    } else if ip.is_unspecified() || ip.is_multicast() {
        Some("an unspecified or multicast address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_control_planes_own_secrets_are_never_credentials() {
        let p = ProviderPolicy::new(Some("*"), &[], &names(&["MY_MASTER"]), None);
        assert!(p.is_err(), "a bare * is not a name pattern");
        let p = ProviderPolicy::new(Some("S*,D*,R*,W*,M*,P*,L*,OPENAI_API_KEY"), &[], &names(&["MY_MASTER"]), None)
            .unwrap();
        for own in ["SLUICE_MASTER_KEY", "SLUICE_ANYTHING", "DATABASE_URL", "REDIS_URL", "WEBHOOK_URL", "MY_MASTER"] {
            let e = p.check_credential(own).unwrap_err();
            assert!(e.contains(own) && e.contains("control plane's own"), "{e}");
        }
        p.check_credential("OPENAI_API_KEY").unwrap();
    }

    #[test]
    fn credentials_come_from_the_allow_list() {
        let p = ProviderPolicy::new(None, &names(&["MOCK_KEY"]), &[], None).unwrap();
        p.check_credential("OPENAI_API_KEY").unwrap();
        p.check_credential("MOCK_KEY").unwrap();
        let e = p.check_credential("HOME").unwrap_err();
        assert!(e.contains("os.environ/HOME") && e.contains("--provider-credentials") && e.contains("MOCK_KEY"), "{e}");

        let p = ProviderPolicy::new(Some("PROVIDER_*, AZURE_API_KEY"), &names(&["MOCK_KEY"]), &[], None).unwrap();
        p.check_credential("PROVIDER_OPENAI").unwrap();
        p.check_credential("AZURE_API_KEY").unwrap();
        assert!(p.check_credential("MOCK_KEY").is_err(), "an explicit list replaces the defaults");
        assert!(p.check_credential("OPENAI_API_KEY").is_err());
        assert!(ProviderPolicy::new(Some("BAD-NAME"), &[], &[], None).is_err());
    }

    #[test]
    fn metadata_and_link_local_upstreams_are_refused() {
        let p = ProviderPolicy::default();
        for host in [
            "169.254.169.254",
            "169.254.170.2",
            "[fe80::1]",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "100.100.100.200",
            "metadata.google.internal",
            "METADATA.google.internal.",
            "0.0.0.0",
            "::",
            "255.255.255.255",
            "2852039166",
            "0xa9fea9fe",
            "169.254.43518",
        ] {
            assert!(p.check_upstream(host).is_err(), "{host} must be refused");
        }
        for host in ["api.openai.com", "127.0.0.1", "10.0.0.7", "::1", "vllm.internal", "my-llm"] {
            p.check_upstream(host).unwrap();
        }
    }

    #[test]
    fn an_upstream_host_list_is_exclusive_and_may_allow_more() {
        let p = ProviderPolicy::new(None, &[], &[], Some("api.openai.com, *.openai.azure.com, 169.254.10.10, ::1"))
            .unwrap();
        p.check_upstream("api.openai.com").unwrap();
        p.check_upstream("east.openai.azure.com").unwrap();
        p.check_upstream("169.254.10.10").unwrap();
        p.check_upstream("[::1]").unwrap();
        p.check_upstream("0:0:0:0:0:0:0:1").unwrap();
        for host in ["openai.azure.com", "evilopenai.azure.com", "api.openai.com.evil.test", "127.0.0.1"] {
            let e = p.check_upstream(host).unwrap_err();
            assert!(e.contains("--upstream-hosts"), "{e}");
        }
        assert!(ProviderPolicy::new(None, &[], &[], Some(" , ")).is_err());
        assert!(ProviderPolicy::new(None, &[], &[], Some("*.")).is_err());
    }

    /// A Google token goes to Vertex AI's hosts or listed ones; its credentials are named like
    /// a key, or are a file the operator's config.yaml names.
    #[test]
    fn vertex_credentials_and_hosts_are_checked() {
        let policy = ProviderPolicy::default().with_credential_files(["/etc/sluice/sa.json".to_owned()]);
        let adc = GoogleCredentials::ApplicationDefault;
        assert!(policy.check_google(&adc, "us-central1-aiplatform.googleapis.com").is_ok());
        assert!(policy.check_google(&adc, "AIPLATFORM.googleapis.com.").is_ok());
        let e = policy.check_google(&adc, "attacker.example").unwrap_err();
        assert!(e.contains("goes only to Vertex AI's hosts"), "{e}");
        assert!(policy.check_google(&adc, "evil-aiplatform.googleapis.com.attacker.example").is_err());
        let listed = ProviderPolicy::new(None, &[], &[], Some("127.0.0.1")).unwrap();
        assert!(listed.check_google(&adc, "127.0.0.1").is_ok());
        let file = |p: &str| GoogleCredentials::File(p.to_owned());
        assert!(policy.check_google(&file("/etc/sluice/sa.json"), "aiplatform.googleapis.com").is_ok());
        let e = policy.check_google(&file("/var/run/other.json"), "aiplatform.googleapis.com").unwrap_err();
        assert!(e.contains("is not a file config.yaml's model_list names"), "{e}");
        let own = GoogleCredentials::Env("SLUICE_MASTER_KEY".into());
        assert!(policy.check_google(&own, "aiplatform.googleapis.com").unwrap_err().contains("control plane's own"));
        let unlisted = GoogleCredentials::Env("SOME_VAR".into());
        assert!(policy.check_google(&unlisted, "aiplatform.googleapis.com").is_err());
    }
}
