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

pub fn convert(text: &str) -> Result<Standalone, Vec<String>> {
    let doc = parse_yaml(text).map_err(|e| vec![e])?;
    let env = |name: &str| std::env::var(name).ok();
    from_litellm(&doc, &env).map_err(|errors| errors.into_iter().map(|e| e.0).collect())
}
