//! Test support: a fake agent tree, a fake host root copied from `tests/fixtures/hosts`, stub
//! programs on PATH that record their calls, and a loopback IMDS. Nothing touches the real host.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NAME: &str = "OpenSource.HpcCompute.InfiniBandDriverLinux";
pub const VERSION: &str = "1.0.0";

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ibdriver"))
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            fs::copy(e.path(), &dst).unwrap();
        }
    }
}

pub fn write(path: &Path, content: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

pub fn write_exec(path: &Path, script: &str) {
    write(path, script);
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A loopback IMDS answering compute metadata; stops when dropped (or after 5 minutes).
pub struct Imds {
    pub url: String,
    stop: Arc<AtomicBool>,
}

impl Imds {
    pub fn start(vm_size: &str, secure_boot: bool) -> Imds {
        Imds::serve(format!(
            r#"{{"vmSize":"{vm_size}","location":"eastus","offer":"ubuntu-hpc","publisher":"microsoft-dsvm","sku":"2204","version":"latest","securityProfile":{{"secureBootEnabled":"{secure_boot}","securityType":"TrustedLaunch"}},"osType":"Linux"}}"#
        ))
    }

    /// Answer compute metadata requests with `body` as it is.
    pub fn serve(body: String) -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut buf = [0u8; 4096];
                        let n = conn.read(&mut buf).unwrap_or(0);
                        let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                        let resp = if req.contains("metadata: true")
                            && req.starts_with("get /metadata/instance/compute")
                        {
                            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                        } else {
                            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                        };
                        let _ = conn.write_all(resp.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Imds { url, stop }
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A URL where nothing listens (connection refused at once).
pub fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

pub struct World {
    pub tmp: tempfile::TempDir,
    pub handler_dir: PathBuf,
    pub lib_dir: PathBuf,
    pub log_dir: PathBuf,
    pub root: PathBuf,
    pub stubs: PathBuf,
    pub imds_url: String,
    pub verify_timeout: u64,
    _imds: Option<Imds>,
}

impl World {
    /// A fake agent tree and a copy of fixture host `host`, with IMDS answering `vm_size`.
    pub fn new(host: &str, vm_size: &str) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let lib_dir = tmp.path().join("lib");
        let handler_dir = lib_dir.join(format!("{NAME}-{VERSION}"));
        let log_dir = tmp.path().join("log").join(NAME);
        for d in [
            handler_dir.join("config"),
            handler_dir.join("status"),
            log_dir.join("events"),
        ] {
            fs::create_dir_all(&d).unwrap();
        }
        let env = serde_json::json!([{
            "name": NAME, "version": 1.0,
            "handlerEnvironment": {
                "logFolder": log_dir, "configFolder": handler_dir.join("config"),
                "statusFolder": handler_dir.join("status"), "heartbeatFile": handler_dir.join("heartbeat.log"),
                "eventsFolder": log_dir.join("events"), "eventsFolder_preview": log_dir.join("events")
            }
        }]);
        write(
            &handler_dir.join("HandlerEnvironment.json"),
            env.to_string(),
        );
        let root = tmp.path().join("root");
        copy_tree(&fixtures().join("hosts").join(host), &root);
        let stubs = tmp.path().join("stubs");
        let calls = tmp.path().join("calls.log");
        // Package managers and installers fail unless a test scripts them: nothing may ever
        // reach this machine's real package database.
        for prog in [
            "apt-get",
            "apt-cache",
            "apt-mark",
            "dpkg",
            "dnf",
            "yum",
            "zypper",
            "tdnf",
            "rpm",
            "dkms",
        ] {
            write_exec(
                &stubs.join(prog),
                &format!(
                    "#!/bin/sh\necho \"{prog} $*\" >> '{}'\nexit 1\n",
                    calls.display()
                ),
            );
        }
        for prog in [
            "systemctl",
            "modprobe",
            "reboot",
            "update-initramfs",
            "dracut",
            "depmod",
            "rdma",
        ] {
            write_exec(
                &stubs.join(prog),
                &format!(
                    "#!/bin/sh\necho \"{prog} $*\" >> '{}'\nexit 0\n",
                    calls.display()
                ),
            );
        }
        // `ip -j -4 addr show`: the IPoIB address the host would have.
        write_exec(
            &stubs.join("ip"),
            &format!(
                "#!/bin/sh\necho \"ip $*\" >> '{}'\necho '[{{\"ifname\":\"ib0\",\"addr_info\":[{{\"family\":\"inet\",\"local\":\"172.16.1.4\",\"prefixlen\":16}}]}}]'\n",
                calls.display()
            ),
        );
        let imds = Imds::start(vm_size, false);
        World {
            imds_url: imds.url.clone(),
            _imds: Some(imds),
            tmp,
            handler_dir,
            lib_dir,
            log_dir,
            root,
            stubs,
            verify_timeout: 5,
        }
    }

    /// A booted systemd host: `run/systemd/system` exists and a `systemd-run` stub on PATH
    /// records its call, runs `first` (shell), then starts the command detached as a
    /// transient unit would. With `clean_env` the command sees only what `--setenv` gave it,
    /// as under real systemd; otherwise it inherits the caller's environment.
    pub fn fake_systemd(&self, first: &str, clean_env: bool) {
        fs::create_dir_all(self.root.join("run/systemd/system")).unwrap();
        let start = if clean_env { "env -i $envs " } else { "" };
        write_exec(
            &self.stubs.join("systemd-run"),
            &format!(
                "#!/bin/sh\necho \"systemd-run $*\" >> '{}'\n{first}\nenvs=''\n\
                 while [ $# -gt 0 ]; do case \"$1\" in --setenv=*) envs=\"$envs ${{1#--setenv=}}\"; shift;; --*) shift;; *) break;; esac; done\n\
                 setsid {start}\"$@\" </dev/null >/dev/null 2>&1 &\nexit 0\n",
                self.tmp.path().join("calls.log").display()
            ),
        );
    }

    /// systemctl as a booted systemd answers it: every call is recorded; `is-enabled UNIT` and
    /// `is-active UNIT` print the word `answers` gives for that query (exit 0 only for
    /// "enabled" and "active", as systemctl does); any other `is-*` query says "disabled" and
    /// exits 1; everything else succeeds.
    pub fn systemctl_says(&self, answers: &[(&str, &str, &str)]) {
        let cases: String = answers
            .iter()
            .map(|(query, unit, word)| {
                let exit = if matches!(*word, "enabled" | "active") {
                    0
                } else {
                    1
                };
                format!("  '{query} {unit}') echo {word}; exit {exit} ;;\n")
            })
            .collect();
        write_exec(
            &self.stubs.join("systemctl"),
            &format!(
                "#!/bin/sh\necho \"systemctl $*\" >> '{}'\ncase \"$1 $2\" in\n{cases}  is-*) echo disabled; exit 1 ;;\nesac\nexit 0\n",
                self.tmp.path().join("calls.log").display()
            ),
        );
    }

    /// The handler's log so far (empty before the first line).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_dir.join("ibdriver.log")).unwrap_or_default()
    }

    pub fn calls(&self) -> String {
        fs::read_to_string(self.tmp.path().join("calls.log")).unwrap_or_default()
    }

    pub fn path_var(&self) -> String {
        format!(
            "{}:{}",
            self.stubs.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    pub fn settings(&self, seq: u64, public: serde_json::Value) {
        self.settings_raw(seq, &serde_json::json!({"runtimeSettings": [{"handlerSettings": {
            "publicSettings": public, "protectedSettings": null, "protectedSettingsCertThumbprint": null}}]}).to_string());
    }

    pub fn settings_raw(&self, seq: u64, text: &str) {
        write(
            &self
                .handler_dir
                .join("config")
                .join(format!("{seq}.settings")),
            text,
        );
    }

    pub fn command(&self, args: &[&str], seq: u64) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(&self.handler_dir)
            .env("PATH", self.path_var())
            .env("ConfigSequenceNumber", seq.to_string())
            .env("AZURE_GUEST_AGENT_EXTENSION_VERSION", VERSION)
            .env("IBDRIVER_ROOT", &self.root)
            // The hardware is the root's own `sys/` unless a test moves it.
            .env_remove("IBDRIVER_SYSFS")
            .env("IBDRIVER_IMDS_URL", &self.imds_url)
            .env(
                "IBDRIVER_VERIFY_TIMEOUT_SECONDS",
                self.verify_timeout.to_string(),
            );
        c
    }

    /// The agent's `update` of this version from `from`, asking for version `to`.
    pub fn update(&self, from: &str, to: &str, seq: u64) -> Output {
        self.command(&["update"], seq)
            .env("AZURE_GUEST_AGENT_UPDATING_FROM_VERSION", from)
            .env("VERSION", to)
            .output()
            .unwrap()
    }

    /// `verb` as the agent runs it for handler version `version` (e.g. the old one's uninstall).
    pub fn run_as(&self, verb: &str, seq: u64, version: &str) -> Output {
        self.command(&[verb], seq)
            .env("AZURE_GUEST_AGENT_EXTENSION_VERSION", version)
            .output()
            .unwrap()
    }

    pub fn run(&self, verb: &str, seq: u64) -> Output {
        self.command(&[verb], seq).output().unwrap()
    }

    pub fn status_path(&self, seq: u64) -> PathBuf {
        self.handler_dir
            .join("status")
            .join(format!("{seq}.status"))
    }

    pub fn status(&self, seq: u64) -> Option<serde_json::Value> {
        let text = fs::read_to_string(self.status_path(seq)).ok()?;
        Some(serde_json::from_str(&text).expect("status file is always valid JSON"))
    }

    /// Poll (bounded) until the status for `seq` is terminal.
    pub fn wait_terminal(&self, seq: u64, timeout: Duration) -> serde_json::Value {
        let terminal = poll_value(timeout, || {
            self.status(seq)
                .filter(|v| matches!(v[0]["status"]["status"].as_str(), Some("success" | "error")))
        });
        let Some(v) = terminal else {
            panic!("status {seq} not terminal in time: {:?}", self.status(seq));
        };
        // Let the worker finish its last writes (mrseq, heartbeat, timer).
        self.wait_worker_gone(Duration::from_secs(10));
        v
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("var/lib/infiniband-driver-linux")
    }

    pub fn wait_worker_gone(&self, timeout: Duration) {
        assert!(
            no_worker_within(&self.handler_dir, timeout),
            "worker still running"
        );
    }

    pub fn heartbeat(&self) -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(self.handler_dir.join("heartbeat.log")).unwrap())
            .unwrap()
    }

    pub fn mrseq(&self) -> Option<String> {
        fs::read_to_string(self.handler_dir.join("mrseq"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Every file under the world, for secret scans.
    pub fn all_text(&self) -> String {
        let mut out = String::new();
        fn walk(p: &Path, out: &mut String) {
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() && !path.is_symlink() {
                    walk(&path, out);
                } else if let Ok(b) = fs::read(&path) {
                    out.push_str(&String::from_utf8_lossy(&b));
                }
            }
        }
        walk(self.tmp.path(), &mut out);
        out
    }

    /// Make a certificate with the real openssl; returns its thumbprint. The pair is stored where
    /// the agent stores it (two levels above the config folder) unless `install` is false.
    pub fn certificate(&self, install: bool) -> (String, PathBuf) {
        let dir = self.tmp.path().join(format!(
            "cert-{}",
            fs::read_dir(self.tmp.path()).unwrap().count()
        ));
        fs::create_dir_all(&dir).unwrap();
        let (crt, prv) = (dir.join("c.crt"), dir.join("c.prv"));
        let st = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=ibdriver-test",
                "-days",
                "2",
                "-keyout",
            ])
            .arg(&prv)
            .arg("-out")
            .arg(&crt)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let fp = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
            .arg(&crt)
            .output()
            .unwrap();
        let fp = String::from_utf8_lossy(&fp.stdout);
        let thumb: String = fp
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_uppercase();
        if install {
            fs::copy(&crt, self.lib_dir.join(format!("{thumb}.crt"))).unwrap();
            fs::copy(&prv, self.lib_dir.join(format!("{thumb}.prv"))).unwrap();
        }
        (thumb, crt)
    }

    /// Encrypt `plaintext` for `crt` with the real openssl (`-des3` or `-aes256`), base64.
    pub fn encrypt(&self, plaintext: &str, crt: &Path, cipher: &str) -> String {
        use std::process::Stdio;
        let mut child = Command::new("openssl")
            .args(["cms", "-encrypt", "-outform", "DER", cipher])
            .arg(crt)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(plaintext.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(out.stdout)
    }

    pub fn protected_settings(&self, seq: u64, public: serde_json::Value, blob: &str, thumb: &str) {
        self.settings_raw(seq, &serde_json::json!({"runtimeSettings": [{"handlerSettings": {
            "publicSettings": public, "protectedSettings": blob, "protectedSettingsCertThumbprint": thumb}}]}).to_string());
    }

    pub fn kvp(&self, records: &[(&str, &str)]) {
        let mut pool = Vec::new();
        for (k, v) in records {
            pool.extend(ibdriver::host::kvp::encode_record(k, v));
        }
        write(&self.root.join("var/lib/hyperv/.kvp_pool_0"), pool);
    }

    pub fn set_file(&self, rel: &str, content: &str) {
        write(&self.root.join(rel), content);
    }

    /// Make the fake host another distribution: an os-release fixture and its running kernel.
    pub fn as_distro(&self, os_release_fixture: &str, kernel: &str) {
        let text =
            fs::read_to_string(fixtures().join("os-release").join(os_release_fixture)).unwrap();
        self.set_file("etc/os-release", &text);
        self.set_file("proc/sys/kernel/osrelease", &format!("{kernel}\n"));
    }
}

/// How often the waits below look again.
pub const TICK: Duration = Duration::from_millis(20);

/// Look at `look` every [`TICK`] until it gives a value or `bound` passes (None then). Every
/// wait in the tests goes through the handler's own wait loop (`sys::clock::poll`): it waits
/// for an event, never for a fixed time.
pub fn poll_value<T>(bound: Duration, mut look: impl FnMut() -> Option<T>) -> Option<T> {
    use ibdriver::sys::clock::{poll, Look};
    poll(bound, TICK, || match look() {
        Some(v) => Look::Done(Some(v)),
        None => Look::NotYet(None),
    })
    .0
}

/// Did `cond` come to hold within `bound`?
pub fn poll_for(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll_value(bound, || cond().then_some(())).is_some()
}

/// Wait (bounded) for `cond`; fail the test naming `what` when it does not come.
pub fn wait_for(what: &str, bound: Duration, cond: impl FnMut() -> bool) {
    assert!(
        poll_for(bound, cond),
        "timed out after {bound:?} waiting for {what}"
    );
}

/// Wait (bounded) for `look` to give a value; fail the test naming `what` when none comes.
pub fn wait_value<T>(what: &str, bound: Duration, look: impl FnMut() -> Option<T>) -> T {
    match poll_value(bound, look) {
        Some(v) => v,
        None => panic!("timed out after {bound:?} waiting for {what}"),
    }
}

/// The exit of `child` within `bound`; None if it was still running then (it is killed and
/// reaped).
pub fn wait_exit(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let st = poll_value(bound, || child.try_wait().unwrap());
    if st.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    st
}

/// Run `cmd` to its end with its output captured, failing the test (and killing it) if it
/// takes longer than `bound`. Its stdin is the caller's choice.
pub fn output_within(mut cmd: Command, bound: Duration) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if wait_exit(&mut child, bound).is_none() {
        panic!("still running after {bound:?}");
    }
    child.wait_with_output().unwrap()
}

/// No worker of `handler_dir` runs, on three looks in a row (one scan of /proc can miss a
/// process under load), within `bound`.
pub fn no_worker_within(handler_dir: &Path, bound: Duration) -> bool {
    let mut quiet = 0;
    poll_for(bound, || {
        quiet = if worker_running(handler_dir) {
            0
        } else {
            quiet + 1
        };
        quiet >= 3
    })
}

/// Is a worker for this handler directory still running? (Scans /proc for our own binary.)
pub fn worker_running(handler_dir: &Path) -> bool {
    let needle = handler_dir.to_string_lossy().to_string();
    fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            return false;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        cmd.contains("worker") && cmd.contains(&needle) && cmd.contains("ibdriver")
    })
}

