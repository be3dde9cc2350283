//! A loopback artifact server with scripted faults: resets mid-body, error statuses, ignored
//! Range requests, trickles, stalls and redirects. It counts the body bytes it sends. Bounded: it stops when dropped or after
//! five minutes.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum Fault {
    /// Send this many body bytes of the response, then drop the connection.
    ResetAfter(usize),
    /// Answer with this status and no body.
    Status(u16),
    /// Answer a Range request with the whole body (200).
    IgnoreRange,
    /// Send the body `bytes` at a time with `every` between sends.
    Trickle { bytes: usize, every: Duration },
    /// Send this many body bytes, then hold the connection open without sending (until the
    /// client goes or the server stops, at most 30 s).
    StallAfter(usize),
    /// Answer 302 with this `Location`.
    Redirect(String),
    /// Send no Content-Length, this many body bytes, then close cleanly: a body that ends
    /// early with nothing to say it did.
    CloseAfterWithoutLength(usize),
    /// Answer a Range request with 206 but the whole body from byte 0 (and a Content-Range
    /// that says so): not the range asked for.
    ShiftedRange,
}

pub struct Server {
    pub base: String,
    pub sent: Arc<AtomicU64>,
    pub requests: Arc<Mutex<Vec<String>>>,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Serve `body` at every path.
    pub fn start(body: Vec<u8>) -> Server {
        Self::start_paced(body, Duration::ZERO)
    }

    /// Serve `body`, pausing `pause` after every 64 KiB (a slow link, to land faults mid-body).
    pub fn start_paced(body: Vec<u8>, pause: Duration) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let body = Arc::new(body);
        let sent = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let faults: Arc<Mutex<VecDeque<Fault>>> = Arc::new(Mutex::new(VecDeque::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, r, f, st) = (sent.clone(), requests.clone(), faults.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                r.lock().unwrap().push(text.clone());
                let range_start = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("range: bytes=")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.trim_end_matches('-').parse::<usize>().ok());
                let fault = f.lock().unwrap().pop_front();
                let total = body.len();
                let (status, start) = match (&fault, range_start) {
                    (Some(Fault::Status(code)), _) => {
                        let _ = write!(conn, "HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        continue;
                    }
                    (Some(Fault::Redirect(to)), _) => {
                        let _ = write!(conn, "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        continue;
                    }
                    (Some(Fault::IgnoreRange), _) | (_, None) => (200, 0),
                    (Some(Fault::ShiftedRange), Some(_)) => (206, 0),
                    (_, Some(st)) if st >= total => {
                        let _ = write!(conn, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        continue;
                    }
                    (_, Some(st)) => (206, st),
                };
                let length = if matches!(fault, Some(Fault::CloseAfterWithoutLength(_))) {
                    String::new()
                } else {
                    format!("Content-Length: {}\r\n", total - start)
                };
                let mut hdr = format!(
                    "HTTP/1.1 {status} OK\r\n{length}Accept-Ranges: bytes\r\nConnection: close\r\n"
                );
                if status == 206 {
                    hdr.push_str(&format!(
                        "Content-Range: bytes {start}-{}/{total}\r\n",
                        total - 1
                    ));
                }
                hdr.push_str("\r\n");
                if conn.write_all(hdr.as_bytes()).is_err() {
                    continue;
                }
                let limit = match fault {
                    Some(Fault::ResetAfter(n))
                    | Some(Fault::StallAfter(n))
                    | Some(Fault::CloseAfterWithoutLength(n)) => n.min(total - start),
                    _ => total - start,
                };
                let (piece, gap) = match fault {
                    Some(Fault::Trickle { bytes, every }) => (bytes.max(1), every),
                    _ => (64 * 1024, pause),
                };
                for chunk in body[start..start + limit].chunks(piece) {
                    if conn.write_all(chunk).is_err() || st.load(Ordering::Relaxed) {
                        break;
                    }
                    s.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if !gap.is_zero() {
                        std::thread::sleep(gap);
                    }
                }
                if let Some(Fault::StallAfter(_)) = fault {
                    // Hold until the client hangs up (a read returns) or the server stops.
                    let end = Instant::now() + Duration::from_secs(30);
                    conn.set_read_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                    let mut b = [0u8; 1];
                    while Instant::now() < end && !st.load(Ordering::Relaxed) {
                        match conn.read(&mut b) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                    continue;
                }
                if limit < total - start
                    && !matches!(fault, Some(Fault::CloseAfterWithoutLength(_)))
                {
                    // An abrupt close: the client sees a truncated body.
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                }
            }
        });
        Server {
            base,
            sent,
            requests,
            faults,
            stop,
        }
    }

    pub fn fault(&self, f: Fault) {
        self.faults.lock().unwrap().push_back(f);
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
