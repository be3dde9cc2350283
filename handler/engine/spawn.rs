//! Starting the detached worker.
//!
//! Under systemd the worker is a transient service (`systemd-run`), outside the agent's cgroup
//! and process group, so neither an agent restart nor the agent's timeout kill of enable's
//! process group can stop it. Without systemd it runs in a session of its own.

use crate::agent::invocation::Invocation;
use crate::engine::files;
use crate::error::{Code, Failure};
use crate::sys::proc;
use crate::sys::runtime::Runtime;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn worker_args(inv: &Invocation) -> Vec<String> {
    vec![
        "worker".into(),
        "--handler-dir".into(),
        inv.agent.handler_dir.to_string_lossy().into_owned(),
        "--seq".into(),
        inv.agent.seq.to_string(),
    ]
}

fn spawn_systemd(
    inv: &Invocation,
    runtime: &Runtime,
    timeout: Duration,
) -> Result<(), proc::Unsuccessful> {
    let props = [
        // If the worker dies, an installer it started runs to its end rather than leaving
        // dpkg or rpm half done; the next worker waits for it (install::install).
        "--property=KillMode=process".to_string(),
        format!("--working-directory={}", inv.agent.handler_dir.display()),
    ];
    let env: Vec<(String, String)> = runtime
        .passed
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut argv = vec![inv.exe.to_string_lossy().into_owned()];
    argv.extend(worker_args(inv));
    let prefix = format!("ibdriver-worker-{}", inv.agent.seq);
    crate::sys::systemd::start_transient(&prefix, &props, &env, &argv, timeout).map(|_| ())
}

fn spawn_session(inv: &Invocation) -> Result<(), Failure> {
    let mut cmd = Command::new(&inv.exe);
    cmd.args(worker_args(inv))
        .current_dir(&inv.agent.handler_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn().map(|_| ()).map_err(|e| {
        Failure::new(
            Code::WorkerStart,
            format!("cannot start the worker: {e}; run enable again"),
        )
    })
}

/// `timeout` bounds systemd-run, which with `Type=exec` returns once the worker has started.
pub fn spawn(inv: &Invocation, timeout: Duration) -> Result<(), Failure> {
    let runtime = Runtime::from_env();
    // The proxy variables reach the worker through a private file, never a command line.
    if let Err(e) = runtime.save_proxy(&inv.root.data_dir()) {
        let f = Failure::state_io(&inv.root.data_dir().join(files::PROXY_ENV), e);
        return Err(f);
    }
    if inv.root.systemd_running() && proc::on_path("systemd-run") {
        match spawn_systemd(inv, &runtime, timeout) {
            Ok(()) => {
                tracing::info!("worker started as a transient systemd unit");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!("{e}; starting the worker in its own session")
            }
        }
    }
    spawn_session(inv)?;
    tracing::info!("worker started in its own session");
    Ok(())
}
