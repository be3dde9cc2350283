//! Running external programs: by argv (never a shell), with a timeout, optional stdin, and
//! bounded capture of stdout/stderr.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How much of each stream we keep; the rest is read and dropped.
pub const CAPTURE_LIMIT: usize = 256 * 1024;

#[derive(Debug)]
pub struct Output {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// `exit code 4` or `killed by a signal`, for messages.
    pub fn describe_exit(&self) -> String {
        match self.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".into(),
        }
    }

    /// The last `max` characters of stderr, on one line, for a status message.
    pub fn stderr_tail(&self, max: usize) -> String {
        tail_line(&String::from_utf8_lossy(&self.stderr), max)
    }
}

#[derive(Debug, Error)]
pub enum ProcError {
    #[error("{program} was not found on PATH")]
    NotFound { program: String },
    #[error("cannot run {program}: {err}")]
    Spawn {
        program: String,
        err: std::io::Error,
    },
    #[error("{program} did not finish within {secs} s and was stopped")]
    Timeout { program: String, secs: u64 },
}

/// Keep the end of a text, folded onto one line.
pub fn tail_line(text: &str, max: usize) -> String {
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let n = one.chars().count();
    if n <= max {
        one
    } else {
        one.chars().skip(n - max).collect()
    }
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = CAPTURE_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        kept
    })
}

/// Run `program args...`, feeding `stdin` if given, waiting at most `timeout`.
pub fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, ProcError> {
    spawn_wait(
        Command::new(program),
        program,
        args,
        stdin,
        timeout,
        &|_| {},
    )
}

/// [`run`] with extra environment variables; `on_spawn` learns the child's pid before the wait.
pub fn run_env(
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
    on_spawn: &dyn Fn(u32),
) -> Result<Output, ProcError> {
    let mut cmd = Command::new(program);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    spawn_wait(cmd, program, args, None, timeout, on_spawn)
}

fn spawn_wait(
    mut cmd: Command,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
    on_spawn: &dyn Fn(u32),
) -> Result<Output, ProcError> {
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            ProcError::NotFound {
                program: program.to_string(),
            }
        } else {
            ProcError::Spawn {
                program: program.to_string(),
                err,
            }
        }
    })?;
    crate::faultpoint::hit("child started", program);
    on_spawn(child.id());
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let data = data.to_vec();
        // A writer thread, so a program that never reads stdin cannot block us.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let deadline = Instant::now() + timeout;
    // Short programs (ip, systemctl) end within a millisecond or two: poll often at first,
    // then every 5 ms for the long ones.
    let mut pause = Duration::from_micros(100);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcError::Timeout {
                    program: program.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(ProcError::Spawn {
                    program: program.to_string(),
                    err: e,
                })
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Output {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// Is `program` an executable somewhere on PATH?
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| {
        std::fs::metadata(d.join(program))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_code() {
        let o = run(
            "sh",
            &["-c", "echo out; echo err >&2; exit 3"],
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr_tail(100), "err");
    }

    #[test]
    fn feeds_stdin() {
        let o = run("cat", &[], Some(b"hello"), Duration::from_secs(5)).unwrap();
        assert_eq!(o.stdout, b"hello");
    }

    #[test]
    fn times_out() {
        let e = run("sleep", &["5"], None, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, ProcError::Timeout { .. }));
    }

    #[test]
    fn missing_program() {
        let e = run(
            "no-such-program-ibdriver",
            &[],
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, ProcError::NotFound { .. }));
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail_line("a\nbb\nccc", 5), "b ccc");
    }
}