/// `cmd` run under `wrapper prefix...` (a parent process, a network namespace): the wrapper
/// gets `prefix`, then cmd's program and arguments; cmd's environment changes carry over.
pub fn wrapped(cmd: &Command, wrapper: impl AsRef<std::ffi::OsStr>, prefix: &[&str]) -> Command {
    let mut outer = Command::new(wrapper);
    outer
        .args(prefix)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => outer.env(k, v),
            None => outer.env_remove(k),
        };
    }
    outer
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn status_code(v: &serde_json::Value) -> u64 {
    v[0]["status"]["code"].as_u64().unwrap()
}

pub fn status_value(v: &serde_json::Value) -> String {
    v[0]["status"]["status"].as_str().unwrap().to_string()
}

pub fn message(v: &serde_json::Value) -> String {
    v[0]["status"]["formattedMessage"]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The workers of this handler directory now running: processes whose command line names the
/// worker verb and the directory, less their own children (a child between fork and exec still
/// shows its parent's command line).
pub fn worker_pids(handler_dir: &Path) -> Vec<u32> {
    let needle = handler_dir.to_string_lossy().to_string();
    let found: Vec<(u32, u32)> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd);
            if !(cmd.contains("worker") && cmd.contains(&needle)) {
                return None;
            }
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    found
        .iter()
        .filter(|(_, ppid)| !found.iter().any(|(p, _)| p == ppid))
        .map(|(pid, _)| *pid)
        .collect()
}

/// The exit code that goes with a status code number (from the handler's own code table).
pub fn exit_for(code: u64) -> i32 {
    ibdriver::error::Code::ALL
        .iter()
        .find(|c| u64::from(c.number()) == code)
        .map(|c| c.exit_code())
        .unwrap_or_else(|| panic!("undocumented code {code}"))
}
