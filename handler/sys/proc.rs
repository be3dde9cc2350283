//! Running external programs: by argv (never a shell), with a timeout, optional stdin, and
//! bounded capture of stdout/stderr. The timeout is a promise about the whole process group
//! the program starts, and about our reads of its pipes, not just about the program itself.

use crate::error::{Cause, Code, Failure};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
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
        describe_exit(self.code)
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

impl ProcError {
    /// What stopped the program from running to its end, as a failure's cause.
    pub fn cause(&self) -> Cause {
        match self {
            ProcError::NotFound { program } | ProcError::Timeout { program, .. } => {
                Cause::Process {
                    program: program.clone(),
                    exit: None,
                }
            }
            ProcError::Spawn { err, .. } => Cause::io(err),
        }
    }
}

/// A program that did not succeed: it could not run, or it ended other than with exit 0.
/// The one place a process's end becomes both a message and a [`Cause`].
#[derive(Debug, Error)]
pub enum Unsuccessful {
    #[error(transparent)]
    Run(#[from] ProcError),
    #[error("{what} failed ({}): {tail}", describe_exit(*code))]
    Exit {
        /// What was run, as a message names it.
        what: String,
        program: String,
        code: Option<i32>,
        /// The end of its stderr, on one line.
        tail: String,
    },
}

impl Unsuccessful {
    pub fn cause(&self) -> Cause {
        match self {
            Unsuccessful::Run(e) => e.cause(),
            Unsuccessful::Exit { program, code, .. } => Cause::Process {
                program: program.clone(),
                exit: *code,
            },
        }
    }

    /// This as a failure with `code`: `context` and the message, and the cause kept.
    pub fn failure(&self, code: Code, context: &str) -> Failure {
        Failure::new(code, format!("{context}{self}")).because(self.cause())
    }
}

impl Output {
    /// `Ok(self)` on exit 0; otherwise the failure of `what` (a message's name for the run)
    /// with the last `max` characters of its stderr.
    pub fn require_success(
        self,
        program: &str,
        what: &str,
        max: usize,
    ) -> Result<Output, Unsuccessful> {
        if self.success() {
            return Ok(self);
        }
        // Never stdout: a program's output may be what we keep secret (openssl's plaintext).
        Err(Unsuccessful::Exit {
            what: what.to_string(),
            program: program.to_string(),
            code: self.code,
            tail: self.stderr_tail(max),
        })
    }
}

/// `exit code 4` or `killed by a signal`, for messages.
fn describe_exit(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".into(),
    }
}

/// Run `program` (as [`run`]) and require exit 0; `what` names the run in messages.
pub fn run_ok(
    program: &str,
    args: &[&str],
    what: &str,
    timeout: Duration,
) -> Result<Output, Unsuccessful> {
    run(program, args, None, timeout)?.require_success(program, what, 300)
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

/// After the program exits, how long we keep reading its pipes: a daemon it started (an
/// installer may legitimately leave one) can hold them open for ever, and must not hold us.
pub const EXIT_GRACE: Duration = Duration::from_secs(1);
/// On its time budget the program's process group gets SIGTERM, and SIGKILL this much later.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// The parent's ends of the child's pipes, served by one poll loop in the calling thread, so
/// the time budget bounds the reads and the stdin write alike and nothing is left blocked.
struct Pipes {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    stdin: Option<(ChildStdin, Vec<u8>, usize)>,
    out: Vec<u8>,
    err: Vec<u8>,
}

fn keep(kept: &mut Vec<u8>, data: &[u8]) {
    let room = CAPTURE_LIMIT.saturating_sub(kept.len());
    kept.extend_from_slice(&data[..data.len().min(room)]);
}

/// One read from a pipe poll called ready; `false` at end of file or on an error.
fn read_some(r: &mut impl Read, kept: &mut Vec<u8>, buf: &mut [u8]) -> bool {
    match r.read(buf) {
        Ok(0) => false,
        Ok(n) => {
            keep(kept, &buf[..n]);
            true
        }
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
        ),
    }
}

