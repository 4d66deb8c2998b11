//! `cargo xtask bench-fleet`: the control plane's numbers, written to BENCHMARKS.md.
//!
//! - key lookup latency with 1,000,000 keys in Postgres (`examples/lookup_bench.rs`);
//! - usage ingestion into Postgres (`examples/ingest_bench.rs`);
//! - how fast admin changes reach two Envoys: revocation, a limit change, a new deployment,
//!   a price change (`tests/bench/propagation.py`).

use crate::proc::{self, root};
use crate::setup;

const BEGIN: &str = "<!-- fleet-results:begin -->";
const END: &str = "<!-- fleet-results:end -->";

pub fn bench_fleet() -> Result<(), String> {
    let tools = setup::setup()?;
    let cargo = proc::cargo();
    let example = |name: &str| -> Result<String, String> {
        eprintln!("xtask: running {name} (release build)");
        let out = proc::output(
            &cargo,
            &["run", "--quiet", "--release", "-p", "sluice-control-plane", "--example", name],
            &[],
        )?;
        eprint!("{out}");
        Ok(out)
    };
    let lookup = example("lookup_bench")?;
    let ingest = example("ingest_bench")?;
    let env = tools.env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    eprintln!("xtask: measuring how fast admin changes reach two Envoys (one control plane)");
    let python = tools.python.to_string_lossy().into_owned();
    let propagation = proc::output(&python, &["tests/bench/propagation.py", "50"], &env_refs)?;
    eprint!("{propagation}");
    let summary = |what: &str| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} changes)",
            json_number(&propagation, &format!("{what}_p50_ms")),
            json_number(&propagation, &format!("{what}_p99_ms")),
            json_number(&propagation, &format!("{what}_max_ms")),
            json_number(&propagation, &format!("{what}_samples"))
        )
    };
    let date = proc::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &[]).unwrap_or_default();
    let report = format!(
        "Measured {} on this machine (2 cores), `cargo xtask bench-fleet`.\n\n\
         | what | result | target |\n|---|---|---|\n\
         | key lookup at the control plane, 1,000,000 keys in Postgres (cache miss) | {} | p99 ≤ 2 ms |\n\
         | unknown key lookup | {} | — |\n\
         | usage ingestion into Postgres | {} | ≥ 20,000 records/s |\n\
         | revocation: `sluice key block` answered → refused by two Envoys | {} | p99 ≤ 1 s |\n\
         | limit change: `sluice key update --rpm 1` answered → 429 from two Envoys | {} | < 1 s |\n\
         | new deployment: `sluice model create` answered → served by two Envoys | {} | < 1 s |\n\
         | price change: `sluice model update` answered → charged by two Envoys | {} | < 1 s |\n\
         | a request with a key new to the Envoy (cache miss: looked up), client-side | {} | — |\n\
         | the next requests with that key (cache hit), client-side | {} | no change |\n\n\
         Raw output:\n\n```\n{}{}{}```\n",
        date.trim(),
        line_with(&lookup, "existing key"),
        line_with(&lookup, "unknown key"),
        line_with(&ingest, "records/s"),
        summary("revocation"),
        summary("limit"),
        summary("deployment"),
        summary("price"),
        summary("miss").replace("changes", "keys"),
        summary("hit").replace("changes", "requests"),
        lookup,
        ingest,
        propagation,
    );
    crate::bench::write_block(&root().join("BENCHMARKS.md"), BEGIN, END, &report)?;
    eprintln!("xtask: wrote the results to BENCHMARKS.md");
    Ok(())
}

/// The part after the colon of the first output line containing `needle`.
fn line_with(out: &str, needle: &str) -> String {
    out.lines()
        .find(|l| l.contains(needle))
        .map(|l| l.split_once(": ").map_or(l, |(_, rest)| rest).trim().to_owned())
        .unwrap_or_else(|| "not measured".into())
}

/// A number field of the one-line JSON the Python bench prints (xtask has no JSON parser).
fn json_number(json: &str, field: &str) -> f64 {
    json.split(&format!("\"{field}\": "))
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next()?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}
