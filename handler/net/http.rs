//! One HTTP(S) download with retries and resume: capped exponential backoff for transient
//! failures (connect errors, resets, 408/429/5xx), none for permanent ones (403/404 and other
//! 4xx), and `Range` requests that continue from the last byte received.

use std::io::Read;
use std::time::Duration;

/// Retry schedule: `attempts` tries in all; before retry n (1-based) wait `base * 2^(n-1)`,
/// never more than `cap`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Whether an HTTP status is worth retrying.
pub fn transient_status(code: u16) -> bool {
    code == 408 || code == 429 || (500..600).contains(&code)
}

/// What one request produced before it ended.
pub enum Step {
    /// The body ended (the whole remaining range was received).
    Complete,
    /// Nothing left to receive: the server's length is exactly the bytes already here.
    CompleteAt(u64),
    /// A transient failure after `received` bytes of this response; retry from the new offset.
    Transient(String),
    /// A failure that retrying will not cure.
    Permanent(String),
    /// The server answered a range request with the whole body: resume is impossible.
    RangeIgnored,
}

/// `Content-Range: bytes START-END/TOTAL` -> (START, TOTAL if known).
pub fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = rest.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// Redirects followed for one request; more is a loop or a misconfigured mirror.
pub const MAX_REDIRECTS: u32 = 10;

/// A configured HTTP client: the ureq agent (redirects off: we follow them ourselves, so a
/// hostile `Location` is checked before it is used) and the proxy credentials, which a
/// plain-`http://` request through the proxy must carry itself (ureq sends them only in
/// `CONNECT`).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    proxy_auth: Option<String>,
}

/// `Basic base64(user:pass)` from a proxy URL's user info, as ureq sends it for `CONNECT`.
pub fn proxy_authorization(proxy: &str) -> Option<String> {
    use base64::Engine;
    let rest = proxy.split_once("://").map(|(_, r)| r).unwrap_or(proxy);
    let authority = rest.split('/').next().unwrap_or("");
    let (creds, _) = authority.rsplit_once('@')?;
    creds.contains(':').then(|| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
    })
}

pub fn client(proxy: Option<&str>) -> Result<Client, String> {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .redirects(0)
        .user_agent(concat!("ibdriver/", env!("IBDRIVER_VERSION")));
    if let Some(p) = proxy {
        // The proxy URL may carry credentials: never echo it.
        let proxy = ureq::Proxy::new(p)
            .map_err(|_| "the proxy setting is not a usable proxy URL".to_string())?;
        b = b.proxy(proxy);
    }
    Ok(Client {
        agent: b.build(),
        proxy_auth: proxy.and_then(proxy_authorization),
    })
}

/// The URL a `Location` header names, relative to `base`; `None` unless it is http(s) with a
/// host (a `file://`, host-less or otherwise odd target is refused, never handed to ureq).
pub fn redirect_target(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.is_empty() || location.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    let (scheme, rest) = base.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let url = if let Some((s, _)) = location.split_once("://") {
        if s.contains(['/', '?', '#']) {
            join_path(scheme, authority, rest, location)
        } else {
            location.to_string()
        }
    } else if let Some(net) = location.strip_prefix("//") {
        format!("{scheme}://{net}")
    } else {
        join_path(scheme, authority, rest, location)
    };
    let (s, r) = url.split_once("://")?;
    if !matches!(s.to_ascii_lowercase().as_str(), "http" | "https") {
        return None;
    }
    let host = crate::net::proxy::url_host(&url);
    let auth = r.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || auth.ends_with(':') || auth.starts_with('@') {
        return None;
    }
    Some(url)
}

fn join_path(scheme: &str, authority: &str, rest: &str, location: &str) -> String {
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = &rest[authority.len()..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    format!("{scheme}://{authority}{dir}/{location}")
}

/// What the download thread reports, in order: `Start` once the response is accepted, then
/// body chunks, then `End`.
pub enum Event {
    Start { total: Option<u64> },
    Chunk(Vec<u8>),
    End(Step),
}

/// Request `url` from `offset` on a thread of its own, reporting to `tx`. The caller polls the
/// channel, so a stalled or trickling server never blocks it past its own checks; the thread
/// itself ends by `deadline` at the latest, or at its next send once the caller has gone.
pub fn spawn(
    client: &Client,
    url: &str,
    offset: u64,
    known_total: Option<u64>,
    deadline: Duration,
    chunk: usize,
    tx: std::sync::mpsc::SyncSender<Event>,
) {
    let client = client.clone();
    let url = url.to_string();
    std::thread::spawn(move || {
        let step = request(&client, &url, offset, known_total, deadline, chunk, &tx);
        let _ = tx.send(Event::End(step));
    });
}

fn request(
    client: &Client,
    url: &str,
    offset: u64,
    known_total: Option<u64>,
    deadline: Duration,
    chunk: usize,
    tx: &std::sync::mpsc::SyncSender<Event>,
) -> Step {
    let resp = match follow(client, url, offset, known_total, deadline) {
        Ok(r) => r,
        Err(step) => return step,
    };
    let total = match body_total(&resp, offset, known_total) {
        Ok(t) => t,
        Err(step) => return step,
    };
    if tx.send(Event::Start { total }).is_err() {
        return Step::Permanent("stopped".into());
    }
    stream(resp.into_reader(), chunk, tx)
}

/// GET `url` from `offset`, following at most [`MAX_REDIRECTS`] redirects: the first response
/// that is not a redirect, or the step that ends this attempt.
fn follow(
    client: &Client,
    url: &str,
    offset: u64,
    known_total: Option<u64>,
    deadline: Duration,
) -> Result<ureq::Response, Step> {
    let mut url = url.to_string();
    let mut hops = 0;
    loop {
        let mut req = client.agent.get(&url).timeout(deadline);
        if offset > 0 {
            req = req.set("Range", &format!("bytes={offset}-"));
        }
        // Only a plain-http request goes to the proxy in the clear; an https one is tunnelled
        // and its headers reach the origin, which must never see the proxy's credentials.
        if let Some(auth) = &client.proxy_auth {
            if url.to_ascii_lowercase().starts_with("http://") {
                req = req.set("Proxy-Authorization", auth);
            }
        }
        let resp = req.call().map_err(|e| failed(e, offset, known_total))?;
        if !matches!(resp.status(), 301 | 302 | 303 | 307 | 308) {
            return Ok(resp);
        }
        hops += 1;
        if hops > MAX_REDIRECTS {
            return Err(Step::Permanent(format!(
                "more than {MAX_REDIRECTS} redirects"
            )));
        }
        url = resp
            .header("Location")
            .and_then(|l| redirect_target(&url, l))
            .ok_or_else(|| {
                Step::Permanent(format!(
                    "HTTP {} redirect to a missing or unusable location (only http and https URLs with a host are followed)",
                    resp.status()
                ))
            })?;
    }
}

/// The artifact's total size as the response head gives it, or the step that ends this
/// attempt: a resumed request must come back as the range asked for.
fn body_total(
    resp: &ureq::Response,
    offset: u64,
    known_total: Option<u64>,
) -> Result<Option<u64>, Step> {
    match resp.status() {
        206 => match resp.header("Content-Range").and_then(parse_content_range) {
            Some((start, t)) if start == offset => Ok(t.or(known_total)),
            _ => Err(Step::RangeIgnored),
        },
        200 if offset > 0 => Err(Step::RangeIgnored),
        200 => Ok(resp
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok())
            .or(known_total)),
        other => Err(Step::Permanent(format!("unexpected HTTP {other}"))),
    }
}

