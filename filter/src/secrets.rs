//! The secrets a worker reads from Envoy's environment when it is configured: provider
//! credentials and (standalone mode) the master key. Envoy passes exactly the variables its
//! config names (`host_env_keys`), so the values never appear in the config or `/config_dump`.

use sluice_core::config::CompiledConfig;
use sluice_core::keys::KeyHash;

#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Per deployment (same index as the config's), its credential, if the variable is set.
    pub credentials: Vec<Option<String>>,
    /// The master key's digest, kept in this worker's memory only.
    pub master_key: Option<KeyHash>,
}

/// Reads the secrets `config` names through `env`. A master key variable that is named but
/// unset is an error: Envoy was started without it, and serving on would lock its holder out.
pub fn from_env(config: &CompiledConfig, env: impl Fn(&str) -> Option<String>) -> Result<Secrets, String> {
    let read = |name: &str| env(name).filter(|v| !v.is_empty());
    let credentials = config.config.deployments.iter().map(|d| d.api_key_env.as_deref().and_then(read)).collect();
    let master_key = match config.config.master_key_env.as_deref() {
        None => None,
        Some(name) => Some(read(name).map(|key| KeyHash::of(key.as_bytes())).ok_or_else(|| {
            format!("general_settings.master_key is read from {name}, which Envoy's environment does not hold")
        })?),
    };
    Ok(Secrets { credentials, master_key })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use sluice_core::config::GatewayConfig;

    fn config(master_key_env: Option<&str>) -> CompiledConfig {
        let doc = serde_json::json!({"schema_version": 1, "master_key_env": master_key_env});
        CompiledConfig::compile(serde_json::from_value::<GatewayConfig>(doc).unwrap()).unwrap()
    }

    #[test]
    fn the_master_key_comes_from_the_named_variable_and_a_missing_one_is_an_error() {
        let env = |name: &str| (name == "SLUICE_MASTER_KEY").then(|| "sk-master-key".to_owned());
        let secrets = from_env(&config(Some("SLUICE_MASTER_KEY")), env).unwrap();
        assert_eq!(secrets.master_key, Some(KeyHash::of(b"sk-master-key")));
        let e = from_env(&config(Some("OTHER_VAR")), env).err().unwrap();
        assert!(e.contains("OTHER_VAR"), "{e}");
        assert_eq!(from_env(&config(None), env).ok().unwrap().master_key, None);
    }
}
