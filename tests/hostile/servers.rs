//! Hostile servers: artifact servers and metadata services that reset, trickle, stall, lie
//! about lengths and ranges, redirect nowhere, send huge or endless headers. Each case names
//! the exact error; the fetch's own deadline and minimum-rate rule (tiny here), and IMDS's
//! deadline, are what end the slow ones.

use ibdriver::error::Code;
use ibdriver::host::imds;
use ibdriver::net::fetch::{self, FetchError, Limits, Options, Request, RetryPolicy};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One step of a scripted answer.
#[derive(Clone)]
pub enum Act {
    Send(Vec<u8>),
    /// Send these bytes one at a time, `gap` apart (slowloris, trickle).
    Drip(Vec<u8>, Duration),
    Pause(Duration),
    /// Keep the connection open, sending nothing (until the client leaves or the time is up).
    Hold(Duration),
}

pub fn text(s: &str) -> Act {
    Act::Send(s.as_bytes().to_vec())
}

/// The request a connection carried.
pub struct Req {
    /// Which connection this is, from 0.
    pub n: usize,
    pub head: String,
}

impl Req {
    /// The start of a `Range: bytes=N-` header, if any.
    pub fn range(&self) -> Option<usize> {
        self.head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .and_then(|v| v.trim().trim_end_matches('-').parse().ok())
        })
    }
}

type Script = dyn Fn(&Req) -> Vec<Act> + Send + Sync;

/// A loopback server answering each connection (on its own thread) with a script. Stops when
/// dropped, or after two minutes.
pub struct Scripted {
    pub base: String,
    pub heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Scripted {
    pub fn start(script: impl Fn(&Req) -> Vec<Act> + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (h, st) = (heads.clone(), stop.clone());
        std::thread::spawn(move || {
            let count = AtomicUsize::new(0);
            let end = Instant::now() + Duration::from_secs(120);
            while !st.load(Ordering::Relaxed) && Instant::now() < end {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let n = count.fetch_add(1, Ordering::Relaxed);
                let (script, h, st) = (script.clone(), h.clone(), st.clone());
                std::thread::spawn(move || serve(conn, n, &*script, &h, &st));
            }
        });
        Scripted { base, heads, stop }
    }

    pub fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut conn: TcpStream,
    n: usize,
    script: &Script,
    heads: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        match conn.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let req = Req {
        n,
        head: String::from_utf8_lossy(&head).into_owned(),
    };
    heads.lock().unwrap().push(req.head.clone());
    for act in script(&req) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let ok = match act {
            Act::Send(bytes) => conn.write_all(&bytes).is_ok(),
            Act::Drip(bytes, gap) => bytes.iter().all(|c| {
                std::thread::sleep(gap);
                !stop.load(Ordering::Relaxed) && conn.write_all(&[*c]).is_ok()
            }),
            Act::Pause(d) => {
                std::thread::sleep(d);
                true
            }
            Act::Hold(d) => {
                let end = Instant::now() + d;
                conn.set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                    match conn.read(&mut b) {
                        Ok(0) => break,
                        Err(e)
                            if e.kind() != std::io::ErrorKind::WouldBlock
                                && e.kind() != std::io::ErrorKind::TimedOut =>
                        {
                            break
                        }
                        _ => {}
                    }
                }
                true
            }
        };
        if !ok {
            break;
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

pub fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A 200 answer with this body and an honest length.
pub fn ok(body: &[u8]) -> Vec<Act> {
    vec![
        text(&format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )),
        Act::Send(body.to_vec()),
    ]
}

/// A correct answer to a request, honouring `Range`.
pub fn ranged(req: &Req, body: &[u8], limit: usize) -> Vec<Act> {
    let start = req.range().unwrap_or(0).min(body.len());
    let end = start.saturating_add(limit).min(body.len());
    let status = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial\r\nContent-Range: bytes {start}-{}/{}\r\n",
            body.len() - 1,
            body.len()
        )
    } else {
        "HTTP/1.1 200 OK\r\n".into()
    };
    vec![
        text(&format!(
            "{status}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len() - start
        )),
        Act::Send(body[start..end].to_vec()),
    ]
}

