//! Secrets planted through every path: a SAS `packageUrl` and a proxy with credentials in the
//! protected settings, in apply's environment, in `/etc/waagent.conf` and in the process's
//! proxy variables; then every way a download can end (404, 403, checksum mismatch, a redirect
//! carrying another query string, a proxy answering 407, a proxy that works and an installer
//! that fails printing its argv and environment). Afterwards no file under the world (agent
//! tree, fake root, logs, status, events, the stubs' recorded argv/env) and neither stdout nor
//! stderr holds a secret, raw, URL-encoded or base64.

use crate::artifact_server::{Fault, Server};
use crate::common::*;
use crate::support::*;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The SAS signature (as a real one: base64 with `+`, `/`, `=`, percent-encoded in the URL).
const SIG: &str = "Sas+Sig/K7q9Wz4Jx=";
/// A second signature only a redirect's `Location` carries.
const REDIR_SIG: &str = "Redir+Sig/P3m8Qa=";
const PROXY_USER: &str = "proxyuser";
const PROXY_PW: &str = "Pr0xy-Pw_77zq";
const KERNEL: &str = "5.15.0-1073-azure";
const DEB: &str = "doca-host_3.2.1-044000-25.10-ubuntu2204_amd64.deb";

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn sas_query(sig: &str) -> String {
    format!(
        "sv=2022-11-02&se=2030-01-01T00%3A00%3A00Z&sr=b&sp=r&sig={}",
        pct(sig)
    )
}

