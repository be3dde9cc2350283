//! The one redaction pass every text member of the support bundle goes through.
//!
//! Three layers, applied in this order:
//! 1. exact values: the decrypted protected settings, the proxy and package URLs from the
//!    environment and the proxy credentials of `waagent.conf`, each with its URL parts
//!    (user info, password, query string, signature), replaced wherever they occur;
//! 2. URL structure: user info (`http://<redacted>@host`) and query strings (`?<redacted>`, which
//!    covers SAS tokens) of every `scheme://` URL;
//! 3. key/value structure: the value after `sig=`, `password=`, `"token": "..."`,
//!    `"protectedSettings": "..."` and similar keys, and the user info in `HttpProxy.Host=`.
//!
//! Layers 2 and 3 need no knowledge of the secrets, so a secret we could not learn (protected
//! settings that would not decrypt) is still caught when it has the usual shape.

pub const PLACEHOLDER: &str = "<redacted>";
/// Exact values shorter than this are left to the structural layers: scrubbing every `ab`
/// would destroy the text without protecting much.
const MIN_SECRET_LEN: usize = 4;

/// Query parameters and keys whose values are secrets.
const SECRET_KEYS: [&str; 12] = [
    "sig",
    "signature",
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "access_token",
    "protectedsettings",
    "customdata",
    "userdata",
    "keydata",
];

/// Keys whose value is `[user[:password]@]host`: only the user info goes.
const USERINFO_KEYS: [&str; 1] = ["httpproxy.host"];

#[derive(Debug, Default, Clone)]
pub struct Redactor {
    /// Longest first, so a whole URL goes before its parts.
    values: Vec<String>,
}

impl Redactor {
    /// Learn a secret value. A URL with credentials or a query string is learned by those
    /// parts (user info, password, query, secret parameters), so its scheme, host and path stay
    /// readable as [`crate::net::url::redact_url`] shows them; any other value is learned whole.
    pub fn add(&mut self, value: &str) {
        let value = value.trim();
        let mut found = Vec::new();
        let is_url = value.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric())
        }) && !value.chars().any(char::is_whitespace);
        if is_url {
            let rest = value.split_once("://").map_or("", |(_, r)| r);
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                found.push(userinfo.to_string());
                if let Some((_, password)) = userinfo.split_once(':') {
                    found.push(password.to_string());
                }
            }
            if let Some((_, query)) = rest.split_once('?') {
                let query = query.split('#').next().unwrap_or("");
                found.push(query.to_string());
                for pair in query.split('&') {
                    if let Some((k, v)) = pair.split_once('=') {
                        if SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()) {
                            found.push(v.to_string());
                        }
                    }
                }
            }
        } else if let Some((userinfo, _)) = value
            .rsplit_once('@')
            .filter(|_| !value.chars().any(char::is_whitespace))
        {
            // `user:password@host`, as waagent.conf writes a proxy host.
            found.push(userinfo.to_string());
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password.to_string());
            }
        }
        if found.is_empty() {
            found.push(value.to_string());
        }
        for v in found {
            // The forms a JSON writer may have produced from the same value.
            let escaped = serde_json::to_string(&v).unwrap_or_default();
            let escaped = escaped.trim_matches('"').to_string();
            for form in [
                v.clone(),
                escaped.clone(),
                escaped.replace('/', "\\/"),
                escaped.replace('&', "\\u0026"),
            ] {
                if form.len() >= MIN_SECRET_LEN && !self.values.contains(&form) {
                    self.values.push(form);
                }
            }
        }
        self.values
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    /// How many exact values are scrubbed (for the manifest; never the values).
    pub fn exact_values(&self) -> usize {
        self.values.len()
    }

    pub fn redact(&self, text: &str) -> String {
        let mut s = text.to_string();
        for v in &self.values {
            if s.contains(v.as_str()) {
                s = s.replace(v.as_str(), PLACEHOLDER);
            }
        }
        redact_key_values(&redact_urls(&s))
    }
}

/// Bytes that end a URL in running text, JSON or a config line.
fn ends_url(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'<' | b'>' | b'`' | b'\\')
}

/// Replace the user info and the query string of every `scheme://` URL.
pub fn redact_urls(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let sep = search + found;
        let scheme_len = bytes[..sep]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'))
            .count();
        let start = sep + 3;
        let end = bytes[start..]
            .iter()
            .position(|b| ends_url(*b))
            .map_or(bytes.len(), |p| start + p);
        search = end.max(start);
        if scheme_len == 0 || end == start {
            continue;
        }
        let url = &text[start..end];
        let authority_len = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, rest) = url.split_at(authority_len);
        let host = match authority.rsplit_once('@') {
            Some((_, host)) => format!("{PLACEHOLDER}@{host}"),
            None => authority.to_string(),
        };
        let rest = match rest.split_once('?') {
            Some((path, query)) if !query.is_empty() => format!("{path}?{PLACEHOLDER}"),
            _ => rest.to_string(),
        };
        out.push_str(&text[copied..start]);
        out.push_str(&host);
        out.push_str(&rest);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Replace the values of secret-bearing keys (`key=value`, `key: value`, `"key": "value"`).
