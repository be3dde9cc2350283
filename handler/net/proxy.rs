//! Which proxy a download uses: the protected setting first, then `https_proxy`/`http_proxy`
//! from the environment (honouring `no_proxy`), then `HttpProxy.Host/Port` from
//! `/etc/waagent.conf`. IMDS never goes through here: it is always reached directly.

use std::collections::BTreeMap;

/// `HttpProxy.Host` and `HttpProxy.Port` from waagent.conf text.
pub fn waagent_proxy(conf: &str) -> Option<String> {
    let mut host = None;
    let mut port = None;
    for line in conf.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim() {
            "HttpProxy.Host" if !v.is_empty() && v != "None" => host = Some(v.to_string()),
            "HttpProxy.Port" if !v.is_empty() && v != "None" => port = v.parse::<u16>().ok(),
            _ => {}
        }
    }
    let host = host?;
    Some(match port {
        Some(p) => format!("http://{host}:{p}"),
        None => format!("http://{host}"),
    })
}

/// The host part of a URL, lower-cased, without port or user info.
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = if let Some(stripped) = host_port.strip_prefix('[') {
        stripped.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.to_ascii_lowercase()
}

/// `no_proxy`: comma-separated hosts or domain suffixes (`.example.com` or `example.com`), `*`.
pub fn bypassed(host: &str, no_proxy: &str) -> bool {
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            let entry = entry.to_ascii_lowercase();
            let entry = entry.split(':').next().unwrap_or("");
            entry == "*"
                || host == entry.trim_start_matches('.')
                || host.ends_with(&format!(".{}", entry.trim_start_matches('.')))
        })
}

/// Pick the proxy for `url`. `env` holds the proxy variables (`sys::runtime`; a map so tests
/// pass one).
pub fn choose(
    url: &str,
    setting: Option<&str>,
    env: &BTreeMap<String, String>,
    waagent_conf: Option<&str>,
) -> Option<String> {
    if let Some(p) = setting {
        return Some(p.to_string());
    }
    let get = |k: &str| {
        env.get(k)
            .or_else(|| env.get(&k.to_ascii_uppercase()))
            .filter(|v| !v.is_empty())
    };
    let host = url_host(url);
    if let Some(np) = get("no_proxy") {
        if bypassed(&host, np) {
            return None;
        }
    }
    let https = url.to_ascii_lowercase().starts_with("https://");
    let from_env = if https {
        get("https_proxy")
    } else {
        get("http_proxy")
    };
    if let Some(p) = from_env {
        return Some(p.clone());
    }
    waagent_conf.and_then(waagent_proxy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn waagent_conf_forms() {
        assert_eq!(
            waagent_proxy("HttpProxy.Host=10.0.0.1\nHttpProxy.Port=3128\n").as_deref(),
            Some("http://10.0.0.1:3128")
        );
        assert_eq!(
            waagent_proxy("HttpProxy.Host=None\nHttpProxy.Port=None\n"),
            None
        );
        assert_eq!(waagent_proxy("# HttpProxy.Host=x\n"), None);
    }

    #[test]
    fn hosts() {
        assert_eq!(
            url_host("https://u:p@Content.Mellanox.com:443/ofed/x.tgz?sig=1"),
            "content.mellanox.com"
        );
        assert_eq!(url_host("http://[::1]:8080/a"), "::1");
    }

    #[test]
    fn precedence_and_no_proxy() {
        let e = env(&[
            ("https_proxy", "http://envproxy:1"),
            ("no_proxy", ".internal,localhost"),
        ]);
        assert_eq!(
            choose("https://a.b/x", Some("http://set:2"), &e, None).as_deref(),
            Some("http://set:2")
        );
        assert_eq!(
            choose("https://a.b/x", None, &e, None).as_deref(),
            Some("http://envproxy:1")
        );
        assert_eq!(choose("https://m.internal/x", None, &e, None), None);
        assert_eq!(
            choose("http://localhost/x", None, &e, Some("HttpProxy.Host=w\n")),
            None
        );
        assert_eq!(
            choose(
                "http://a.b/x",
                None,
                &e,
                Some("HttpProxy.Host=w\nHttpProxy.Port=8\n")
            )
            .as_deref(),
            Some("http://w:8")
        );
        let upper = env(&[("HTTPS_PROXY", "http://up:3")]);
        assert_eq!(
            choose("https://a.b/x", None, &upper, None).as_deref(),
            Some("http://up:3")
        );
    }
}