fn status(code: u16) -> Vec<Act> {
    vec![text(&format!(
        "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))]
}

fn redirect(location: &str) -> Vec<Act> {
    vec![text(&format!(
        "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))]
}

/// The artifact the cases serve: a small valid tarball.
pub fn artifact() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    // Noise, so the compressed artifact is as long as the cases need.
    let mut seed = 0x9E3779B97F4A7C15u64;
    let data: Vec<u8> = (0..40_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "pkg/a.rpm", &data[..]).unwrap();
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

/// Tiny bounds, so every slow case ends quickly by the code's own rule.
pub fn opts<'a>(
    sleep: &'a dyn Fn(Duration),
    keep_going: &'a dyn Fn() -> bool,
    max_extract: u64,
) -> Options<'a> {
    Options {
        proxy: None,
        retry: RetryPolicy {
            attempts: 3,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(20),
        },
        max_extract,
        limits: Limits {
            deadline: Duration::from_secs(4),
            min_rate: 2000,
            window: Duration::from_secs(1),
        },
        sleep,
        progress: &|_, _| {},
        keep_going,
        replace: false,
    }
}

/// What a case expects of the fetch.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Ok,
    Permanent,
    Exhausted,
    TooSlow,
    Deadline,
    Stopped,
    Checksum,
    Size,
    TooLarge,
    Corrupt,
}

fn kind(e: &FetchError) -> Option<Want> {
    Some(match e {
        FetchError::Permanent { .. } => Want::Permanent,
        FetchError::Exhausted { .. } => Want::Exhausted,
        FetchError::TooSlow { .. } => Want::TooSlow,
        FetchError::Deadline { .. } => Want::Deadline,
        FetchError::Stopped { .. } => Want::Stopped,
        FetchError::Checksum { .. } => Want::Checksum,
        FetchError::Size { .. } => Want::Size,
        FetchError::Extract {
            err: ibdriver::net::extract::ExtractError::TooLarge(_),
            ..
        } => Want::TooLarge,
        FetchError::Extract {
            err: ibdriver::net::extract::ExtractError::Corrupt(_),
            ..
        } => Want::Corrupt,
        _ => return None,
    })
}

/// How a case's server answers a request for `body`.
type Answer = Arc<dyn Fn(&Req, &[u8]) -> Vec<Act> + Send + Sync>;

struct Case {
    name: &'static str,
    script: Answer,
    want: Want,
    /// A substring the error message must carry.
    says: &'static str,
}

fn case(
    name: &'static str,
    want: Want,
    says: &'static str,
    script: impl Fn(&Req, &[u8]) -> Vec<Act> + Send + Sync + 'static,
) -> Case {
    Case {
        name,
        script: Arc::new(script),
        want,
        says,
    }
}

fn chunked(body: &[u8]) -> Vec<Act> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    vec![Act::Send(out)]
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn artifact_cases() -> Vec<Case> {
    use Want::*;
    // Inflates 20 MiB of zeros; served as is, never inflated by the client.
    let bomb = Arc::new(gzip(&vec![0u8; 20 << 20]));
    let slow = Duration::from_millis(150);
    vec![
        case("plain 200", Ok, "", |_, b| ok(b)),
        case("honest resume after one reset", Ok, "", |r, b| {
            ranged(r, b, if r.n == 0 { 1000 } else { usize::MAX })
        }),
        case("HTTP/1.0 close-delimited body", Ok, "", |_, b| {
            vec![text("HTTP/1.0 200 OK\r\n\r\n"), Act::Send(b.to_vec())]
        }),
        case("chunked body", Ok, "", |_, b| chunked(b)),
        case("relative redirect then the file", Ok, "", |r, b| {
            if r.n == 0 {
                redirect("mirror/x.tgz")
            } else {
                ok(b)
            }
        }),
        case("three redirects then the file", Ok, "", |r, b| {
            if r.n < 3 {
                redirect(&format!("/hop{}", r.n))
            } else {
                ok(b)
            }
        }),
        case("a short pause mid-body", Ok, "", |_, b| {
            let half = b.len() / 2;
            vec![
                text(&format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )),
                Act::Send(b[..half].to_vec()),
                Act::Pause(Duration::from_millis(200)),
                Act::Send(b[half..].to_vec()),
            ]
        }),
        case(
            "closed before any answer",
            Exhausted,
            "3 attempts",
            |_, _| vec![],
        ),
        case("headers then reset", Exhausted, "3 attempts", |_, b| {
            vec![text(&format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                b.len()
            ))]
        }),
        case("reset after every 4 bytes", TooSlow, "bytes/s", |r, b| {
            ranged(r, b, 4)
        }),
        case("one byte per 150 ms", TooSlow, "bytes/s", move |_, b| {
            vec![
                text(&format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )),
                Act::Drip(b.to_vec(), slow),
            ]
        }),
        case("silence after the headers", TooSlow, "bytes/s", |_, b| {
            vec![
                text(&format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )),
                Act::Hold(Duration::from_secs(20)),
            ]
        }),
        case("slowloris headers", TooSlow, "bytes/s", move |_, _| {
            vec![Act::Drip(b"HTTP/1.1 200 OK\r\nX-Slow: ".repeat(50), slow)]
        }),
        case("accepts and never answers", TooSlow, "bytes/s", |_, _| {
            vec![Act::Hold(Duration::from_secs(20))]
        }),
        case("500 storm", Exhausted, "HTTP 500", |_, _| status(500)),
        case("503 storm", Exhausted, "HTTP 503", |_, _| status(503)),
        case("429 storm", Exhausted, "HTTP 429", |_, _| status(429)),
        case("408 storm", Exhausted, "HTTP 408", |_, _| status(408)),
        case("404", Permanent, "HTTP 404", |_, _| status(404)),
        case("403", Permanent, "HTTP 403", |_, _| status(403)),
        case("401", Permanent, "HTTP 401", |_, _| status(401)),
        case(
            "204 no content",
            Permanent,
            "unexpected HTTP 204",
            |_, _| status(204),
        ),
        case("a 3xx without Location", Permanent, "redirect", |_, _| {
            status(302)
        }),
        case(
            "redirect loop",
            Permanent,
            "more than 10 redirects",
            |_, _| redirect("/loop"),
        ),
        case("redirect to http://", Permanent, "redirect", |_, _| {
            redirect("http://")
        }),
        case(
            "redirect to file:///etc/passwd",
            Permanent,
            "redirect",
            |_, _| redirect("file:///etc/passwd"),
        ),
        case("redirect to ftp", Permanent, "redirect", |_, _| {
            redirect("ftp://127.0.0.1/x")
        }),
        case(
            "redirect to a host-less https",
            Permanent,
            "redirect",
            |_, _| redirect("https:///x"),
        ),
        case(
            "redirect with an empty port",
            Permanent,
            "redirect",
            |_, _| redirect("http://127.0.0.1:/x"),
        ),
        case(
            "length longer than the body, range ignored",
            Permanent,
            "restarted the transfer twice",
            |_, b| {
                vec![
                    text(&format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                        b.len()
                    )),
                    Act::Send(b[..b.len() / 2].to_vec()),
                ]
            },
        ),
        case(
            "206 with the wrong start",
            Permanent,
            "restarted the transfer twice",
            |r, b| {
                if r.range().is_none() {
                    vec![
                        text(&format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                            b.len()
                        )),
                        Act::Send(b[..100].to_vec()),
                    ]
                } else {
                    vec![
                    text(&format!(
                        "HTTP/1.1 206 P\r\nContent-Range: bytes 0-{}/{}\r\nContent-Length: {}\r\n\r\n",
                        b.len() - 1,
                        b.len(),
                        b.len()
                    )),
                    Act::Send(b.to_vec()),
                ]
                }
            },
        ),
        case(
            "206 with a garbage Content-Range",
            Permanent,
            "restarted the transfer twice",
            |_, b| {
                vec![
                    text(&format!(
                        "HTTP/1.1 206 P\r\nContent-Range: lies\r\nContent-Length: {}\r\n\r\n",
                        b.len()
                    )),
                    Act::Send(b.to_vec()),
                ]
            },
        ),
        case(
            "416 naming another length",
            Permanent,
            "restarted the transfer twice",
            |r, b| {
                if r.range().is_none() {
                    vec![
                        text(&format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                            b.len()
                        )),
                        Act::Send(b[..100].to_vec()),
                    ]
                } else {
                    vec![text(
                        "HTTP/1.1 416 R\r\nContent-Range: bytes */5\r\nContent-Length: 0\r\n\r\n",
                    )]
                }
            },
        ),
        case(
            "length shorter than the file",
            Size,
            "size mismatch",
            |_, b| {
                vec![
                    text(&format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                        b.len() - 10
                    )),
                    Act::Send(b.to_vec()),
                ]
            },
        ),
        case(
            "endless close-delimited body",
            Size,
            "size mismatch",
            |_, b| {
                let mut more = b.to_vec();
                more.extend(std::iter::repeat_n(0u8, 1 << 20));
                vec![text("HTTP/1.0 200 OK\r\n\r\n"), Act::Send(more)]
            },
        ),
        case(
            "another file, not even gzip",
            Checksum,
            "checksum mismatch",
            |_, b| ok(&vec![1u8; b.len()]),
        ),
        case(
            "one byte flipped in the gzip trailer",
            Checksum,
            "checksum mismatch",
            |_, b| {
                let mut other = b.to_vec();
                let n = other.len();
                other[n - 6] ^= 0xff;
                ok(&other)
            },
        ),
        case(
            "gzip content-encoding bomb",
            Checksum,
            "checksum mismatch",
            move |_, b| {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )
                .into_bytes();
                out.extend_from_slice(&bomb[..bomb.len().min(b.len())]);
                out.resize(out.len() + b.len().saturating_sub(bomb.len()), 0);
                vec![Act::Send(out)]
            },
        ),
        case("huge response header", Exhausted, "3 attempts", |_, _| {
            vec![text(&format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n",
                "a".repeat(300_000)
            ))]
        }),
        case("thousands of headers", Exhausted, "3 attempts", |_, _| {
            vec![text(&format!(
                "HTTP/1.1 200 OK\r\n{}\r\n",
                "X-H: 1\r\n".repeat(5000)
            ))]
        }),
        case("garbage status line", Exhausted, "3 attempts", |_, _| {
            vec![text("HELLO\r\n\r\n")]
        }),
        case("bad chunk size", Exhausted, "3 attempts", |_, _| {
            vec![text(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
            )]
        }),
    ]
}

