//! Running one recipe command (a package manager, DKMS, an installer): by argv, its output to
//! our log, its stderr tail into the failure. An install command also runs tracked
//! ([`super::installer`]), so that a later worker can find it.

use super::installer::Track;
use crate::error::{Cause, Code, Failure};
use crate::plan::recipe::Cmd;
use crate::sys::proc;
use std::path::Path;

/// Run one recipe command, its output to our log, its stderr tail into the failure.
pub fn run(cmd: &Cmd, code_on_failure: Code) -> Result<proc::Output, Failure> {
    run_tracked(cmd, code_on_failure, None)
}

/// [`run`], recording the child in `track` (pid and start time) while it runs, so a worker that
/// replaces a killed one waits for an installer that outlived it instead of starting another.
pub(super) fn run_tracked(
    cmd: &Cmd,
    code_on_failure: Code,
    track: Option<&Path>,
) -> Result<proc::Output, Failure> {
    let shown = cmd.argv.join(" ");
    tracing::info!(purpose = %cmd.purpose, "running {shown}");
    let args: Vec<&str> = cmd.argv[1..].iter().map(String::as_str).collect();
    let mut env = cmd.env.clone();
    let track = track.map(|t| Track::begin(t, &mut env)).transpose()?;
    let record = |pid: u32| {
        if let Some(t) = &track {
            t.record(pid);
        }
    };
    let result = proc::run_env(&cmd.argv[0], &args, &env, cmd.timeout, &record);
    if let Some(t) = &track {
        t.end();
    }
    let out = result.map_err(|e| {
        Failure::new(code_on_failure, format!("{}: {e}", cmd.purpose)).because(e.cause())
    })?;
    log_output(&out);
    if out.success() {
        return Ok(out);
    }
    Err(Failure::new(
        code_on_failure,
        format!(
            "{} failed ({}): {}",
            cmd.purpose,
            out.describe_exit(),
            tail(&out)
        ),
    )
    .because(Cause::Process {
        program: cmd.argv[0].clone(),
        exit: out.code,
    }))
}

/// The last 200 lines of each stream, in order, into our log.
fn log_output(out: &proc::Output) {
    for (name, stream) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(stream);
        for line in text
            .lines()
            .rev()
            .take(200)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            tracing::info!(stream = name, "{line}");
        }
    }
}

/// What a failure message quotes: the end of stderr, else of stdout.
fn tail(out: &proc::Output) -> String {
    let err = out.stderr_tail(300);
    if err.is_empty() {
        proc::tail_line(&String::from_utf8_lossy(&out.stdout), 300)
    } else {
        err
    }
}
