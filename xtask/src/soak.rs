//! `cargo xtask soak [--duration SECS] [driver options]`: a control plane (on Postgres when the
//! machine's answers at 127.0.0.1:5432, else SQLite) and two Envoys under a steady load with key
//! churn, streams and cancellations for an hour (or SECS), the resident memory of each process
//! sampled; the growth after the warm-up goes to BENCHMARKS.md between the soak markers.
//!
//! The driver is `tests/bench/soak.py` (options: `--rate`, `--warmup`, `--database`, ... see its
//! docstring); the short mode CI runs is `tests/integration/test_soak_short.py`. The command
//! fails, after writing the results, if spend rows and upstream calls differ or any answer was
//! not one the request's kind may get (a 5xx, a refused good key).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc::{self, root};
use crate::setup;
use crate::supervise;

const BEGIN: &str = "<!-- soak-results:begin -->";
const END: &str = "<!-- soak-results:end -->";
const DEFAULT_DURATION_S: u64 = 3600;
/// Above this one-minute load average the machine is busy: the figures are still written, with
/// the load next to them.
const QUIET_LOAD: f64 = 1.5;
/// How long the driver has to stop its processes and drop its database after a stop signal.
const STOP_GRACE: Duration = Duration::from_secs(30);

pub fn soak(args: &[String]) -> Result<(), String> {
    let mut driver_args: Vec<String> = args.to_vec();
    let duration = match driver_args.iter().position(|a| a == "--duration") {
        Some(i) => {
            let value = driver_args.get(i + 1).ok_or("--duration needs a number of seconds")?;
            value.parse::<u64>().map_err(|_| format!("--duration {value}: not a number of seconds"))?
        }
        None => {
            driver_args.extend(["--duration".to_owned(), DEFAULT_DURATION_S.to_string()]);
            DEFAULT_DURATION_S
        }
    };
    let tools = setup::setup()?;
    let load = load_average();
    if load > QUIET_LOAD {
        eprintln!(
            "xtask: the load average is {load:.2} (above {QUIET_LOAD}): the machine is busy, and the figures will say so"
        );
    }
    let target =
        std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| root().join("target"));
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    let markdown = target.join("soak-report.md");
    let samples = target.join("soak-samples.csv");
    let _ = std::fs::remove_file(&markdown);
    driver_args.extend([
        "--report-md".to_owned(),
        markdown.to_string_lossy().into_owned(),
        "--samples".to_owned(),
        samples.to_string_lossy().into_owned(),
    ]);
    let env = tools.env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let python = tools.python.to_string_lossy().into_owned();
    let mut argv: Vec<&str> = vec!["tests/bench/soak.py"];
    argv.extend(driver_args.iter().map(String::as_str));
    eprintln!("xtask: soak for {duration} s (progress every minute; Ctrl-C stops it and writes nothing)");
    let json = run_driver(&python, &argv, &env_refs)?;
    let summary = std::fs::read_to_string(&markdown).map_err(|e| format!("{}: {e}", markdown.display()))?;
    let date = proc::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &[]).unwrap_or_default();
    let report = format!(
        "Measured {} on this machine (2 cores; one-minute load average {load:.2} at the start{}), \
         `cargo xtask soak{}`; the control plane is the debug build `cargo xtask setup` makes.\n\n\
         {summary}\nRaw output (the samples are in `soak-samples.csv` in the target directory):\n\n```\n{}\n```\n",
        date.trim(),
        if load > QUIET_LOAD { ": busy, shared with other work" } else { "" },
        args.iter().fold(String::new(), |acc, a| acc + " " + a),
        json.trim(),
    );
    crate::bench::write_block(&root().join("BENCHMARKS.md"), BEGIN, END, &report)?;
    eprint!("{summary}");
    eprintln!("xtask: wrote the results to BENCHMARKS.md");
    let mut problems = Vec::new();
    if !json.contains("\"billing_settled\": true") {
        problems.push("spend rows differ from upstream calls");
    }
    if !json.contains("\"unexpected\": {}") {
        problems.push("some answers were not what their request may get");
    }
    if problems.is_empty() { Ok(()) } else { Err(format!("soak: {}", problems.join("; "))) }
}

/// Runs the driver in a process group of its own (it and the control plane, Envoys and mock it
/// starts), its progress (stderr) shown as it runs; returns its stdout. A stop signal to xtask
/// (Ctrl-C, SIGTERM, SIGHUP) sends SIGTERM to the group: the driver stops its processes, drops
/// its database and exits; after [`STOP_GRACE`], SIGKILL. If xtask itself is killed, the driver
/// still ends by itself when its duration is up.
fn run_driver(python: &str, argv: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    supervise::catch_stop_signals();
    let mut child = Command::new(python)
        .args(argv)
        .envs(env.iter().copied())
        .current_dir(root())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {python}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for the driver: {e}"))? {
            break status;
        }
        if supervise::stop_signal().is_some() {
            supervise::signal_group(&child, libc::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            supervise::signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
            return supervise::stopped().map(|()| String::new());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("tests/bench/soak.py failed ({status})"));
    }
    Ok(out)
}

/// The one-minute load average (`/proc/loadavg`), or 0 if unreadable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
}