/// Fetch the artifact from a server running `c`'s script; on failure, nothing is in place and
/// only a resumable partial download may stay in staging.
fn run_case(
    c: &Case,
    body: &[u8],
    max_extract: u64,
    keep_going: &dyn Fn() -> bool,
) -> (Result<fetch::Outcome, FetchError>, usize) {
    let script = c.script.clone();
    let b = body.to_vec();
    let server = Scripted::start(move |r| script(r, &b));
    let dir = tempfile::tempdir().unwrap();
    let req = Request {
        url: format!("{}/artifact.tgz?sig=SECRET", server.base),
        sha256: sha(body),
        size: Some(body.len() as u64),
        extract: true,
    };
    let sleep = |d: Duration| std::thread::sleep(d);
    let o = opts(&sleep, keep_going, max_extract);
    let r = fetch::fetch(
        &req,
        &dir.path().join("staging"),
        &dir.path().join("out"),
        &o,
    );
    if r.is_err() {
        assert!(
            !dir.path().join("out").exists(),
            "{}: nothing in place",
            c.name
        );
        let left: Vec<_> = std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            left.iter().all(|n| n.ends_with(".part")),
            "{}: only a resumable partial download may stay: {left:?}",
            c.name
        );
    }
    (r, server.requests())
}

#[test]
fn artifact_servers() {
    let body = artifact();
    let cases = artifact_cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    // In parallel: the slow cases each wait for the fetch's own bounds.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|c| {
                let body = &body;
                s.spawn(move || {
                    let (r, _) = run_case(c, body, 1 << 30, &|| true);
                    check(c, r)
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap().err())
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn check(c: &Case, r: Result<fetch::Outcome, FetchError>) -> Result<(), String> {
    match (c.want, r) {
        (Want::Ok, Ok(out)) if out.files == 1 => Ok(()),
        (Want::Ok, other) => Err(format!("{}: wanted success, got {other:?}", c.name)),
        (want, Ok(_)) => Err(format!("{}: wanted {want:?}, got success", c.name)),
        (want, Err(e)) => {
            let f = e.failure();
            let code = match want {
                Want::Checksum | Want::Size => Code::ChecksumMismatch,
                Want::Stopped => Code::Superseded,
                _ => Code::DownloadFailed,
            };
            if kind(&e) != Some(want) || f.code != code || !f.message.contains(c.says) {
                return Err(format!(
                    "{}: wanted {want:?} saying {:?}, got {e:?}",
                    c.name, c.says
                ));
            }
            if f.message.contains("SECRET") || f.message.contains('\n') {
                return Err(format!(
                    "{}: message shows the query or spans lines: {}",
                    c.name, f.message
                ));
            }
            Ok(())
        }
    }
}

#[test]
fn a_stop_request_ends_a_fetch_in_any_state() {
    // The stop callback is honoured while connecting, while a server is silent, and while
    // pausing between retries.
    let body = artifact();
    for (name, script) in [
        (
            "silent server",
            Arc::new(|_: &Req, _: &[u8]| vec![Act::Hold(Duration::from_secs(20))]) as Answer,
        ),
        (
            "trickling body",
            Arc::new(|_: &Req, b: &[u8]| {
                vec![
                    text(&format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                        b.len()
                    )),
                    Act::Drip(b.to_vec(), Duration::from_millis(20)),
                ]
            }),
        ),
        (
            "slowloris headers",
            Arc::new(|_: &Req, _: &[u8]| {
                vec![Act::Drip(
                    b"HTTP/1.1 200 OK\r\nX: ".repeat(50),
                    Duration::from_millis(20),
                )]
            }),
        ),
    ] {
        let c = Case {
            name,
            script,
            want: Want::Stopped,
            says: "superseded",
        };
        let start = Instant::now();
        let keep = move || start.elapsed() < Duration::from_millis(200);
        let (r, _) = run_case(&c, &body, 1 << 30, &keep);
        check(&c, r).unwrap();
    }
}

#[test]
fn a_verified_bomb_stops_at_the_size_bound() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(16 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "zeros", std::io::repeat(0).take(16 << 20))
        .unwrap();
    let bomb = gzip(&b.into_inner().unwrap());
    let c = case(
        "tar bomb with its own checksum",
        Want::TooLarge,
        "more than",
        |_, b| ok(b),
    );
    let (r, _) = run_case(&c, &bomb, 1 << 20, &|| true);
    check(&c, r).unwrap();
}