/// Every form a leak could take.
fn forms() -> Vec<String> {
    let mut v = Vec::new();
    for s in [SIG, REDIR_SIG, PROXY_PW] {
        v.push(s.to_string());
        v.push(pct(s));
        v.push(b64(s));
        // Base64 without padding, as some encoders leave it.
        v.push(b64(s).trim_end_matches('=').to_string());
    }
    v.push(b64(&format!("{PROXY_USER}:{PROXY_PW}")));
    v.push(sas_query(SIG));
    v
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Walk the whole world except `skip` (where the test itself planted a secret on purpose).
fn scan(w: &World, runs: &[&Run], skip: &[PathBuf]) -> CaseResult {
    let forms = forms();
    for r in runs {
        for f in &forms {
            ensure!(
                !r.stdout.contains(f.as_str()) && !r.stderr.contains(f.as_str()),
                "secret form {f:?} in output: {}",
                r.text()
            );
        }
    }
    fn walk(p: &Path, skip: &[PathBuf], out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            if skip.contains(&path) {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(&path, skip, out);
            } else if ft.is_file() {
                if let Ok(b) = fs::read(&path) {
                    out.push((path, b));
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(w.tmp.path(), skip, &mut files);
    for (path, bytes) in files {
        let text = String::from_utf8_lossy(&bytes);
        for f in &forms {
            ensure!(
                !text.contains(f.as_str()),
                "secret form {f:?} in {}",
                path.display()
            );
        }
    }
    Ok(())
}

/// Package-manager stubs on an apt host: headers and build tools install, anything with the
/// DOCA package fails; every call records its argv and environment and prints both, so a
/// secret handed to a child shows up in the log, the output tail and the status message.
fn doca_world() -> World {
    let mut w = World::new("hbv3-noverbs", HB);
    w.verify_timeout = 2;
    let calls = w.tmp.path().join("calls.log");
    for prog in ["apt-get", "apt-cache", "apt-mark", "dpkg"] {
        write_exec(
            &w.stubs.join(prog),
            &format!(
                "#!/bin/sh\n{{ echo \"{prog} $*\"; env | sed 's/^/  env: /'; }} >> '{c}'\n\
                 echo \"{prog} called with: $*\"; env >&2\n\
                 case \"$*\" in *doca*|*.deb*) exit 100;; esac\n\
                 case \"$*\" in *linux-headers-{KERNEL}*) mkdir -p \"$IBDRIVER_ROOT/usr/src/linux-headers-{KERNEL}\";; esac\n\
                 exit 0\n",
                c = calls.display()
            ),
        );
    }
    w
}

fn body() -> Vec<u8> {
    b"!<arch>\ndebian-binary   doca-host test package".repeat(100)
}

/// A tiny loopback server for what the artifact server does not do: redirects and proxies.
struct Responder {
    base: String,
    stop: Arc<AtomicBool>,
}

#[derive(Clone)]
enum Behaviour {
    /// 302 to this location.
    Redirect(String),
    /// 407 to everything (a proxy that wants other credentials).
    ProxyAuthRequired,
    /// A proxy that answers CONNECT with 200 and then serves this body as the origin would,
    /// or serves it directly to an absolute-form request.
    Proxy(Vec<u8>),
    /// A proxy whose origin answers 404.
    ProxyNotFound,
}

fn read_head(conn: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn respond_body(conn: &mut std::net::TcpStream, body: &[u8]) {
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(body);
}

impl Responder {
    fn start(b: Behaviour) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let head = read_head(&mut conn);
                let connect = head.starts_with("CONNECT ");
                match &b {
                    Behaviour::Redirect(loc) => {
                        let _ = write!(conn, "HTTP/1.1 302 Found\r\nLocation: {loc}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                    Behaviour::ProxyAuthRequired => {
                        let _ = write!(conn, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                    Behaviour::Proxy(body) => {
                        if connect {
                            let _ = write!(conn, "HTTP/1.1 200 Connection established\r\n\r\n");
                            let _ = read_head(&mut conn);
                        }
                        respond_body(&mut conn, body);
                    }
                    Behaviour::ProxyNotFound => {
                        if connect {
                            let _ = write!(conn, "HTTP/1.1 200 Connection established\r\n\r\n");
                            let _ = read_head(&mut conn);
                        }
                        let _ = write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            }
        });
        Responder { base, stop }
    }

    /// A proxy URL for this responder with the test's credentials.
    fn proxy_url(&self) -> String {
        self.base.replace(
            "http://",
            &format!("http://{PROXY_USER}:{}@", pct(PROXY_PW)),
        )
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Where the artifact comes from and what happens on the way.
#[derive(Clone, Copy, Debug)]
enum Path_ {
    NotFound,
    Forbidden,
    ChecksumMismatch,
    RedirectToNotFound,
    RedirectToPackage,
    InstallerFails,
    Proxy407,
    ProxyWorksInstallerFails,
    ProxyOriginNotFound,
}

/// How the secrets reach the handler.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    /// Protected settings, decrypted by enable and its worker.
    Protected,
    /// `IBDRIVER_PACKAGE_URL` / `IBDRIVER_PROXY` for `apply`.
    ApplyEnv,
}

/// Servers kept alive for the run.
struct Setup {
    _servers: (Option<Server>, Vec<Responder>),
    package_url: String,
    proxy: Option<String>,
    sha256: String,
    want: u64,
}

fn setup(p: Path_) -> Setup {
    let data = body();
    let good = sha(&data);
    let q = sas_query(SIG);
    let art = |fault: Option<Fault>| {
        let s = Server::start(data.clone());
        if let Some(f) = fault {
            for _ in 0..10 {
                s.fault(f.clone());
            }
        }
        s
    };
    match p {
        Path_::NotFound | Path_::Forbidden => {
            let code = if matches!(p, Path_::NotFound) {
                404
            } else {
                403
            };
            let s = art(Some(Fault::Status(code)));
            Setup {
                package_url: format!("{}/{DEB}?{q}", s.base),
                _servers: (Some(s), vec![]),
                proxy: None,
                sha256: good,
                want: 230,
            }
        }
        Path_::ChecksumMismatch => {
            let s = art(None);
            Setup {
                package_url: format!("{}/{DEB}?{q}", s.base),
                _servers: (Some(s), vec![]),
                proxy: None,
                sha256: "ab".repeat(32),
                want: 231,
            }
        }
        Path_::RedirectToNotFound | Path_::RedirectToPackage => {
            let s = art(if matches!(p, Path_::RedirectToNotFound) {
                Some(Fault::Status(404))
            } else {
                None
            });
            let r = Responder::start(Behaviour::Redirect(format!(
                "{}/{DEB}?{}",
                s.base,
                sas_query(REDIR_SIG)
            )));
            Setup {
                package_url: format!("{}/{DEB}?{q}", r.base),
                _servers: (Some(s), vec![r]),
                proxy: None,
                sha256: good,
                want: if matches!(p, Path_::RedirectToNotFound) {
                    230
                } else {
                    215
                },
            }
        }
        Path_::InstallerFails => {
            let s = art(None);
            Setup {
                package_url: format!("{}/{DEB}?{q}", s.base),
                _servers: (Some(s), vec![]),
                proxy: None,
                sha256: good,
                want: 215,
            }
        }
        Path_::Proxy407 | Path_::ProxyWorksInstallerFails | Path_::ProxyOriginNotFound => {
            let r = Responder::start(match p {
                Path_::Proxy407 => Behaviour::ProxyAuthRequired,
                Path_::ProxyWorksInstallerFails => Behaviour::Proxy(data.clone()),
                _ => Behaviour::ProxyNotFound,
            });
            // The origin is never reached directly: the proxy answers for it.
            Setup {
                package_url: format!("{}/{DEB}?{q}", dead_url()),
                proxy: Some(r.proxy_url()),
                _servers: (None, vec![r]),
                sha256: good,
                want: match p {
                    Path_::ProxyWorksInstallerFails => 215,
                    _ => 230,
                },
            }
        }
    }
}

/// Encrypt `protected` for a fresh certificate and write settings `seq`.
fn protect(w: &World, seq: u64, public: Value, protected: &Value) {
    let (thumb, crt) = w.certificate(true);
    let blob = w.encrypt(&protected.to_string(), &crt, "-aes256");
    w.protected_settings(seq, public, &blob, &thumb);
}

fn public_for(s: &Setup) -> Value {
    json!({"stack": "doca", "package": {"sha256": s.sha256}, "lockTimeoutSeconds": 5, "reboot": "never"})
}

/// Enable with the secrets in the protected settings; the worker's terminal status must carry
/// exactly the expected code.
fn via_protected(w: &World, s: &Setup, extra_env: &[(&str, &str)]) -> Result<Vec<Run>, String> {
    let mut prot = json!({"packageUrl": s.package_url});
    if let Some(p) = &s.proxy {
        prot["proxy"] = json!(p);
    }
    protect(w, 1, public_for(s), &prot);
    let mut c = w.command(&["enable"], 1);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let r = run_bounded(w, c, VERB_BOUND);
    r.expect_exit(0)?;
    let v = settle(w, 1)?;
    ensure!(
        status_value(&v) == "error" && status_code(&v) == s.want,
        "want error {}, got {} {}: {}",
        s.want,
        status_value(&v),
        status_code(&v),
        message(&v)
    );
    Ok(vec![r])
}

fn via_apply(w: &World, s: &Setup, extra_env: &[(&str, &str)]) -> Result<Vec<Run>, String> {
    let mut env: Vec<(&str, &str)> = vec![("IBDRIVER_PACKAGE_URL", s.package_url.as_str())];
    if let Some(p) = &s.proxy {
        env.push(("IBDRIVER_PROXY", p.as_str()));
    }
    env.extend_from_slice(extra_env);
    let r = apply(w, &public_for(s), &env);
    r.expect_exit(exit_for(s.want))?;
    ensure!(
        r.stdout.starts_with(&format!("error {} ", s.want)),
        "want error {}: {}",
        s.want,
        r.text()
    );
    Ok(vec![r])
}

fn download_case(p: Path_, via: Via) -> Case {
    let name = format!(
        "{}_{}",
        path_name(p),
        if via == Via::Protected {
            "protected_settings"
        } else {
            "apply_env"
        }
    );
    case(name, move || {
        let w = doca_world();
        let s = setup(p);
        let runs = match via {
            Via::Protected => via_protected(&w, &s, &[])?,
            Via::ApplyEnv => via_apply(&w, &s, &[])?,
        };
        let refs: Vec<&Run> = runs.iter().collect();
        clean(&w, &refs)?;
        if matches!(
            p,
            Path_::InstallerFails | Path_::RedirectToPackage | Path_::ProxyWorksInstallerFails
        ) {
            ensure!(
                w.calls().contains("doca"),
                "the installer ran: {}",
                w.calls()
            );
        }
        scan(&w, &refs, &[])
    })
}

fn path_name(p: Path_) -> &'static str {
    match p {
        Path_::NotFound => "http_404",
        Path_::Forbidden => "http_403",
        Path_::ChecksumMismatch => "checksum_mismatch",
        Path_::RedirectToNotFound => "redirect_with_query_to_404",
        Path_::RedirectToPackage => "redirect_with_query_to_package",
        Path_::InstallerFails => "installer_fails_printing_argv_and_env",
        Path_::Proxy407 => "proxy_407",
        Path_::ProxyWorksInstallerFails => "through_proxy_installer_fails",
        Path_::ProxyOriginNotFound => "through_proxy_404",
    }
}

const PATHS: [Path_; 9] = [
    Path_::NotFound,
    Path_::Forbidden,
    Path_::ChecksumMismatch,
    Path_::RedirectToNotFound,
    Path_::RedirectToPackage,
    Path_::InstallerFails,
    Path_::Proxy407,
    Path_::ProxyWorksInstallerFails,
    Path_::ProxyOriginNotFound,
];

/// A proxy with credentials in `/etc/waagent.conf` (the planted file itself is not scanned).
fn waagent_proxy_case(p: Path_, via: Via) -> Case {
    let name = format!(
        "waagent_conf_proxy_{}_{}",
        path_name(p),
        if via == Via::Protected {
            "enable"
        } else {
            "apply"
        }
    );
    case(name, move || {
        let w = doca_world();
        let mut s = setup(p);
        let proxy = s.proxy.take().expect("a proxy path");
        let authority = proxy.trim_start_matches("http://");
        let (host, port) = authority.rsplit_once(':').unwrap();
        w.set_file(
            "etc/waagent.conf",
            &format!("Provisioning.Agent=auto\nHttpProxy.Host={host}\nHttpProxy.Port={port}\n"),
        );
        let runs = match via {
            Via::Protected => via_protected(&w, &s, &[])?,
            Via::ApplyEnv => via_apply(&w, &s, &[])?,
        };
        let refs: Vec<&Run> = runs.iter().collect();
        clean(&w, &refs)?;
        scan(&w, &refs, &[w.root.join("etc/waagent.conf")])
    })
}

/// A proxy with credentials in the process's own `http_proxy`/`https_proxy`. The variable is
/// the caller's: a child may inherit it as it is, so the stubs' recorded environment is not
/// scanned here; everything we write is.
fn env_proxy_case(p: Path_, via: Via) -> Case {
    let name = format!(
        "env_http_proxy_{}_{}",
        path_name(p),
        if via == Via::Protected {
            "enable"
        } else {
            "apply"
        }
    );
    case(name, move || {
        let w = doca_world();
        let mut s = setup(p);
        let proxy = s.proxy.take().expect("a proxy path");
        let env = [
            ("http_proxy", proxy.as_str()),
            ("https_proxy", proxy.as_str()),
        ];
        // Stubs record only their argv here.
        for prog in ["apt-get", "apt-cache", "apt-mark", "dpkg"] {
            write_exec(
                &w.stubs.join(prog),
                &format!(
                    "#!/bin/sh\necho \"{prog} $*\" >> '{c}'\necho \"{prog} called with: $*\"\n\
                     case \"$*\" in *doca*|*.deb*) exit 100;; esac\n\
                     case \"$*\" in *linux-headers-{KERNEL}*) mkdir -p \"$IBDRIVER_ROOT/usr/src/linux-headers-{KERNEL}\";; esac\nexit 0\n",
                    c = w.tmp.path().join("calls.log").display()
                ),
            );
        }
        let runs = match via {
            Via::Protected => via_protected(&w, &s, &env)?,
            Via::ApplyEnv => via_apply(&w, &s, &env)?,
        };
        let refs: Vec<&Run> = runs.iter().collect();
        clean(&w, &refs)?;
        scan(&w, &refs, &[])
    })
}

/// Settings-time errors whose message must name the key, never the value.
fn settings_error(
    name: &'static str,
    protected: fn() -> Value,
    public: fn() -> Value,
    want: u64,
) -> Case {
    case(format!("settings_error_{name}"), move || {
        let w = doca_world();
        protect(&w, 1, public(), &protected());
        let r = enable(&w, 1);
        r.expect_exit(exit_for(want))?;
        let v = read_status(&w, 1)?.ok_or("no status")?;
        ensure!(status_code(&v) == want, "want {want}: {v}");
        clean(&w, &[&r])?;
        scan(&w, &[&r], &[])
    })
}

fn apply_env_error(
    name: &'static str,
    env: fn() -> Vec<(&'static str, String)>,
    want: u64,
) -> Case {
    case(format!("apply_env_error_{name}"), move || {
        let w = doca_world();
        let env = env();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = apply(
            &w,
            &json!({"stack": "doca", "package": {"sha256": "ab".repeat(32)}}),
            &pairs,
        );
        r.expect_exit(exit_for(want))?;
        ensure!(
            r.stdout.starts_with(&format!("error {want} ")),
            "{}",
            r.text()
        );
        clean(&w, &[&r])?;
        scan(&w, &[&r], &[])
    })
}

/// `diagnose` after a failed download with secrets: the bundle, unpacked, holds none.
fn diagnose_case(via: Via) -> Case {
    let name = format!(
        "diagnose_after_a_failed_download_{}",
        if via == Via::Protected {
            "enable"
        } else {
            "apply"
        }
    );
    case(name, move || {
        let w = doca_world();
        let s = setup(Path_::NotFound);
        let mut runs = match via {
            Via::Protected => via_protected(&w, &s, &[])?,
            Via::ApplyEnv => via_apply(&w, &s, &[])?,
        };
        let out = w.tmp.path().join("bundle.tar.gz");
        let mut c = w.command(&["diagnose", "--out", out.to_str().unwrap()], 1);
        if via == Via::ApplyEnv {
            c.env("IBDRIVER_PACKAGE_URL", &s.package_url);
        }
        let d = run_bounded(&w, c, VERB_BOUND);
        d.expect_exit(0)?;
        let unpacked = w.tmp.path().join("bundle");
        fs::create_dir_all(&unpacked).unwrap();
        let st = std::process::Command::new("tar")
            .arg("xzf")
            .arg(&out)
            .arg("-C")
            .arg(&unpacked)
            .status()
            .unwrap();
        ensure!(st.success(), "bundle unpacks");
        runs.push(d);
        let refs: Vec<&Run> = runs.iter().collect();
        clean(&w, &refs)?;
        scan(&w, &refs, &[])
    })
}

/// Under systemd the worker starts through `systemd-run`: its argv (recorded by the stub, then
/// started as systemd would) and the units we write carry no secret.
fn systemd_case(p: Path_) -> Case {
    case(
        format!("under_systemd_{}_protected_settings", path_name(p)),
        move || {
            let w = doca_world();
            w.set_file("run/systemd/system/.keep", "");
            write_exec(
                &w.stubs.join("systemd-run"),
                &format!(
                "#!/bin/sh\n{{ echo \"systemd-run $*\"; env | sed 's/^/  env: /'; }} >> '{c}'\n\
                 while [ $# -gt 0 ]; do case \"$1\" in --*) shift;; *) break;; esac; done\n\
                 setsid \"$@\" </dev/null >/dev/null 2>&1 &\nexit 0\n",
                c = w.tmp.path().join("calls.log").display()
            ),
            );
            let s = setup(p);
            let runs = via_protected(&w, &s, &[])?;
            ensure!(
                w.calls().contains("systemd-run --unit=ibdriver-worker-1-"),
                "the worker went through systemd-run: {}",
                w.calls()
            );
            let refs: Vec<&Run> = runs.iter().collect();
            clean(&w, &refs)?;
            scan(&w, &refs, &[])
        },
    )
}

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for p in PATHS {
        v.push(download_case(p, Via::Protected));
        v.push(download_case(p, Via::ApplyEnv));
    }
    for p in [
        Path_::Proxy407,
        Path_::ProxyWorksInstallerFails,
        Path_::ProxyOriginNotFound,
    ] {
        for via in [Via::Protected, Via::ApplyEnv] {
            v.push(waagent_proxy_case(p, via));
            v.push(env_proxy_case(p, via));
        }
    }
    v.push(settings_error(
        "package_url_not_http",
        || json!({"packageUrl": format!("ftp://127.0.0.1/{DEB}?{}", sas_query(SIG))}),
        || json!({"stack": "doca", "package": {"sha256": "ab".repeat(32)}}),
        103,
    ));
    v.push(settings_error(
        "proxy_not_a_url",
        || json!({"proxy": format!("{PROXY_USER}:{PROXY_PW} at the corp proxy")}),
        || json!({}),
        103,
    ));
    v.push(settings_error(
        "unknown_protected_key_holding_a_secret",
        || json!({"packageUrl": format!("https://127.0.0.1/{DEB}?{}", sas_query(SIG)), "sasToken": SIG}),
        || json!({"stack": "doca", "package": {"sha256": "ab".repeat(32)}}),
        103,
    ));
    v.push(settings_error(
        "protected_proxy_is_a_number",
        || json!({"proxy": 7, "packageUrl": format!("https://127.0.0.1/x?{}", sas_query(SIG))}),
        || json!({}),
        103,
    ));
    v.push(case("settings_error_public_package_url_with_sas", || {
        let w = doca_world();
        w.settings(
            1,
            json!({"stack": "doca", "package": {"url": format!("https://127.0.0.1/{DEB}?{}", sas_query(SIG)), "sha256": "ab".repeat(32)}}),
        );
        let r = enable(&w, 1);
        r.expect_exit(1)?;
        let v = read_status(&w, 1)?.ok_or("no status")?;
        ensure!(status_code(&v) == 103, "{v}");
        ensure!(message(&v).contains("packageUrl"), "says what to do: {}", message(&v));
        clean(&w, &[&r])?;
        // The public settings file is the user's own plaintext; nothing we write repeats it.
        scan(&w, &[&r], &[w.handler_dir.join("config/1.settings")])
    }));
    v.push(case("settings_error_protected_plaintext_not_json", || {
        let w = doca_world();
        let (thumb, crt) = w.certificate(true);
        let blob = w.encrypt(
            &format!("{{\"packageUrl\": \"https://h/x?{}\"", sas_query(SIG)),
            &crt,
            "-aes256",
        );
        w.protected_settings(1, json!({}), &blob, &thumb);
        let r = enable(&w, 1);
        r.expect_exit(1)?;
        let v = read_status(&w, 1)?.ok_or("no status")?;
        ensure!(status_code(&v) == 106, "{v}");
        clean(&w, &[&r])?;
        scan(&w, &[&r], &[])
    }));
    v.push(apply_env_error(
        "package_url_not_http",
        || {
            vec![(
                "IBDRIVER_PACKAGE_URL",
                format!("ftp://h/{DEB}?{}", sas_query(SIG)),
            )]
        },
        103,
    ));
    v.push(apply_env_error(
        "proxy_not_a_url",
        || vec![("IBDRIVER_PROXY", format!("{PROXY_USER}:{PROXY_PW}"))],
        103,
    ));
    v.push(systemd_case(Path_::NotFound));
    v.push(systemd_case(Path_::Proxy407));
    v.push(systemd_case(Path_::InstallerFails));
    v.push(diagnose_case(Via::Protected));
    v.push(diagnose_case(Via::ApplyEnv));
    v.push(case("success_then_noop_with_protected_settings", || {
        // Secrets in settings that need no download: the success, the heartbeat and the
        // no-op after it carry none of them.
        let mut w = World::new("hbv3", HB);
        w.verify_timeout = 2;
        let proxy = format!("http://{PROXY_USER}:{}@127.0.0.1:9", pct(PROXY_PW));
        protect(&w, 1, json!({}), &json!({"proxy": proxy, "packageUrl": format!("https://127.0.0.1/x.tgz?{}", sas_query(SIG))}));
        let r = enable(&w, 1);
        r.expect_exit(0)?;
        let v = settle(&w, 1)?;
        ensure!(status_value(&v) == "success", "{v}");
        let r2 = enable(&w, 1);
        r2.expect_exit(0)?;
        clean(&w, &[&r, &r2])?;
        scan(&w, &[&r, &r2], &[])
    }));
    v
}

#[test]
fn no_secret_anywhere() {
    run_table("secrets", cases());
}
