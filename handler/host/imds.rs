//! Azure Instance Metadata Service: `compute.vmSize` and Secure Boot. Reached without a proxy,
//! with header `Metadata: true`, short timeouts and a few retries; unreachable IMDS is not fatal.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

pub const DEFAULT_URL: &str = "http://169.254.169.254";
const API_VERSION: &str = "2021-02-01";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compute {
    #[serde(default)]
    pub vm_size: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub offer: String,
    #[serde(default)]
    pub publisher: String,
    #[serde(default)]
    pub sku: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_profile: Option<SecurityProfile>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityProfile {
    /// IMDS sends `"true"`/`"false"` as strings.
    #[serde(default)]
    pub secure_boot_enabled: Option<serde_json::Value>,
    #[serde(default)]
    pub security_type: Option<String>,
}

impl Compute {
    pub fn secure_boot(&self) -> Option<bool> {
        let v = self
            .security_profile
            .as_ref()?
            .secure_boot_enabled
            .as_ref()?;
        match v {
            serde_json::Value::Bool(b) => Some(*b),
            serde_json::Value::String(s) => s.trim().parse::<bool>().ok(),
            _ => None,
        }
    }
}

/// The retry schedule: attempts and the pause before each retry.
#[derive(Debug, Clone)]
pub struct Policy {
    pub attempt_timeout: Duration,
    pub pauses: Vec<Duration>,
    pub deadline: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempt_timeout: Duration::from_millis(1500),
            pauses: vec![Duration::from_millis(200), Duration::from_millis(600)],
            deadline: Duration::from_secs(5),
        }
    }
}

pub fn base_url() -> String {
    std::env::var("IBDRIVER_IMDS_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

pub fn parse_compute(body: &str) -> Result<Compute, String> {
    serde_json::from_str(body).map_err(|e| format!("IMDS answered with unexpected JSON: {e}"))
}

/// GET compute metadata; the error string is for the log and the health report.
pub fn fetch_compute(base: &str, policy: &Policy) -> Result<Compute, String> {
    fetch_compute_body(base, policy).and_then(|body| parse_compute(&body))
}

/// The compute metadata document as IMDS sent it (for `diagnose`, which keeps all of it).
pub fn fetch_compute_body(base: &str, policy: &Policy) -> Result<String, String> {
    let url = format!(
        "{}/metadata/instance/compute?api-version={API_VERSION}&format=json",
        base.trim_end_matches('/')
    );
    // ureq only uses a proxy when told to: IMDS must never go through one. No redirects:
    // the metadata service never sends one, and ureq 2 can panic following a host-less one.
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(policy.attempt_timeout)
        .redirects(0)
        .build();
    let start = Instant::now();
    let mut last = String::new();
    for attempt in 0..=policy.pauses.len() {
        if attempt > 0 {
            let pause = policy.pauses[attempt - 1];
            if start.elapsed() + pause >= policy.deadline {
                break;
            }
            std::thread::sleep(pause);
        }
        // Each attempt, body included, ends by the overall deadline: a trickling or stalled
        // answer cannot hold enable past it.
        let left = policy.deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        let call = agent
            .get(&url)
            .timeout(policy.attempt_timeout.min(left))
            .set("Metadata", "true")
            .call();
        match call {
            Ok(resp) if resp.status() == 200 => match resp.into_string() {
                Ok(body) => return Ok(body),
                Err(e) => last = format!("reading IMDS answer: {}", e.kind()),
            },
            Ok(resp) => return Err(format!("IMDS answered HTTP {}", resp.status())),
            // 4xx other than 404/410/429 will not improve on retry.
            Err(ureq::Error::Status(code, _))
                if (400..500).contains(&code) && ![404, 410, 429].contains(&code) =>
            {
                return Err(format!("IMDS answered HTTP {code}"));
            }
            Err(ureq::Error::Status(code, _)) => last = format!("IMDS answered HTTP {code}"),
            Err(ureq::Error::Transport(t)) => last = format!("IMDS unreachable: {}", t.kind()),
        }
        tracing::debug!(attempt, error = %last, "IMDS attempt failed");
    }
    if last.is_empty() {
        last = "IMDS did not answer within the deadline".into();
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compute() {
        let c = parse_compute(
            r#"{"vmSize":"Standard_HB120rs_v3","location":"eastus","offer":"ubuntu-hpc","publisher":"microsoft-dsvm",
               "sku":"2204","version":"latest","securityProfile":{"secureBootEnabled":"true","virtualTpmEnabled":"true",
               "securityType":"TrustedLaunch"},"osType":"Linux"}"#,
        )
        .unwrap();
        assert_eq!(c.vm_size, "Standard_HB120rs_v3");
        assert_eq!(c.secure_boot(), Some(true));
        let c = parse_compute(r#"{"vmSize":"x","securityProfile":{"secureBootEnabled":"false"}}"#)
            .unwrap();
        assert_eq!(c.secure_boot(), Some(false));
        assert_eq!(parse_compute("{}").unwrap().secure_boot(), None);
        assert!(parse_compute("nope").is_err());
    }

    #[test]
    fn unreachable_imds_fails_within_deadline() {
        // A bound then closed port on loopback: connection refused immediately.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let policy = Policy {
            attempt_timeout: Duration::from_millis(200),
            pauses: vec![Duration::from_millis(10), Duration::from_millis(20)],
            deadline: Duration::from_secs(2),
        };
        let e = fetch_compute(&format!("http://127.0.0.1:{port}"), &policy).unwrap_err();
        assert!(e.contains("unreachable"), "{e}");
    }
}