impl Pipes {
    /// Take the child's pipes. A stdin with nothing to write is closed at once: the end of
    /// file is all the program gets.
    fn of(child: &mut Child, stdin: Option<&[u8]>) -> Pipes {
        let stdin = match (stdin, child.stdin.take()) {
            (Some(data), Some(pipe)) if !data.is_empty() => {
                // Non-blocking, so a program that never reads its stdin cannot hold the loop.
                let _ = fcntl(pipe.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
                Some((pipe, data.to_vec(), 0))
            }
            _ => None,
        };
        Pipes {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            stdin,
            out: Vec::new(),
            err: Vec::new(),
        }
    }

    fn reading(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// Wait at most `limit` for any pipe to be ready, then move what is ready.
    fn step(&mut self, limit: Duration) {
        let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
        let (o, e, i) = {
            let mut fds = Vec::with_capacity(3);
            let mut at = [usize::MAX; 3];
            if let Some(p) = &self.stdout {
                at[0] = fds.len();
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            if let Some(p) = &self.stderr {
                at[1] = fds.len();
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            if let Some((p, _, _)) = &self.stdin {
                at[2] = fds.len();
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLOUT));
            }
            if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) <= 0 {
                return;
            }
            let ready = |k: usize| {
                at[k] != usize::MAX && fds[at[k]].revents().is_some_and(|r| !r.is_empty())
            };
            (ready(0), ready(1), ready(2))
        };
        let mut buf = [0u8; 65536];
        if o && !read_some(
            self.stdout.as_mut().expect("polled"),
            &mut self.out,
            &mut buf,
        ) {
            self.stdout = None;
        }
        if e && !read_some(
            self.stderr.as_mut().expect("polled"),
            &mut self.err,
            &mut buf,
        ) {
            self.stderr = None;
        }
        if i {
            let (pipe, data, pos) = self.stdin.as_mut().expect("polled");
            match pipe.write(&data[*pos..]) {
                Ok(n) => *pos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The program closed its stdin: it does not want the rest.
                Err(_) => *pos = data.len(),
            }
            if *pos >= data.len() {
                // Closing is the end of file the program waits for.
                self.stdin = None;
            }
        }
    }
}

/// Run `program args...`, feeding `stdin` if given, waiting at most `timeout`.
pub fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, ProcError> {
    let job = Job {
        program,
        args,
        stdin,
        timeout,
    };
    spawn_wait(Command::new(program), &job, &|_| {})
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
    let job = Job {
        program,
        args,
        stdin: None,
        timeout,
    };
    spawn_wait(cmd, &job, on_spawn)
}

/// What to run, with what on its stdin, for how long.
struct Job<'a> {
    program: &'a str,
    args: &'a [&'a str],
    stdin: Option<&'a [u8]>,
    timeout: Duration,
}

/// The one place a program is started. It leads its own process group, so a time budget
/// stops everything it started, and our pipes are closed when it has exited (after
/// [`EXIT_GRACE`]) even if a process it left behind still holds them.
fn spawn_wait(cmd: Command, job: &Job, on_spawn: &dyn Fn(u32)) -> Result<Output, ProcError> {
    let mut child = start(cmd, job)?;
    crate::sys::faultpoint::hit("child started", job.program);
    on_spawn(child.id());
    let deadline = Instant::now() + job.timeout;
    let mut pipes = Pipes::of(&mut child, job.stdin);
    let mut running = Running {
        child,
        job,
        deadline,
    };
    let status = match running.serve(&mut pipes)? {
        Some(exited) => exited,
        None => running.reap(&mut pipes)?,
    };
    Ok(Output {
        code: status.code(),
        stdout: pipes.out,
        stderr: pipes.err,
    })
}

/// Start the program in a process group of its own, its stdout and stderr piped to us.
fn start(mut cmd: Command, job: &Job) -> Result<Child, ProcError> {
    cmd.args(job.args)
        .stdin(if job.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.spawn().map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            ProcError::NotFound {
                program: job.program.to_string(),
            }
        } else {
            ProcError::Spawn {
                program: job.program.to_string(),
                err,
            }
        }
    })
}

/// A started program and when its time budget ends.
struct Running<'a> {
    child: Child,
    job: &'a Job<'a>,
    deadline: Instant,
}

