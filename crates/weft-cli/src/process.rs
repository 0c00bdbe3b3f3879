//! Child processes of `weft` (sidecars, gateways, demo apps): started so that they die with
//! their parent, stopped with SIGTERM then SIGKILL after a grace period.

use anyhow::{Context, Result};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Starts `cmd`; the child receives SIGTERM if this process dies first (Linux), so nothing is
/// left behind when `weft` is killed.
pub fn spawn(mut cmd: Command) -> Result<Child> {
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std().get_program());
    cmd.spawn()
        .with_context(|| format!("cannot start {program}"))
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL. Returns the exit status if known.
pub async fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    if let Some(pid) = child.id() {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) with a pid we own (our un-reaped child) and a constant signal; no memory
        // is passed.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(st)) => Some(st),
        _ => {
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

/// The `weft` executable itself (it also runs proxies and demo apps as subcommands).
pub fn self_exe() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot locate the weft executable")
}
