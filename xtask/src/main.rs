//! Project automation, std and libc only (it must build fast on a fresh machine):
//!
//! - `cargo xtask setup`  installs what the project needs (wasm target, a project-local Python
//!   venv with the pinned Envoy and SDKs) and builds the filter (wasm and native), the no-op
//!   floors (wasm and native), CLI and mock provider.
//! - `cargo xtask run [--native]`  sets up and starts the quickstart: control plane, mock
//!   provider and an Envoy with Sluice configured over xDS (the wasm build, or the native one).
//! - `cargo xtask join`   one more Envoy from the running quickstart's control plane.
//! - `cargo xtask test`   every check: fmt, clippy, unit tests (native and wasm32), integration
//!   tests against a real Envoy (the standalone files again with the native build), and a smoke run of the quickstart.
//! - `cargo xtask bench [--quick] [--no-litellm] [--profile] [--native-filter PATH] [--prebuilt DIR]`
//!   every front Envoy of issue 15 (bare, no-op wasm, no-op native, Sluice wasm, Sluice native
//!   when given) in alternating rounds on one `direct_response` upstream, per scenario (with the
//!   translated path and, in xDS mode, key-cache misses and hits); LiteLLM's proxy unless
//!   `--no-litellm`; `--prebuilt` measures a target directory's artifacts without building.
//! - `cargo xtask bench-fleet`  the control plane: key lookup with 1M keys, ingestion rate,
//!   revocation time.
//! - `cargo xtask bench-routing [--quick] [--write]`  issue 12: each routing strategy's Envoy CPU
//!   per request (against `simple-shuffle` and bare Envoy), and latency-based routing's split
//!   between a 20 ms and a 200 ms deployment; BENCHMARKS.md only with `--write`.
//! - `cargo xtask bench-native`  an alias of `bench --no-litellm`, which now measures the
//!   native floor too.
//! - `cargo xtask prices [--litellm VERSION]`  refreshes the built-in price table from LiteLLM's
//!   published price map.
//! - `cargo xtask fuzz [--cases N]`  the property tests of every parser of untrusted bytes
//!   (sluice-core and the filter's request flows) at volume: 100,000 cases each by default.
//! - `cargo xtask soak`   an hour (`--duration SECS`) of steady load with key churn, streams and
//!   cancellations; the Envoys' and the control plane's memory growth.