impl Running<'_> {
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, ProcError> {
        self.child.try_wait().map_err(|err| ProcError::Spawn {
            program: self.job.program.to_string(),
            err,
        })
    }

    /// While the pipes are open, poll them; the poll's wait is also how soon we notice that
    /// the program exited with its pipes still held, so it starts short. Returns the exit
    /// status if the program exited meanwhile.
    fn serve(&mut self, pipes: &mut Pipes) -> Result<Option<ExitStatus>, ProcError> {
        let mut exited = None;
        let mut grace_end = self.deadline;
        let mut tick = Duration::from_millis(1);
        while pipes.reading() {
            let now = Instant::now();
            if now >= grace_end {
                if exited.is_some() {
                    break;
                }
                return Err(self.stop_group());
            }
            pipes.step(tick.min(grace_end - now));
            if exited.is_none() {
                if let Some(st) = self.try_wait()? {
                    exited = Some(st);
                    pipes.stdin = None;
                    grace_end = Instant::now() + EXIT_GRACE;
                }
            }
            tick = (tick * 2).min(Duration::from_millis(20));
        }
        Ok(exited)
    }

    /// The program closed its output but has not exited: wait for it within the budget.
    /// Short programs (ip, systemctl) end within a millisecond or two of closing their
    /// output: poll often at first, then every 5 ms for the long ones.
    fn reap(&mut self, pipes: &mut Pipes) -> Result<ExitStatus, ProcError> {
        let mut pause = Duration::from_micros(100);
        loop {
            match self.try_wait()? {
                Some(st) => return Ok(st),
                None if Instant::now() >= self.deadline => return Err(self.stop_group()),
                None => {
                    // A program still writing its stdin after closing stdout and stderr.
                    if pipes.stdin.is_some() {
                        pipes.step(pause);
                    } else {
                        thread::sleep(pause);
                    }
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
            }
        }
    }

    /// The budget ran out: stop the program and everything it started in its group.
    fn stop_group(&mut self) -> ProcError {
        let child = &mut self.child;
        let group = Pid::from_raw(child.id() as i32);
        // The child is not reaped yet, so its pid still names its group.
        let _ = killpg(group, Signal::SIGTERM);
        let until = Instant::now() + TERM_GRACE;
        let mut pause = Duration::from_millis(1);
        while Instant::now() < until && matches!(child.try_wait(), Ok(None)) {
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        // Grandchildren that ignored SIGTERM or outlived the leader go too; the group lives on
        // while any of them does, so its id cannot have been reused.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
        ProcError::Timeout {
            program: self.job.program.to_string(),
            secs: self.job.timeout.as_secs(),
        }
    }
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

    /// Is `pid` a live process (a zombie counts as gone)?
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let state = s.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.starts_with('X')
            })
            .unwrap_or(false)
    }

    fn wait_gone(pid: i32) -> bool {
        use crate::sys::clock::{poll, Look};
        poll(Duration::from_secs(30), Duration::from_millis(20), || {
            Look::when(!alive(pid))
        })
        .1
    }

    fn pid_in(file: &std::path::Path) -> i32 {
        use crate::sys::clock::{poll, Look};
        let (pid, found) = poll(Duration::from_secs(30), Duration::from_millis(10), || {
            match std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                Some(p) => Look::Done(p),
                None => Look::NotYet(0),
            }
        });
        assert!(found, "no pid in {}", file.display());
        pid
    }

    #[test]
    fn returns_after_exit_when_a_grandchild_holds_stdout() {
        let start = Instant::now();
        let o = run(
            "sh",
            &["-c", "sleep 1000 & echo $!; echo bye >&2"],
            None,
            Duration::from_secs(600),
        )
        .unwrap();
        assert!(o.success());
        let daemon: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        assert_eq!(o.stderr, b"bye\n");
        // Well before the grandchild's sleep ends, or the budget: the exit grace bounds it.
        assert!(start.elapsed() < Duration::from_secs(300));
        // A normal exit leaves what the program started alone (an installer's daemon).
        assert!(alive(daemon), "the daemon was killed");
        let _ = nix::sys::signal::kill(Pid::from_raw(daemon), Signal::SIGKILL);
    }

    #[test]
    fn budget_stops_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("pid");
        // The grandchild ignores SIGTERM and holds stdout; the child waits for ever.
        let script = format!(
            "trap '' TERM; sleep 1000 & echo $! > '{}'; echo started; wait",
            file.display()
        );
        let start = Instant::now();
        let e = run("sh", &["-c", &script], None, Duration::from_millis(500)).unwrap_err();
        assert!(matches!(e, ProcError::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(300));
        let grandchild = pid_in(&file);
        assert!(wait_gone(grandchild), "grandchild {grandchild} survived");
    }

    #[test]
    fn budget_holds_for_a_program_that_never_reads_stdin() {
        let big = vec![b'x'; 4 << 20];
        let start = Instant::now();
        let e = run(
            "sh",
            &["-c", "sleep 1000 <&0 & wait"],
            Some(&big),
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(matches!(e, ProcError::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(300));
    }

    #[test]
    fn large_output_and_input_pass_through() {
        let data: Vec<u8> = (0..(200 * 1024)).map(|i| (i % 251) as u8).collect();
        let o = run("cat", &[], Some(&data), Duration::from_secs(60)).unwrap();
        assert_eq!(o.stdout, data);
        let o = run(
            "sh",
            &[
                "-c",
                "head -c 400000 /dev/zero; head -c 300000 /dev/zero >&2",
            ],
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(o.stdout.len(), CAPTURE_LIMIT);
        assert_eq!(o.stderr.len(), CAPTURE_LIMIT);
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

    #[test]
    fn an_unsuccessful_run_keeps_its_exit_code_as_data_and_never_its_stdout() {
        let e = run_ok(
            "sh",
            &["-c", "echo plaintext; echo 'bad thing' >&2; exit 3"],
            "sh thing",
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "sh thing failed (exit code 3): bad thing");
        let f = e.failure(Code::ConfigureFailed, "configure: ");
        assert_eq!(f.process_exit(), Some(3));
        assert_eq!(
            f.message,
            "configure: sh thing failed (exit code 3): bad thing"
        );
        assert!(!f.message.contains("plaintext"));
        assert!(run_ok("true", &[], "true", Duration::from_secs(30)).is_ok());
        let e = run_ok("no-such-program-here", &[], "x", Duration::from_secs(30)).unwrap_err();
        assert!(
            matches!(e.cause(), Cause::Process { exit: None, .. }),
            "{e:?}"
        );
        let e = run_ok("sh", &["-c", "kill -9 $$"], "x", Duration::from_secs(30)).unwrap_err();
        assert_eq!(e.failure(Code::Internal, "").process_exit(), None);
        assert!(e.to_string().contains("killed by a signal"), "{e}");
    }
}
