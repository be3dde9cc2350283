//! The fetch pipeline against a loopback artifact server with faults.

#[path = "common/artifact_server.rs"]
mod artifact_server;
mod common;

use artifact_server::{Fault, Server};
use ibdriver::net::fetch::{self, FetchError, Limits, Options, Request, RetryPolicy};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::time::Duration;

/// A tarball shaped like an OFED bundle: a directory, an installer, packages, a symlink.
fn bundle(files: usize, file_size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut seed = 0x2545F4914F6CDD1Du64;
    let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    };
    add(
        &mut b,
        "MLNX_OFED_LINUX-24.10/mlnxofedinstall",
        b"#!/bin/sh\nexit 0\n",
        0o755,
    );
    for i in 0..files {
        // Half compressible, half noise, like RPMs and debs inside a real bundle.
        let data: Vec<u8> = (0..file_size)
            .map(|j| {
                if j % 2 == 0 {
                    (j % 251) as u8
                } else {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                }
            })
            .collect();
        add(
            &mut b,
            &format!("MLNX_OFED_LINUX-24.10/RPMS/pkg-{i}.rpm"),
            &data,
            0o644,
        );
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_cksum();
    b.append_link(&mut h, "MLNX_OFED_LINUX-24.10/latest.rpm", "RPMS/pkg-0.rpm")
        .unwrap();
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Run {
    sleeps: RefCell<Vec<Duration>>,
    limits: Limits,
    max_extract: u64,
    proxy: Option<String>,
    /// The bytes received so far, as the progress callback last said.
    received: std::cell::Cell<u64>,
    keep_going: Box<dyn Fn(&Run) -> bool>,
}

impl Run {
    fn new() -> Run {
        Run {
            sleeps: RefCell::new(Vec::new()),
            // Generous: these tests are about other things.
            limits: Limits {
                deadline: Duration::from_secs(120),
                min_rate: 1,
                window: Duration::from_secs(60),
            },
            max_extract: 1 << 30,
            proxy: None,
            received: std::cell::Cell::new(0),
            keep_going: Box::new(|_| true),
        }
    }

    fn limits(mut self, deadline_ms: u64, min_rate: u64, window_ms: u64) -> Run {
        self.limits = Limits {
            deadline: Duration::from_millis(deadline_ms),
            min_rate,
            window: Duration::from_millis(window_ms),
        };
        self
    }

    fn fetch(&self, req: &Request, dir: &std::path::Path) -> Result<fetch::Outcome, FetchError> {
        let sleep = |d: Duration| {
            self.sleeps.borrow_mut().push(d);
            std::thread::sleep(d)
        };
        let progress = |done: u64, _: Option<u64>| self.received.set(done);
        let keep_going = || (self.keep_going)(self);
        let opts = Options {
            proxy: self.proxy.clone(),
            retry: RetryPolicy {
                attempts: 6,
                base: Duration::from_millis(10),
                cap: Duration::from_millis(40),
            },
            max_extract: self.max_extract,
            limits: self.limits,
            sleep: &sleep,
            progress: &progress,
            keep_going: &keep_going,
            replace: false,
        };
        fetch::fetch(req, &dir.join("staging"), &dir.join("out"), &opts)
    }
}

fn request(server: &Server, data: &[u8], name: &str) -> Request {
    Request {
        url: format!("{}/{name}", server.base),
        sha256: sha(data),
        size: Some(data.len() as u64),
        extract: fetch::is_tarball(name),
    }
}

#[test]
fn downloads_verifies_and_unpacks() {
    let data = bundle(20, 100_000);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let out = Run::new()
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap();
    assert_eq!(out.files, 21);
    assert_eq!(out.size, data.len() as u64);
    let root = dir.path().join("out/MLNX_OFED_LINUX-24.10");
    assert_eq!(
        fs::read(root.join("RPMS/pkg-19.rpm")).unwrap().len(),
        100_000
    );
    assert_eq!(fs::read(root.join("latest.rpm")).unwrap().len(), 100_000);
    // Staging is cleaned up after success.
    assert!(fs::read_dir(dir.path().join("staging"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn reset_mid_body_resumes_from_where_it_stopped() {
    let data = bundle(40, 200_000);
    let server = Server::start(data.clone());
    server.fault(Fault::ResetAfter(data.len() / 3));
    server.fault(Fault::ResetAfter(data.len() / 4));
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new();
    let out = run
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap();
    assert_eq!(out.files, 41);
    let ratio = server.sent() as f64 / data.len() as f64;
    assert!(ratio < 1.15, "sent {:.3} of the artifact", ratio);
    assert_eq!(server.request_count(), 3);
    let reqs = server.requests.lock().unwrap();
    assert!(reqs[1]
        .to_ascii_lowercase()
        .contains(&format!("range: bytes={}-", data.len() / 3)));
}

#[test]
fn bursts_of_503_are_retried_with_capped_backoff() {
    let data = bundle(2, 10_000);
    let server = Server::start(data.clone());
    for _ in 0..4 {
        server.fault(Fault::Status(503));
    }
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new();
    run.fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap();
    let ms: Vec<u128> = run.sleeps.borrow().iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, vec![10, 20, 40, 40]);
}

#[test]
fn retries_give_up_after_the_last_attempt() {
    let data = bundle(1, 1000);
    let server = Server::start(data.clone());
    for _ in 0..10 {
        server.fault(Fault::Status(500));
    }
    let dir = tempfile::tempdir().unwrap();
    let err = Run::new()
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Exhausted { attempts: 6, .. }),
        "{err}"
    );
    assert_eq!(server.request_count(), 6);
    assert_eq!(err.failure().code, ibdriver::error::Code::DownloadFailed);
}

#[test]
fn not_found_is_permanent_and_the_sas_token_is_never_shown() {
    let data = bundle(1, 1000);
    let server = Server::start(data.clone());
    server.fault(Fault::Status(404));
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(&server, &data, "ofed.tgz");
    req.url.push_str("?sv=2024&sig=SECRETSIG");
    let run = Run::new();
    let err = run.fetch(&req, dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::Permanent { .. }), "{err}");
    assert_eq!(server.request_count(), 1);
    assert!(run.sleeps.borrow().is_empty());
    let f = err.failure();
    assert!(
        f.message.contains("HTTP 404") && !f.message.contains("SECRETSIG"),
        "{}",
        f.message
    );
    assert!(!dir.path().join("out").exists());
}

#[test]
fn wrong_checksum_uses_nothing_and_cleans_up() {
    let data = bundle(3, 10_000);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(&server, &data, "ofed.tgz");
    req.sha256 = "0".repeat(64);
    let err = Run::new().fetch(&req, dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
    assert_eq!(err.failure().code, ibdriver::error::Code::ChecksumMismatch);
    assert!(!dir.path().join("out").exists());
    assert!(fs::read_dir(dir.path().join("staging"))
        .unwrap()
        .next()
        .is_none());
}

/// Fetch the 10-file bundle with `partial(bundle)` left in staging by an earlier run, the
/// request naming the size or not; the outcome, the body bytes the server sent, the bundle's
/// length and the number of requests.
fn fetch_over_partial(
    known_size: bool,
    partial: impl Fn(&[u8]) -> Vec<u8>,
) -> (fetch::Outcome, u64, usize, usize) {
    let data = bundle(10, 100_000);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(&server, &data, "ofed.tgz");
    if !known_size {
        req.size = None;
    }
    let staging = dir.path().join("staging");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join(format!("{}.part", req.sha256)), partial(&data)).unwrap();
    let out = Run::new().fetch(&req, dir.path()).unwrap();
    (out, server.sent(), data.len(), server.request_count())
}

#[test]
fn a_partial_file_from_an_earlier_run_is_resumed() {
    // What a killed worker leaves behind.
    let (out, sent, len, _) = fetch_over_partial(true, |d| d[..d.len() / 2].to_vec());
    assert_eq!(out.transferred, (len - len / 2) as u64);
    assert_eq!(sent, (len - len / 2) as u64);
    assert_eq!(out.files, 11);
}

#[test]
fn without_a_known_size_a_complete_partial_file_is_not_downloaded_again() {
    // 416 with the server's length equal to what is here: the file is complete.
    let (out, sent, _, _) = fetch_over_partial(false, |d| d.to_vec());
    assert_eq!(out.files, 11);
    assert_eq!(sent, 0);
}

#[test]
fn without_a_known_size_a_partial_file_longer_than_the_artifact_is_restarted() {
    // The server answers the range past its end with 416 and its real length: our partial
    // file is not its file, so the download starts over rather than retrying that range.
    let (out, sent, len, requests) = fetch_over_partial(false, |d| [d, &[7u8; 100][..]].concat());
    assert_eq!(out.files, 11);
    assert_eq!(sent, len as u64);
    assert_eq!(requests, 2, "one 416, then the whole file");
}

#[test]
fn a_partial_file_longer_than_the_artifact_is_discarded() {
    let (out, sent, len, _) = fetch_over_partial(true, |d| [d, &[7u8; 100][..]].concat());
    assert_eq!(sent, len as u64);
    assert_eq!(out.files, 11);
}

#[test]
fn a_complete_partial_file_is_verified_without_downloading_it_again() {
    let (out, sent, _, _) = fetch_over_partial(true, |d| d.to_vec());
    assert_eq!(sent, 0);
    assert_eq!(out.files, 11);
}

/// A download reset after 1000 bytes whose resuming range request meets `fault`.
fn resumed_after_a_reset_answered_with(fault: Fault) -> fetch::Outcome {
    let data = bundle(5, 50_000);
    let server = Server::start(data.clone());
    server.fault(Fault::ResetAfter(1000));
    server.fault(fault);
    let dir = tempfile::tempdir().unwrap();
    Run::new()
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap()
}

#[test]
fn a_range_answered_from_another_offset_is_read_from_the_start() {
    assert_eq!(
        resumed_after_a_reset_answered_with(Fault::ShiftedRange).files,
        6
    );
}

#[test]
fn ten_redirects_are_followed_and_the_eleventh_is_refused() {
    let data = bundle(2, 1000);
    for (hops, ok) in [(10, true), (11, false)] {
        let server = Server::start(data.clone());
        let req = request(&server, &data, "ofed.tgz");
        for _ in 0..hops {
            server.fault(Fault::Redirect(req.url.clone()));
        }
        let dir = tempfile::tempdir().unwrap();
        let r = Run::new().fetch(&req, dir.path());
        assert_eq!(
            r.is_ok(),
            ok,
            "{hops} redirects: {:?}",
            r.err().map(|e| e.to_string())
        );
        if !ok {
            assert_eq!(server.request_count(), 11);
        }
    }
}

#[test]
fn a_server_that_ignores_range_is_read_from_the_start() {
    assert_eq!(
        resumed_after_a_reset_answered_with(Fault::IgnoreRange).files,
        6
    );
}

#[test]
fn plain_packages_are_stored_not_unpacked() {
    let data = b"!<arch>\ndebian-binary   ".repeat(1000);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let out = Run::new()
        .fetch(
            &request(
                &server,
                &data,
                "doca-host_3.2.1-044000-25.10-ubuntu2204_amd64.deb",
            ),
            dir.path(),
        )
        .unwrap();
    assert_eq!(
        out.path,
        dir.path()
            .join("out/doca-host_3.2.1-044000-25.10-ubuntu2204_amd64.deb")
    );
    assert_eq!(fs::read(&out.path).unwrap(), data);
}

#[test]
fn fetch_verb_end_to_end() {
    let data = bundle(4, 20_000);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let into = dir.path().join("ofed");
    let run = |sha: &str| {
        std::process::Command::new(common::bin())
            .args([
                "fetch",
                &format!("{}/ofed.tgz", server.base),
                "--sha256",
                sha,
                "--into",
            ])
            .arg(&into)
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .output()
            .unwrap()
    };
    let ok = run(&sha(&data));
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stderr).contains("100%"));
    assert!(into.join("MLNX_OFED_LINUX-24.10/mlnxofedinstall").exists());
    // DIR now holds files: a second fetch is refused before anything is downloaded, and
    // what is there stays as it was.
    let sent = server.sent();
    let again = run(&sha(&data));
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("is not empty") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(server.sent(), sent);
    assert!(into.join("MLNX_OFED_LINUX-24.10/mlnxofedinstall").exists());
    // A wrong checksum into a new directory: exit 14, and no directory left behind.
    let into_bad = dir.path().join("bad");
    let bad = std::process::Command::new(common::bin())
        .args([
            "fetch",
            &format!("{}/ofed.tgz", server.base),
            "--sha256",
            &"f".repeat(64),
            "--into",
        ])
        .arg(&into_bad)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(14));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("checksum mismatch"));
    assert!(!into_bad.exists());
}

