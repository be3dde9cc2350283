//! IPv4 addresses per interface, as `ip -j -4 addr show` reports them.

use crate::sys::proc;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Deserialize)]
struct IpAddrInfo {
    family: Option<String>,
    local: Option<String>,
    prefixlen: Option<u32>,
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

/// Parse `ip -j -4 addr show`.
pub fn parse_ip_json(text: &str) -> BTreeMap<String, Vec<String>> {
    let links: Vec<IpLink> = serde_json::from_str(text).unwrap_or_default();
    links
        .into_iter()
        .map(|l| {
            let addrs = l
                .addr_info
                .into_iter()
                .filter(|a| a.family.as_deref().is_none_or(|f| f == "inet"))
                .filter_map(|a| Some(format!("{}/{}", a.local?, a.prefixlen.unwrap_or(32))))
                .collect();
            (l.ifname, addrs)
        })
        .collect()
}

/// IPv4 addresses per interface; empty when `ip` is unavailable (reported, not fatal).
pub fn addresses() -> BTreeMap<String, Vec<String>> {
    addresses_within(Duration::from_secs(10))
}

/// [`addresses`] with `ip` bounded by `timeout`.
pub fn addresses_within(timeout: Duration) -> BTreeMap<String, Vec<String>> {
    match proc::run("ip", &["-j", "-4", "addr", "show"], None, timeout) {
        Ok(out) if out.success() => parse_ip_json(&String::from_utf8_lossy(&out.stdout)),
        Ok(out) => {
            tracing::warn!(code = ?out.code, "ip addr failed: {}", out.stderr_tail(200));
            BTreeMap::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list IP addresses");
            BTreeMap::new()
        }
    }
}

/// IPv4 addresses on one interface (`ip -j -4 addr show dev X`).
pub fn addresses_of(netdev: &str) -> Vec<String> {
    match proc::run(
        "ip",
        &["-j", "-4", "addr", "show", "dev", netdev],
        None,
        Duration::from_secs(10),
    ) {
        Ok(o) if o.success() => parse_ip_json(&String::from_utf8_lossy(&o.stdout))
            .remove(netdev)
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_json() {
        let m = parse_ip_json(
            r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
                {"ifindex":3,"ifname":"ib0","addr_info":[{"family":"inet","local":"172.16.1.4","prefixlen":16}]}]"#,
        );
        assert_eq!(m["ib0"], vec!["172.16.1.4/16".to_string()]);
        assert!(parse_ip_json("garbage").is_empty());
    }
}
