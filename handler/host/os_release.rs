//! `/etc/os-release` (freedesktop format): KEY=value lines, optional single or double quotes,
//! backslash escapes inside double quotes, comments and blank lines.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OsRelease {
    pub id: String,
    pub id_like: Vec<String>,
    pub version_id: String,
    pub pretty_name: String,
}

pub fn parse_pairs(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(v) = unquote(raw.trim()) {
            out.insert(key.to_string(), v);
        }
    }
    out
}

/// `None` for an unterminated quote: better to drop a line than to misread it.
fn unquote(raw: &str) -> Option<String> {
    let mut chars = raw.chars();
    match chars.next() {
        Some(q @ ('"' | '\'')) => {
            let mut out = String::new();
            let mut escaped = false;
            for c in chars.by_ref() {
                if escaped {
                    out.push(c);
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    return Some(out);
                } else {
                    out.push(c);
                }
            }
            None
        }
        _ => Some(raw.to_string()),
    }
}

/// `None` when the file has no `ID`.
pub fn parse(text: &str) -> Option<OsRelease> {
    let kv = parse_pairs(text);
    let id = kv.get("ID")?.to_ascii_lowercase();
    if id.is_empty() {
        return None;
    }
    Some(OsRelease {
        id_like: kv
            .get("ID_LIKE")
            .map(|s| s.split_whitespace().map(str::to_ascii_lowercase).collect())
            .unwrap_or_default(),
        version_id: kv.get("VERSION_ID").cloned().unwrap_or_default(),
        pretty_name: kv.get("PRETTY_NAME").cloned().unwrap_or_else(|| id.clone()),
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_rules() {
        let kv = parse_pairs("A=plain\nB=\"dq \\\"x\\\"\"\nC='sq'\n# c\nD=\"open\nbad line\n");
        assert_eq!(kv["A"], "plain");
        assert_eq!(kv["B"], "dq \"x\"");
        assert_eq!(kv["C"], "sq");
        assert!(!kv.contains_key("D"));
    }

    #[test]
    fn missing_id_is_none() {
        assert_eq!(parse("NAME=x\nVERSION_ID=1\n"), None);
    }
}