#[test]
fn resets_that_make_progress_do_not_use_up_the_attempts() {
    let data = bundle(30, 100_000);
    let server = Server::start(data.clone());
    // More resets than attempts (6), each after some progress.
    for _ in 0..9 {
        server.fault(Fault::ResetAfter(data.len() / 12));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Run::new()
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap();
    assert_eq!(out.files, 31);
    assert_eq!(server.sent(), data.len() as u64);
}

#[test]
fn a_bad_url_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new();
    let req = Request {
        url: "ftp://127.0.0.1/x.tgz".into(),
        sha256: "0".repeat(64),
        size: None,
        extract: true,
    };
    let err = run.fetch(&req, dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::Permanent { .. }), "{err}");
    assert!(run.sleeps.borrow().is_empty());
}

/// What the fetch verb prints, run against `url` into `into` with `env`.
fn fetch_verb(
    url: &str,
    sha: &str,
    into: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["fetch", url, "--sha256", sha, "--into"])
        .arg(into)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .env("IBDRIVER_ROOT", into.parent().unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn fetch_verb_never_touches_what_dir_holds() {
    let data = bundle(2, 10_000);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/ofed.tgz", server.base);
    // A directory with the user's files: refused, nothing downloaded, nothing changed.
    let into = dir.path().join("mine");
    fs::create_dir(&into).unwrap();
    fs::write(into.join("notes.txt"), b"keep me").unwrap();
    let out = fetch_verb(&url, &sha(&data), &into, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(server.request_count(), 0);
    assert_eq!(fs::read(into.join("notes.txt")).unwrap(), b"keep me");
    assert_eq!(fs::read_dir(&into).unwrap().count(), 1);
    // A file where DIR should be: refused, the file kept.
    let file = dir.path().join("afile");
    fs::write(&file, b"data").unwrap();
    let out = fetch_verb(&url, &sha(&data), &file, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs::read(&file).unwrap(), b"data");
    // What the old staging name beside DIR holds is not ours any more: untouched.
    let beside = dir.path().join(".new.staging");
    fs::create_dir(&beside).unwrap();
    fs::write(beside.join(format!("{}.part", sha(&data))), b"user data").unwrap();
    // An empty directory receives the tree, with its own mode kept.
    let empty = dir.path().join("new");
    fs::create_dir(&empty).unwrap();
    let out = fetch_verb(&url, &sha(&data), &empty, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(empty.join("MLNX_OFED_LINUX-24.10/mlnxofedinstall").exists());
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 1, "no staging left");
    assert_eq!(
        fs::read(beside.join(format!("{}.part", sha(&data)))).unwrap(),
        b"user data"
    );
}

#[test]
fn fetch_verb_resumes_from_its_own_staging() {
    let data = bundle(4, 50_000);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let into = dir.path().join("ofed");
    let staging = into.join(".ibdriver-fetch");
    fs::create_dir_all(&staging).unwrap();
    let half = data.len() / 2;
    fs::write(staging.join(format!("{}.part", sha(&data))), &data[..half]).unwrap();
    let out = fetch_verb(
        &format!("{}/ofed.tgz", server.base),
        &sha(&data),
        &into,
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.sent(), (data.len() - half) as u64);
    assert!(!staging.exists());
}

#[test]
fn a_trickle_ends_in_a_clear_too_slow_error() {
    let data = bundle(2, 50_000);
    let server = Server::start(data.clone());
    server.fault(Fault::Trickle {
        bytes: 1,
        every: Duration::from_millis(20),
    });
    let dir = tempfile::tempdir().unwrap();
    let err = Run::new()
        .limits(60_000, 10_000, 400)
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap_err();
    let FetchError::TooSlow {
        received, min_rate, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert!(*received < 100, "{received}");
    assert_eq!(*min_rate, 10_000);
    let f = err.failure();
    assert_eq!(f.code, ibdriver::error::Code::DownloadFailed);
    assert!(
        f.message.contains("10000 bytes/s") && f.message.contains("bytes in"),
        "{}",
        f.message
    );
}

#[test]
fn resets_after_every_few_bytes_end_in_bounded_time() {
    let data = bundle(2, 50_000);
    let server = Server::start(data.clone());
    for _ in 0..10_000 {
        server.fault(Fault::ResetAfter(16));
    }
    let dir = tempfile::tempdir().unwrap();
    let err = Run::new()
        .limits(60_000, 100_000, 500)
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap_err();
    assert!(matches!(err, FetchError::TooSlow { .. }), "{err}");
    // Each reset made progress, so the attempt count never ran out: only the rate rule ended it.
    assert!(server.request_count() > 6, "{}", server.request_count());
}

#[test]
fn the_overall_deadline_ends_a_steady_but_endless_download() {
    let data = bundle(40, 100_000);
    let server = Server::start(data.clone());
    server.fault(Fault::Trickle {
        bytes: 16 * 1024,
        every: Duration::from_millis(20),
    });
    let dir = tempfile::tempdir().unwrap();
    let err = Run::new()
        .limits(800, 1, 60_000)
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Deadline { limit_s: 0, .. }),
        "{err}"
    );
    assert_eq!(err.failure().code, ibdriver::error::Code::DownloadFailed);
    // The partial download stays for a resume; nothing unpacked is kept.
    let staging: Vec<_> = fs::read_dir(dir.path().join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(staging, vec![format!("{}.part", sha(&data))]);
}

#[test]
fn the_stop_callback_ends_a_stalled_download() {
    let data = bundle(4, 100_000);
    let server = Server::start(data.clone());
    server.fault(Fault::StallAfter(70_000));
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new();
    // Stop once the first bytes are in: the download is then waiting on a silent server.
    run.keep_going = Box::new(|r: &Run| r.received.get() == 0);
    let err = run
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap_err();
    assert!(matches!(err, FetchError::Stopped { .. }), "{err}");
    assert_eq!(err.failure().code, ibdriver::error::Code::Superseded);
}

#[test]
fn hostile_redirects_are_permanent_errors_not_panics() {
    let data = bundle(1, 1000);
    for (location, count) in [
        ("file:///etc/passwd", 1),
        ("http://", 1),
        ("https:///nohost", 1),
        ("gopher://127.0.0.1/x", 1),
    ] {
        let server = Server::start(data.clone());
        server.fault(Fault::Redirect(location.into()));
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(&server, &data, "ofed.tgz");
        req.url.push_str("?sig=SECRETSIG");
        let err = Run::new().fetch(&req, dir.path()).unwrap_err();
        assert!(
            matches!(err, FetchError::Permanent { .. }),
            "{location}: {err}"
        );
        let msg = err.failure().message;
        assert!(
            msg.contains("redirect") && !msg.contains("SECRETSIG"),
            "{msg}"
        );
        assert_eq!(server.request_count(), count);
    }
    // A loop is cut after the bound.
    let server = Server::start(data.clone());
    for _ in 0..30 {
        server.fault(Fault::Redirect("/again.tgz".into()));
    }
    let dir = tempfile::tempdir().unwrap();
    let err = Run::new()
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap_err();
    assert!(err.to_string().contains("more than 10 redirects"), "{err}");
    assert_eq!(server.request_count(), 11);
    // A sane redirect is followed, with the Range it needs.
    let server = Server::start(data.clone());
    server.fault(Fault::Redirect("/mirror/ofed.tgz".into()));
    let dir = tempfile::tempdir().unwrap();
    let out = Run::new()
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap();
    assert_eq!(out.files, 2);
    assert!(server.requests.lock().unwrap()[1].starts_with("GET /mirror/ofed.tgz "));
}

/// A gzip'd tar of one file of zeros: tiny compressed, `size` inflated.
fn bomb(size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "zeros", std::io::repeat(0).take(size as u64))
        .unwrap();
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

use std::io::Read as _;

fn tree_size(p: &std::path::Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.map(|e| {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            tree_size(&e.path())
        } else {
            m.len()
        }
    })
    .sum()
}

#[test]
fn before_verification_unpacking_stays_within_a_multiple_of_what_arrived() {
    let data = bomb(64 << 20);
    let server = Server::start(data.clone());
    // Most of the bomb, then silence until the deadline.
    server.fault(Fault::StallAfter(data.len() * 3 / 4));
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new().limits(2500, 1, 60_000);
    let worst = std::rc::Rc::new(std::cell::Cell::new(0i64));
    let w = worst.clone();
    let unpack = dir.path().join(format!("staging/{}.unpack", sha(&data)));
    run.keep_going = Box::new(move |r: &Run| {
        let allowed = 4 * r.received.get() as i64 + (1 << 20);
        w.set(w.get().max(tree_size(&unpack) as i64 - allowed));
        true
    });
    let err = run
        .fetch(&request(&server, &data, "bomb.tgz"), dir.path())
        .unwrap_err();
    assert!(matches!(err, FetchError::Deadline { .. }), "{err}");
    assert!(
        worst.get() <= 0,
        "unpacked {} bytes past the bound",
        worst.get()
    );
    assert!(!dir
        .path()
        .join(format!("staging/{}.unpack", sha(&data)))
        .exists());
}

#[test]
fn a_verified_bomb_stops_at_the_size_bound_and_an_unverified_one_at_the_checksum() {
    let data = bomb(32 << 20);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new();
    run.max_extract = 8 << 20;
    let err = run
        .fetch(&request(&server, &data, "bomb.tgz"), dir.path())
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Extract {
                err: ibdriver::net::extract::ExtractError::TooLarge(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(&server, &data, "bomb.tgz");
    req.sha256 = "0".repeat(64);
    let err = Run::new().fetch(&req, dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
    assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    assert!(!dir.path().join("out").exists());
}

#[test]
fn a_highly_compressible_archive_is_unpacked_after_verification() {
    let data = bomb(16 << 20);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let out = Run::new()
        .fetch(&request(&server, &data, "zeros.tgz"), dir.path())
        .unwrap();
    assert_eq!(out.files, 1);
    assert_eq!(
        fs::metadata(dir.path().join("out/zeros")).unwrap().len(),
        16 << 20
    );
}

/// A loopback HTTP proxy that wants `user:secret`: 407 without them, else it answers the
/// absolute-form request itself with `body`. It records every request head.
struct AuthProxy {
    url_with: String,
    port: u16,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl AuthProxy {
    fn start(body: Vec<u8>) -> AuthProxy {
        use std::io::{BufRead, BufReader};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = heads.clone();
        std::thread::spawn(move || {
            let want = "Basic dXNlcjpzM2NyZXQ="; // user:s3cret
            for conn in l.incoming().take(20) {
                let Ok(mut conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let ok = head
                    .lines()
                    .any(|l| l.trim_end() == format!("Proxy-Authorization: {want}"));
                h.lock().unwrap().push(head);
                if ok {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(&body);
                } else {
                    let _ = write!(conn, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
        });
        AuthProxy {
            url_with: format!("http://user:s3cret@127.0.0.1:{port}"),
            port,
            heads,
        }
    }
}

#[test]
fn proxy_credentials_go_with_plain_http_requests_and_never_into_messages() {
    let data = bundle(2, 10_000);
    let proxy = AuthProxy::start(data.clone());
    // The origin is never reached directly: only the proxy answers.
    let url = "http://artifacts.invalid:81/ofed.tgz?sig=SAS";
    let req = Request {
        url: url.into(),
        sha256: sha(&data),
        size: None,
        extract: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new();
    run.proxy = Some(proxy.url_with.clone());
    let out = run.fetch(&req, dir.path()).unwrap();
    assert_eq!(out.files, 3);
    let first = proxy.heads.lock().unwrap()[0].clone();
    assert!(
        first.starts_with("GET http://artifacts.invalid:81/ofed.tgz?sig=SAS HTTP/1.1"),
        "{first}"
    );
    // Wrong credentials: a permanent error that names 407 and shows neither secret.
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new();
    run.proxy = Some(format!("http://user:WRONGPW@127.0.0.1:{}", proxy.port));
    let err = run.fetch(&req, dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::Permanent { .. }), "{err}");
    let msg = err.failure().message;
    assert!(
        msg.contains("407") && !msg.contains("WRONGPW") && !msg.contains("SAS"),
        "{msg}"
    );
    // Through the verb, with the proxy from the environment: logs and errors stay clean.
    let into = dir.path().join("verb");
    let wrong = format!("http://user:WRONGPW@127.0.0.1:{}", proxy.port);
    let out = fetch_verb(url, &sha(&data), &into, &[("http_proxy", &wrong)]);
    assert_eq!(out.status.code(), Some(14));
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("407") && !text.contains("WRONGPW") && !text.contains("sig=SAS"),
        "{text}"
    );
    let out = fetch_verb(url, &sha(&data), &into, &[("http_proxy", &proxy.url_with)]);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        !text.contains("s3cret") && !text.contains("dXNlcjpzM2NyZXQ"),
        "{text}"
    );
}

#[test]
fn refused_connections_end_by_the_retry_policy_not_as_too_slow() {
    // Pauses (10-40 ms) longer than the rate window (5 ms): before the first byte only the
    // time spent waiting on a server is judged, so the real cause is what the user reads.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let req = Request {
        url: format!("http://127.0.0.1:{port}/ofed.tgz"),
        sha256: "0".repeat(64),
        size: None,
        extract: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new().limits(60_000, 1 << 30, 5);
    let err = run.fetch(&req, dir.path()).unwrap_err();
    assert!(
        matches!(err, FetchError::Exhausted { attempts: 6, .. }),
        "{err}"
    );
    assert_eq!(run.sleeps.borrow().len(), 5, "one pause between attempts");
}

#[test]
fn fetch_verb_takes_a_relative_dir_and_makes_missing_parents_0755_under_umask_000() {
    use std::os::unix::fs::PermissionsExt;
    let data = bundle(1, 1_000);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/ofed.tgz", server.base);
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for into in ["out", "a/b/c"] {
        let script = format!(
            "umask 000; exec '{}' fetch '{url}' --sha256 {} --into {into}",
            common::bin().display(),
            sha(&data)
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .current_dir(dir.path())
            .env("IBDRIVER_ROOT", dir.path())
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{into}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let target = dir.path().join(into);
        assert!(target
            .join("MLNX_OFED_LINUX-24.10/mlnxofedinstall")
            .exists());
        let mut p = target.as_path();
        while p != dir.path() {
            assert_eq!(mode(p), 0o755, "{}", p.display());
            p = p.parent().unwrap();
        }
    }
}

#[test]
fn an_archive_entry_that_clashes_with_dir_moves_nothing() {
    // The archive's top level holds our own staging name: refused before anything moves.
    let mut b = tar::Builder::new(Vec::new());
    for path in ["f1", ".ibdriver-fetch/x", "f3"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, &b"x"[..]).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
    let data = gz.finish().unwrap();
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let into = dir.path().join("out");
    let out = fetch_verb(&format!("{}/x.tgz", server.base), &sha(&data), &into, &[]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was moved"), "{err}");
    for name in ["f1", "f3"] {
        assert!(!into.join(name).exists(), "{name} was moved: {err}");
    }
}