#[test]
fn the_verb_reports_hostile_servers_in_one_line() {
    for (script, says) in [
        (
            Arc::new(|_: &Req, _: &[u8]| redirect("file:///etc/shadow")) as Answer,
            "redirect",
        ),
        (Arc::new(|_: &Req, _: &[u8]| status(404)), "HTTP 404"),
    ] {
        let server = Scripted::start(move |r| script(r, b""));
        let dir = tempfile::tempdir().unwrap();
        let into = dir.path().join("out");
        let out = std::process::Command::new(crate::common::bin())
            .args([
                "fetch",
                &format!("{}/x.tgz?sig=SECRET", server.base),
                "--sha256",
                &"a".repeat(64),
                "--into",
            ])
            .arg(&into)
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env("IBDRIVER_ROOT", dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(14), "{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("ibdriver:"))
            .unwrap_or_default();
        assert!(
            line.contains(says) && !err.contains("SECRET") && !err.contains("panicked"),
            "{err}"
        );
        assert!(!into.exists());
    }
}

/// IMDS with tight bounds: three attempts, all within 1.5 s.
fn imds_policy() -> imds::Policy {
    imds::Policy {
        attempt_timeout: Duration::from_millis(400),
        pauses: vec![Duration::from_millis(10), Duration::from_millis(10)],
        deadline: Duration::from_millis(1500),
    }
}

fn json_ok(body: &str) -> Vec<Act> {
    vec![
        text(&format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )),
        text(body),
    ]
}

