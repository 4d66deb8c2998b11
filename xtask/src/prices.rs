//! `cargo xtask prices [--litellm VERSION]`: refreshes the built-in price table,
//! `core/data/model_prices.json`, from the price map LiteLLM publishes in its PyPI package
//! (`prices.py` downloads the wheel, keeps the providers and fields Sluice reads, and writes one
//! model a line). Review the diff and commit it; config.yaml's `model_info` still overrides.

use crate::proc::{self, root};

/// The LiteLLM release the committed table was taken from.
const LITELLM_VERSION: &str = "1.106.0";

pub fn prices(args: &[String]) -> Result<(), String> {
    let version = match args {
        [] => LITELLM_VERSION,
        [flag, v] if flag == "--litellm" => v.as_str(),
        _ => return Err("usage: cargo xtask prices [--litellm VERSION]".into()),
    };
    let script = root().join("xtask/src/prices.py");
    let out = root().join("core/data/model_prices.json");
    proc::step(
        &format!("price table from LiteLLM {version}"),
        proc::run("python3", &[&script.to_string_lossy(), version, &out.to_string_lossy()], &[]),
    )
}
