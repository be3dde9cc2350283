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

pub fn agent(proxy: Option<&str>) -> Result<ureq::Agent, String> {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .redirects(5)
        .user_agent(concat!("ibdriver/", env!("IBDRIVER_VERSION")));
    if let Some(p) = proxy {
        // The proxy URL may carry credentials: never echo it.
        let proxy = ureq::Proxy::new(p)
            .map_err(|_| "the proxy setting is not a usable proxy URL".to_string())?;
        b = b.proxy(proxy);
    }
    Ok(b.build())
}

/// Request `url` from `offset` and pass each body chunk, with the total size when known, to
/// `sink` (which returns false to stop).
/// `total` is filled in from the response headers when the server says.
pub fn request(
    agent: &ureq::Agent,
    url: &str,
    offset: u64,
    total: &mut Option<u64>,
    chunk: usize,
    mut sink: impl FnMut(&[u8], Option<u64>) -> bool,
) -> Step {
    let mut req = agent.get(url);
    if offset > 0 {
        req = req.set("Range", &format!("bytes={offset}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // Asked for bytes past the end: complete when the server's length is exactly what we
        // have (a run killed after the last byte), else our partial file is not its file.
        Err(ureq::Error::Status(416, resp)) => {
            let len = resp.header("Content-Range").and_then(|v| {
                v.trim()
                    .strip_prefix("bytes */")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            });
            return match len {
                Some(n) if n == offset => {
                    *total = Some(n);
                    Step::Complete
                }
                _ if total.is_some_and(|t| t == offset) => Step::Complete,
                _ => Step::RangeIgnored,
            };
        }
        Err(ureq::Error::Status(code, _)) if transient_status(code) => {
            return Step::Transient(format!("HTTP {code}"))
        }
        Err(ureq::Error::Status(code, _)) => return Step::Permanent(format!("HTTP {code}")),
        // Mistakes in the URL or the proxy settings will not cure themselves.
        Err(ureq::Error::Transport(t)) => {
            let kind = t.kind();
            let detail = format!("{kind}");
            return match kind {
                ureq::ErrorKind::InvalidUrl
                | ureq::ErrorKind::UnknownScheme
                | ureq::ErrorKind::InsecureRequestHttpsOnly
                | ureq::ErrorKind::TooManyRedirects
                | ureq::ErrorKind::InvalidProxyUrl
                | ureq::ErrorKind::ProxyUnauthorized => Step::Permanent(detail),
                _ => Step::Transient(detail),
            };
        }
    };
    match resp.status() {
        206 => match resp.header("Content-Range").and_then(parse_content_range) {
            Some((start, t)) if start == offset => {
                if t.is_some() {
                    *total = t;
                }
            }
            _ => return Step::RangeIgnored,
        },
        200 if offset > 0 => return Step::RangeIgnored,
        200 => {
            if let Some(len) = resp
                .header("Content-Length")
                .and_then(|v| v.trim().parse().ok())
            {
                *total = Some(len);
            }
        }
        other => return Step::Permanent(format!("unexpected HTTP {other}")),
    }
    let mut body = resp.into_reader();
    let mut buf = vec![0u8; chunk];
    loop {
        match body.read(&mut buf) {
            Ok(0) => return Step::Complete,
            Ok(n) => {
                if !sink(&buf[..n], *total) {
                    return Step::Permanent("stopped".into());
                }
            }
            Err(e) => return Step::Transient(format!("connection lost: {}", e.kind())),
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
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