#[test]
fn metadata_services() {
    const GOOD: &str = r#"{"vmSize":"Standard_HB120rs_v3"}"#;
    let slow = Duration::from_millis(100);
    type S = Arc<dyn Fn(&Req) -> Vec<Act> + Send + Sync>;
    let cases: Vec<(&str, S, Result<&str, &str>)> = vec![
        (
            "answers",
            Arc::new(|_| json_ok(GOOD)),
            Ok("Standard_HB120rs_v3"),
        ),
        (
            "answers on the third try",
            Arc::new(|r| if r.n < 2 { status(503) } else { json_ok(GOOD) }),
            Ok("Standard_HB120rs_v3"),
        ),
        ("500 storm", Arc::new(|_| status(500)), Err("HTTP 500")),
        ("400 at once", Arc::new(|_| status(400)), Err("HTTP 400")),
        ("404", Arc::new(|_| status(404)), Err("HTTP 404")),
        ("resets", Arc::new(|_| vec![]), Err("unreachable")),
        (
            "trickled body",
            Arc::new(move |_| {
                vec![
                    text("HTTP/1.1 200 OK\r\nContent-Length: 34\r\n\r\n"),
                    Act::Drip(GOOD.as_bytes().to_vec(), slow),
                ]
            }),
            Err(""),
        ),
        (
            "slowloris headers",
            Arc::new(move |_| vec![Act::Drip(b"HTTP/1.1 200 OK\r\nX: ".repeat(20), slow)]),
            Err(""),
        ),
        (
            "never answers",
            Arc::new(|_| vec![Act::Hold(Duration::from_secs(20))]),
            Err(""),
        ),
        (
            "huge body",
            Arc::new(|_| {
                vec![
                    text("HTTP/1.0 200 OK\r\n\r\n"),
                    Act::Send(vec![b' '; 12 << 20]),
                ]
            }),
            Err(""),
        ),
        (
            "redirect to file://",
            Arc::new(|_| redirect("file:///etc/passwd")),
            Err("HTTP 302"),
        ),
        (
            "redirect to http://",
            Arc::new(|_| redirect("http://")),
            Err("HTTP 302"),
        ),
        (
            "not JSON",
            Arc::new(|_| json_ok("<html>")),
            Err("unexpected JSON"),
        ),
        (
            "huge header",
            Arc::new(|_| {
                vec![text(&format!(
                    "HTTP/1.1 200 OK\r\nX: {}\r\n\r\n",
                    "a".repeat(300_000)
                ))]
            }),
            Err(""),
        ),
    ];
    let failures: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = cases
            .into_iter()
            .map(|(name, script, want)| {
                s.spawn(move || {
                    let server = Scripted::start(move |r| script(r));
                    let got = imds::fetch_compute(&server.base, &imds_policy());
                    match (want, &got) {
                        (Ok(size), Ok(c)) if c.vm_size == size => None,
                        (Err(says), Err(e)) if e.contains(says) => None,
                        _ => Some(format!("{name}: wanted {want:?}, got {got:?}")),
                    }
                })
            })
            .collect();
        hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