/// The body, `chunk` bytes at a time, to the download thread.
fn stream(mut body: impl Read, chunk: usize, tx: &std::sync::mpsc::SyncSender<Event>) -> Step {
    loop {
        let mut buf = vec![0u8; chunk];
        match body.read(&mut buf) {
            Ok(0) => return Step::Complete,
            Ok(n) => {
                buf.truncate(n);
                if tx.send(Event::Chunk(buf)).is_err() {
                    return Step::Permanent("stopped".into());
                }
            }
            Err(e) => return Step::Transient(format!("connection lost: {}", e.kind())),
        }
    }
}

/// A request that got no usable response.
fn failed(e: ureq::Error, offset: u64, known_total: Option<u64>) -> Step {
    match e {
        // Asked for bytes past the end: complete when the server's length is exactly what we
        // have (a run killed after the last byte), else our partial file is not its file.
        ureq::Error::Status(416, resp) => {
            let len = resp.header("Content-Range").and_then(|v| {
                v.trim()
                    .strip_prefix("bytes */")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            });
            match len {
                Some(n) if n == offset => Step::CompleteAt(n),
                _ if known_total.is_some_and(|t| t == offset) => Step::Complete,
                _ => Step::RangeIgnored,
            }
        }
        ureq::Error::Status(407, _) => Step::Permanent(
            "HTTP 407: the proxy wants credentials it was not given or refused them".into(),
        ),
        ureq::Error::Status(code, _) if transient_status(code) => {
            Step::Transient(format!("HTTP {code}"))
        }
        ureq::Error::Status(code, _) => Step::Permanent(format!("HTTP {code}")),
        // Mistakes in the URL or the proxy settings will not cure themselves. Only the kind is
        // shown: ureq's own message names the URL, query string included.
        ureq::Error::Transport(t) => {
            let kind = t.kind();
            let detail = format!("{kind}");
            match kind {
                ureq::ErrorKind::InvalidUrl
                | ureq::ErrorKind::UnknownScheme
                | ureq::ErrorKind::InsecureRequestHttpsOnly
                | ureq::ErrorKind::TooManyRedirects
                | ureq::ErrorKind::InvalidProxyUrl
                | ureq::ErrorKind::ProxyUnauthorized => Step::Permanent(detail),
                _ => Step::Transient(detail),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_exponential_and_capped() {
        let p = RetryPolicy {
            attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        let d: Vec<u128> = (1..=6).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(64), Duration::from_millis(1000));
    }

    #[test]
    fn statuses() {
        for c in [408, 429, 500, 502, 503, 504] {
            assert!(transient_status(c), "{c}");
        }
        for c in [400, 401, 403, 404, 410] {
            assert!(!transient_status(c), "{c}");
        }
    }

    #[test]
    fn redirect_targets() {
        let base = "https://h.example/a/b.tgz?sig=1";
        for (loc, want) in [
            ("https://m.example/x.tgz", Some("https://m.example/x.tgz")),
            ("/c/d.tgz", Some("https://h.example/c/d.tgz")),
            ("d.tgz", Some("https://h.example/a/d.tgz")),
            ("//cdn.example/y", Some("https://cdn.example/y")),
            ("http://", None),
            ("https:///nohost", None),
            ("file:///etc/passwd", None),
            ("ftp://h.example/x", None),
            ("", None),
            ("http://h:", None),
            ("http://@/x", None),
            ("http://a b/x", None),
        ] {
            assert_eq!(redirect_target(base, loc).as_deref(), want, "{loc}");
        }
    }

    #[test]
    fn proxy_credentials_become_basic_auth() {
        assert_eq!(
            proxy_authorization("http://user:pa ss@127.0.0.1:3128").as_deref(),
            Some("Basic dXNlcjpwYSBzcw==")
        );
        assert_eq!(proxy_authorization("http://127.0.0.1:3128"), None);
    }

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