mod bench;
mod bench_fleet;
mod bench_profile;
mod bench_report;
mod bench_routing;
mod bench_xds;
mod envoy_yaml;
mod prices;
mod proc;
mod quickstart;
mod setup;
mod soak;
mod supervise;

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::setup().map(|_| ()),
        Some("run") => quickstart::run(args.iter().any(|a| a == "--smoke"), quickstart::Build::from_args(&args)),
        Some("join") => quickstart::join(),
        Some("test") => test(),
        Some("bench") => bench::bench(&args[1..]),
        Some("bench-fleet") => bench_fleet::bench_fleet(),
        Some("bench-routing") => bench_routing::bench_routing(&args[1..]),
        // Superseded: `bench` runs the native no-op module beside the others.
        Some("bench-native") => bench::bench(&[&args[1..], &["--no-litellm".to_owned()]].concat()),
        Some("fuzz") => fuzz(&args[1..]),
        Some("soak") => soak::soak(&args[1..]),
        Some("prices") => prices::prices(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|run [--smoke] [--native]|join|test|bench [--quick] [--no-litellm] [--profile] [--no-pin] [--native-filter PATH] [--prebuilt DIR]|bench-fleet|bench-routing [--quick] [--write] [--no-pin] [--prebuilt DIR]|bench-native|fuzz [--cases N]|soak [--duration SECS]|prices [--litellm VERSION]>"
            );
            return ExitCode::from(2);
        }
    };
    if let Some(signal) = supervise::stop_signal() {
        // Stopped on purpose (Ctrl-C, a supervisor's SIGTERM, a closed terminal's SIGHUP): the
        // children are stopped by now, and whatever the interrupted step returned is moot. The
        // terminal may be gone, so a failed write is ignored.
        let _ = writeln!(std::io::stderr(), "xtask: stopped by {}", supervise::signal_name(signal));
        return ExitCode::from(128 + u8::try_from(signal).unwrap_or(0));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The integration files run a second time against the native build (`SLUICE_FILTER_BUILD=native`:
/// the `gw` fixture writes `envoy-config --native`, test_xds.py's Fleet runs `serve
/// --envoy-native` and `envoy-config --xds --native`; `wasm_only` tests are skipped). Left out:
/// test_native_module.py (the no-op module, build-neutral), test_deploy.py (the image and
/// manifests ship the wasm build) and test_quickstart_signals.py (the quickstart's process
/// handling; the native quickstart gets its own smoke run).
const NATIVE_FILES: &[&str] = &[
    // Standalone mode.
    "test_openai_sdk.py",
    "test_anthropic_sdk.py",
    "test_providers.py",
    "test_limits.py",
    "test_money.py",
    "test_bad_input.py",
    "test_faults.py",
    "test_security.py",
    "test_config.py",
    "test_slow_clients.py",
    "test_retries.py",
    "test_routing.py",
    "test_health_check.py",
    "test_fallbacks.py",
    "test_response_cache.py",
    // xDS mode.
    "test_xds.py",
    "test_replicas.py",
    "test_fleet_limits.py",
    "test_fleet_budgets.py",
    "test_forged_keys.py",
    "test_provider_secrets.py",
    "test_usage_outage.py",
    "test_control_plane_restart.py",
    "test_redis_down.py",
    "test_postgres_restart.py",
    "test_data_plane_tls.py",
    "test_failure_policy.py",
    "test_soak_short.py",
    "test_rest_api.py",
    "test_vertex.py",
    "test_governance.py",
];

/// The test command the README gives and CI runs.
fn test() -> Result<(), String> {
    let tools = setup::setup()?;
    let cargo = proc::cargo();
    proc::step("cargo fmt --check", proc::run(&cargo, &["fmt", "--all", "--", "--check"], &[]))?;
    proc::step(
        "cargo clippy",
        proc::run(&cargo, &["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"], &[]),
    )?;
    proc::step("unit tests (native)", proc::run(&cargo, &["test", "--workspace", "--quiet"], &[]))?;
    proc::step(
        "sluice-core unit tests compiled to wasm32-wasip1 (run under Wasmtime's WASI)",
        proc::run(&cargo, &["test", "-p", "sluice-core", "--target", "wasm32-wasip1", "--quiet"], &[]),
    )?;
    let env = tools.env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let python = tools.python.to_string_lossy().into_owned();
    proc::step(
        "integration tests (real Envoy, mock provider, OpenAI and Anthropic SDKs)",
        proc::run(&python, &["-m", "pytest", "tests/integration", "-q", "-p", "no:cacheprovider"], &env_refs),
    )?;
    // The native build (Envoy dynamic module), standalone and xDS mode.
    let native_env: Vec<(&str, &str)> = env_refs.iter().copied().chain([("SLUICE_FILTER_BUILD", "native")]).collect();
    let native_files: Vec<String> = NATIVE_FILES.iter().map(|f| format!("tests/integration/{f}")).collect();
    let mut native_args = vec!["-m", "pytest", "-q", "-p", "no:cacheprovider"];
    native_args.extend(native_files.iter().map(String::as_str));
    proc::step(
        "integration tests again with the native build (standalone and xDS mode)",
        proc::run(&python, &native_args, &native_env),
    )?;
    proc::step("quickstart smoke run", quickstart::run(true, quickstart::Build::Wasm))?;
    proc::step("quickstart smoke run, native build", quickstart::run(true, quickstart::Build::Native))?;
    eprintln!("\nxtask: all checks passed");
    Ok(())
}

/// The property tests at volume: the fuzzer this project has offline (nightly `cargo fuzz` is
/// not available here). Built with the `fuzz` profile: optimised, overflow checks kept.
fn fuzz(args: &[String]) -> Result<(), String> {
    let cases = match args {
        [] => 100_000,
        [flag, n] if flag == "--cases" => n.parse::<u32>().map_err(|_| format!("--cases {n}: not a number"))?,
        _ => return Err("usage: cargo xtask fuzz [--cases N]".into()),
    };
    let cargo = proc::cargo();
    let cases = cases.to_string();
    let env = [("PROPTEST_CASES", cases.as_str())];
    let profile = ["--profile", "fuzz"];
    proc::step(
        &format!("sluice-core property tests, {cases} cases each"),
        proc::run(&cargo, &[&["test", "-p", "sluice-core", "--test", "proptest_parsers"][..], &profile].concat(), &env),
    )?;
    proc::step(
        &format!("sluice-filter request-flow property tests, {cases} cases each"),
        proc::run(&cargo, &[&["test", "-p", "sluice-filter", "--lib"][..], &profile, &["proptests::"]].concat(), &env),
    )?;
    eprintln!("\nxtask: no property failed in {cases} cases");
    Ok(())
}