pub fn redact_key_values(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut cuts: Vec<(usize, usize, String)> = Vec::new();
    let keys = SECRET_KEYS
        .iter()
        .map(|k| (*k, false))
        .chain(USERINFO_KEYS.iter().map(|k| (*k, true)));
    for (key, userinfo_only) in keys {
        let mut from = 0;
        while let Some(p) = lower[from..].find(key) {
            let at = from + p;
            from = at + key.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let Some((start, end, quoted)) = value_after(bytes, at + key.len()) else {
                continue;
            };
            let value = &text[start..end];
            if value.is_empty() || value.starts_with(PLACEHOLDER) || (!quoted && value == "null") {
                continue;
            }
            if userinfo_only {
                if let Some(i) = value.rfind('@') {
                    cuts.push((start, start + i, PLACEHOLDER.to_string()));
                }
            } else {
                cuts.push((start, end, PLACEHOLDER.to_string()));
            }
        }
    }
    cuts.sort_by_key(|c| c.0);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end, with) in cuts {
        if start < copied {
            continue; // overlaps a cut already made
        }
        out.push_str(&text[copied..start]);
        out.push_str(&with);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// After a key: an optional closing quote, `=` or `:`, then the value. Returns the value's
/// byte range and whether it was quoted.
fn value_after(bytes: &[u8], mut i: usize) -> Option<(usize, usize, bool)> {
    let skip_spaces = |mut i: usize| {
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        i
    };
    if bytes.get(i) == Some(&b'"') {
        i += 1;
    }
    i = skip_spaces(i);
    if !matches!(bytes.get(i), Some(b'=') | Some(b':')) {
        return None;
    }
    i = skip_spaces(i + 1);
    if bytes.get(i) == Some(&b'"') {
        let start = i + 1;
        let mut j = start;
        while j < bytes.len() && bytes[j] != b'"' {
            j += if bytes[j] == b'\\' { 2 } else { 1 };
        }
        return Some((start, j.min(bytes.len()), true));
    }
    let start = i;
    let end = bytes[start..]
        .iter()
        .position(|b| {
            b.is_ascii_whitespace() || matches!(b, b'&' | b';' | b',' | b'"' | b'\'' | b'}' | b']')
        })
        .map_or(bytes.len(), |p| start + p);
    Some((start, end, false))
}

/// An agent `N.settings` document with every `protectedSettings` blob replaced by the
/// placeholder; `None` when the text is not JSON (the text layers still apply).
pub fn settings_document(text: &str) -> Option<String> {
    let mut doc: serde_json::Value =
        serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()?;
    if let Some(items) = doc
        .get_mut("runtimeSettings")
        .and_then(|v| v.as_array_mut())
    {
        for item in items {
            if let Some(hs) = item
                .get_mut("handlerSettings")
                .and_then(|v| v.as_object_mut())
            {
                if let Some(p) = hs.get_mut("protectedSettings") {
                    if !p.is_null() {
                        *p = serde_json::Value::String(PLACEHOLDER.into());
                    }
                }
            }
        }
    }
    serde_json::to_string_pretty(&doc).ok()
}

/// IMDS compute metadata without what can carry secrets or personal data: `customData`,
/// `userData` and `publicKeys` are dropped, the values of `tags` and `tagsList` and the
/// `adminUsername` are replaced (tag names stay: they help support). Returns the document and
/// the fields it removed or replaced.
pub fn imds_compute(text: &str) -> Option<(String, Vec<String>)> {
    let mut doc: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut changed = Vec::new();
    scrub_imds(&mut doc, "", &mut changed);
    Some((serde_json::to_string_pretty(&doc).ok()?, changed))
}

fn scrub_imds(v: &mut serde_json::Value, at: &str, changed: &mut Vec<String>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for key in ["customData", "userData", "publicKeys"] {
                if map.remove(key).is_some() {
                    changed.push(format!("{at}{key} (dropped)"));
                }
            }
            for (key, value) in map.iter_mut() {
                let path = format!("{at}{key}");
                match (key.as_str(), &mut *value) {
                    ("tags", Value::String(s)) if !s.is_empty() => {
                        *s = s
                            .split(';')
                            .map(|pair| match pair.split_once(':') {
                                Some((name, _)) => format!("{name}:{PLACEHOLDER}"),
                                None => PLACEHOLDER.to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join(";");
                        changed.push(format!("{path} (values)"));
                    }
                    ("tagsList", Value::Array(items)) if !items.is_empty() => {
                        for item in items.iter_mut() {
                            if let Some(val) = item.get_mut("value") {
                                *val = Value::String(PLACEHOLDER.into());
                            }
                        }
                        changed.push(format!("{path} (values)"));
                    }
                    ("adminUsername", Value::String(s)) if !s.is_empty() => {
                        *s = PLACEHOLDER.into();
                        changed.push(path);
                    }
                    _ => scrub_imds(value, &format!("{path}."), changed),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                scrub_imds(item, at, changed);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAS: &str =
        "https://acct.blob.core.windows.net/c/doca.tgz?sv=2024-01-01&sig=PLANTEDSIG123";
    const PROXY: &str = "http://user:PlantedPw9@127.0.0.1:3128";

    #[test]
    fn urls_lose_user_info_and_query() {
        assert_eq!(
            redact_urls(&format!("get {SAS} done")),
            "get https://acct.blob.core.windows.net/c/doca.tgz?<redacted> done"
        );
        assert_eq!(
            redact_urls(&format!("proxy=\"{PROXY}\"")),
            "proxy=\"http://<redacted>@127.0.0.1:3128\""
        );
        assert_eq!(
            redact_urls("http://u:p@h/a@b?x#f"),
            "http://<redacted>@h/a@b?<redacted>"
        );
        // Plain URLs and text without URLs are untouched; the pass is idempotent.
        for s in [
            "see https://example.com/path.",
            "no url: a://",
            "::// x",
            "",
        ] {
            assert_eq!(redact_urls(s), s);
        }
        let once = redact_urls(&format!("{SAS} {PROXY}"));
        assert_eq!(redact_urls(&once), once);
    }

    #[test]
    fn key_values_lose_their_values() {
        let cases = [
            ("a sig=ABC&se=x", "a sig=<redacted>&se=x"),
            (
                r#"{"protectedSettings": "MIIBxyz", "protectedSettingsCertThumbprint": "AB"}"#,
                r#"{"protectedSettings": "<redacted>", "protectedSettingsCertThumbprint": "AB"}"#,
            ),
            (r#""protectedSettings":null"#, r#""protectedSettings":null"#),
            (
                "HttpProxy.Password = hunter22\n",
                "HttpProxy.Password = <redacted>\n",
            ),
            (
                "HttpProxy.Host=user:PlantedPw9@proxy.corp\nHttpProxy.Port=3128",
                "HttpProxy.Host=<redacted>@proxy.corp\nHttpProxy.Port=3128",
            ),
            ("HttpProxy.Host=proxy.corp", "HttpProxy.Host=proxy.corp"),
            (
                "SIGTERM sent; signal=9 keysig",
                "SIGTERM sent; signal=9 keysig",
            ),
            (r#"{"token":"a\"b"}"#, r#"{"token":"<redacted>"}"#),
        ];
        for (input, want) in cases {
            assert_eq!(redact_key_values(input), want, "{input}");
        }
    }

    #[test]
    fn learned_values_are_scrubbed_everywhere_with_their_parts() {
        let mut r = Redactor::default();
        r.add(SAS);
        r.add(PROXY);
        r.add("user:Secr3tPass@proxy.corp");
        r.add("ab"); // too short to scrub on its own
        let text = format!(
            "url {SAS}\nescaped {}\nsig only PLANTEDSIG123, pw only PlantedPw9 and Secr3tPass\n\
             query sv=2024-01-01&sig=PLANTEDSIG123 ab",
            serde_json::to_string(SAS).unwrap().replace('&', "\\u0026")
        );
        let out = r.redact(&text);
        for secret in [
            "PLANTEDSIG123",
            "PlantedPw9",
            "Secr3tPass",
            "sv=2024-01-01&sig",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.ends_with(" ab"), "{out}");
        assert!(r.exact_values() > 4);
        // Dates elsewhere survive: only secret query parameters are learned one by one.
        assert!(r
            .redact("2024-01-01T00:00:00Z start")
            .contains("2024-01-01"));
    }

    #[test]
    fn settings_document_keeps_public_drops_protected() {
        let text = r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"stack":"doca"},
            "protectedSettings":"MIIBsecretblob","protectedSettingsCertThumbprint":"AB12"}}]}"#;
        let out = settings_document(text).unwrap();
        assert!(!out.contains("MIIBsecretblob"));
        assert!(out.contains("doca") && out.contains("AB12") && out.contains(PLACEHOLDER));
        assert!(settings_document("not json").is_none());
    }

    #[test]
    fn imds_loses_personal_fields() {
        let text = r#"{"vmSize":"Standard_HB120rs_v3","customData":"c2VjcmV0","userData":"x",
            "tags":"owner:alice;cost:PlantedTag1","tagsList":[{"name":"cost","value":"PlantedTag1"}],
            "osProfile":{"adminUsername":"alice","computerName":"vm1"},
            "publicKeys":[{"keyData":"ssh-rsa AAAA","path":"/home/alice/.ssh/authorized_keys"}]}"#;
        let (out, changed) = imds_compute(text).unwrap();
        for gone in ["c2VjcmV0", "PlantedTag1", "alice", "ssh-rsa", "userData"] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        assert!(out.contains("Standard_HB120rs_v3") && out.contains("owner:<redacted>"));
        assert!(out.contains("vm1"));
        assert_eq!(changed.len(), 6, "{changed:?}");
    }
}
