//! Reading config.yaml: YAML → JSON value → [`sluice_core::litellm::from_litellm`].

use std::path::Path;

use sluice_core::litellm::{Standalone, from_litellm};

/// Parses YAML text into a JSON value (the shape core understands).
pub fn parse_yaml(text: &str) -> Result<serde_json::Value, String> {
    serde_norway::from_str(text).map_err(|e| format!("YAML syntax error: {e}"))
}

/// Loads and converts a config file, resolving `os.environ/NAME` from the process environment.
pub fn load(path: &Path) -> Result<Standalone, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    convert(&text)
}

/// The sections and `general_settings` of config.yaml that `sluice serve` acts on; anything else
/// stops it, by name, rather than being silently ignored. (`litellm_settings`, `router_settings`
/// and `model_list` are checked whole by the conversion the Envoys' config goes through.)
const SERVE_SECTIONS: [&str; 4] = ["model_list", "general_settings", "litellm_settings", "router_settings"];
const SERVE_GENERAL_SETTINGS: [&str; 8] = [
    "master_key",
    "database_url",
    "alerting",
    "max_request_size_mb",
    "sluice_failure_policy",
    "background_health_checks",
    "health_check_interval",
    "allowed_ips",
];

/// What in config.yaml `sluice serve` would not act on, each named with the reason.
pub fn refuse_unserved(doc: &serde_json::Value) -> Result<(), String> {
    let mut refused = Vec::new();
    for key in doc.as_object().map(|o| o.keys()).into_iter().flatten() {
        match key.as_str() {
            k if SERVE_SECTIONS.contains(&k) => {}
            "keys" | "teams" | "customers" => refused.push(format!(
                "{key}: standalone mode's; with `sluice serve` they live in its database (`sluice key create`, \
                 `sluice team create`, `sluice customer create`, or the admin API)"
            )),
            other => refused.push(format!("{other}: not supported by Sluice")),
        }
    }
    let general = doc.get("general_settings").and_then(serde_json::Value::as_object);
    for key in general.map(|g| g.keys()).into_iter().flatten() {
        if !SERVE_GENERAL_SETTINGS.contains(&key.as_str()) {
            refused.push(format!("general_settings.{key}: not supported by Sluice"));
        }
    }
    if refused.is_empty() { Ok(()) } else { Err(refused.join("; ")) }
}

pub fn convert(text: &str) -> Result<Standalone, Vec<String>> {
    let doc = parse_yaml(text).map_err(|e| vec![e])?;
    let env = |name: &str| std::env::var(name).ok();
    from_litellm(&doc, &env).map_err(|errors| errors.into_iter().map(|e| e.0).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::refuse_unserved;

    #[test]
    fn serve_refuses_what_it_would_ignore() {
        let served = json!({"model_list": [], "general_settings": {"master_key": "os.environ/K", "alerting": ["webhook"]},
                            "litellm_settings": {}, "router_settings": {}});
        assert_eq!(refuse_unserved(&served), Ok(()));
        let e = refuse_unserved(&json!({"keys": [], "general_settings": {"store_model_in_db": true},
                                        "environment_variables": {}}))
        .unwrap_err();
        for says in [
            "keys: standalone mode's",
            "general_settings.store_model_in_db: not supported",
            "environment_variables: not supported",
        ] {
            assert!(e.contains(says), "{e}");
        }
    }
}
