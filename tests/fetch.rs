//! The fetch pipeline against a loopback artifact server with faults.

#[path = "common/artifact_server.rs"]
mod artifact_server;
mod common;

use artifact_server::{Fault, Server};
use ibdriver::fetch::{self, FetchError, Options, Request, RetryPolicy};
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
}

impl Run {
    fn new() -> Run {
        Run {
            sleeps: RefCell::new(Vec::new()),
        }
    }

    fn fetch(&self, req: &Request, dir: &std::path::Path) -> Result<fetch::Outcome, FetchError> {
        let sleep = |d: Duration| self.sleeps.borrow_mut().push(d);
        let opts = Options {
            proxy: None,
            retry: RetryPolicy {
                attempts: 6,
                base: Duration::from_millis(10),
                cap: Duration::from_millis(40),
            },
            max_extract: 1 << 30,
            sleep: &sleep,
            progress: &|_, _| {},
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

#[test]
fn a_partial_file_from_an_earlier_run_is_resumed() {
    let data = bundle(10, 100_000);
    let server = Server::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let req = request(&server, &data, "ofed.tgz");
    // What a killed worker leaves behind.
    let staging = dir.path().join("staging");
    fs::create_dir_all(&staging).unwrap();
    let half = data.len() / 2;
    fs::write(staging.join(format!("{}.part", req.sha256)), &data[..half]).unwrap();
    let out = Run::new().fetch(&req, dir.path()).unwrap();
    assert_eq!(out.transferred, (data.len() - half) as u64);
    assert_eq!(server.sent(), (data.len() - half) as u64);
    assert_eq!(out.files, 11);
}

#[test]
fn a_server_that_ignores_range_is_read_from_the_start() {
    let data = bundle(5, 50_000);
    let server = Server::start(data.clone());
    server.fault(Fault::ResetAfter(1000));
    server.fault(Fault::IgnoreRange);
    let dir = tempfile::tempdir().unwrap();
    let out = Run::new()
        .fetch(&request(&server, &data, "ofed.tgz"), dir.path())
        .unwrap();
    assert_eq!(out.files, 6);
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
    let bad = run(&"f".repeat(64));
    assert_eq!(bad.status.code(), Some(14));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("checksum mismatch"));
    // The verified earlier result is untouched by the failed one.
    assert!(into.join("MLNX_OFED_LINUX-24.10/mlnxofedinstall").exists());
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
