//! Supervision of the long-running children of `cargo xtask run` and `join` (Unix; the
//! parent-death signal is Linux's).
//!
//! The design, simplest first:
//!
//! - **Stopping on purpose.** SIGINT (Ctrl-C), SIGTERM (a supervisor) and SIGHUP (a closed
//!   terminal) only record the signal in an atomic ([`catch_stop_signals`]). The command's wait
//!   loops poll it every 100-200 ms ([`stopped`]) and return; the [`Children`] going out of
//!   scope then stops every child ([`stop`]: SIGTERM, up to [`GRACE`] to exit, SIGKILL, each
//!   reaped), and `main` exits with 128 + the signal's number and no error line. All the work
//!   happens on the main thread, in ordinary code: the handler itself does nothing else. (A
//!   signal during `cargo xtask setup`'s builds takes effect when the build step returns.)
//! - **Ctrl-C reaches xtask only.** Each child runs in its own process group ([`command`]), so
//!   the terminal's SIGINT goes to xtask alone, which signals the children newest first (Envoy
//!   before the control plane it talks to) instead of racing their exits and reporting one as a
//!   failure.
//! - **When xtask cannot clean up** (SIGKILL, a crash), the kernel kills each child: the child
//!   asks for it with `prctl(PR_SET_PDEATHSIG, SIGKILL)` between fork and exec. That signal
//!   fires when the *thread* that spawned the child exits, so children are spawned from the main
//!   thread only (xtask has no other).
//!
//! The only unsafe code is in [`sys`]: installing the handler, sending a signal, and the
//! `pre_exec` hook.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long a child has to exit after SIGTERM before it is killed.
pub const GRACE: Duration = Duration::from_secs(5);

/// The stop signal received, or 0.
static STOP: AtomicI32 = AtomicI32::new(0);

/// From now on SIGINT, SIGTERM and SIGHUP stop the command (through [`stopped`]) instead of
/// killing xtask on the spot.
pub fn catch_stop_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        sys::on_signal(signal, record_stop);
    }
}

extern "C" fn record_stop(signal: libc::c_int) {
    // An atomic store is async-signal-safe; nothing else happens in the handler.
    STOP.store(signal, Ordering::SeqCst);
}

/// The stop signal received since [`catch_stop_signals`], if any.
pub fn stop_signal() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// `Err` once a stop signal has arrived: `?` in a wait loop ends the command (and `main`
/// reports the signal, not this error).
pub fn stopped() -> Result<(), String> {
    match stop_signal() {
        None => Ok(()),
        Some(signal) => Err(format!("stopped by {}", signal_name(signal))),
    }
}

pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        other => format!("signal {other}"),
    }
}

/// A command for a supervised child: its own process group, no stdin (a background process
/// group reading the terminal would be stopped), and killed by the kernel if xtask dies.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    command.process_group(0).stdin(Stdio::null());
    sys::die_with_parent(&mut command);
    command
}

/// Sends `signal` to every process of the group a child leads (a child started with
/// `process_group(0)`, and whatever it started and did not move elsewhere).
pub fn signal_group(child: &Child, signal: libc::c_int) {
    sys::send_group(child, signal);
}

/// Child processes stopped however the command ends (a stop signal, an error, success).
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// Stops children: SIGTERM to each still running (newest first), up to [`GRACE`] for all of
/// them to exit, then SIGKILL to any left; every child is reaped.
pub fn stop(children: &mut [Child]) {
    for child in children.iter_mut().rev() {
        if matches!(child.try_wait(), Ok(None)) {
            sys::send(child, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + GRACE;
    for child in children.iter_mut().rev() {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill(); // SIGKILL
        }
        let _ = child.wait();
    }
}

/// The unsafe calls, each with what makes it sound.
#[allow(unsafe_code)]
mod sys {
    use std::process::{Child, Command};

    /// Installs `handler` for `signal` (BSD semantics: it stays installed, and interrupted
    /// system calls restart, so the rest of xtask sees no EINTR).
    pub fn on_signal(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
        // SAFETY: `handler` is an `extern "C" fn(c_int)` that only does an atomic store, which
        // is async-signal-safe; `signal` is one of the catchable signals named by the caller.
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }

    /// Sends `signal` to a child that has not been reaped yet (so its pid is still its own).
    pub fn send(child: &Child, signal: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our
        // unreaped child's (a zombie keeps its pid), never 0 or negative (a group).
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Sends `signal` to the process group a child leads (its pid is the group's id).
    pub fn send_group(child: &Child, signal: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
        if pid <= 1 {
            return;
        }
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; -pid names the
        // group our unreaped child leads (started with process_group(0)), never every process.
        unsafe {
            libc::kill(-pid, signal);
        }
    }

    /// The child is SIGKILLed by the kernel when xtask's main thread dies (Linux).
    #[cfg(target_os = "linux")]
    pub fn die_with_parent(command: &mut Command) {
        use std::os::unix::process::CommandExt;
        let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
        // calls are allowed: it makes two system calls (prctl, getppid) and allocates nothing
        // (an `io::Error` from an OS error code is not boxed).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // xtask may have died before the prctl: then no signal will come, so do not run.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }

    /// Elsewhere only the stop signals and the process groups apply.
    #[cfg(not(target_os = "linux"))]
    pub fn die_with_parent(_command: &mut Command) {}
}
