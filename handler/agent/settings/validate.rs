//! The value checks: each public setting against what it must be, each protected one a URL.
//! Messages name the key and what its value must be, never the value (a SAS URL pasted into
//! the wrong setting must not reach a status file or a log).

use super::error::SettingsError;
use super::keys::{shown_key, NoDuplicates, PROTECTED_KEYS, PUBLIC_KEYS};
use super::schema::{PackageRef, ProtectedSettings, PublicSettings, Secret};

/// Validate the public settings object (`null` or absent means all defaults).
pub fn parse_public(value: Option<&serde_json::Value>) -> Result<PublicSettings, SettingsError> {
    let Some(value) = value else {
        return Ok(PublicSettings::default());
    };
    if !value.is_object() {
        return Err(SettingsError::Invalid(
            "publicSettings must be a JSON object".into(),
        ));
    }
    let s = deserialize_public(value)?;
    if let Some(v) = &s.version {
        check_version(v)?;
    }
    if let Some(p) = &s.package {
        check_package(p)?;
    }
    if let Some(m) = &s.mirror {
        check_mirror(m)?;
    }
    check_lock_timeout(s.lock_timeout_seconds)?;
    Ok(s)
}

/// The object as [`PublicSettings`]: an unknown key is named (shown sanitized), a bad value
/// by its key and what it must be.
fn deserialize_public(value: &serde_json::Value) -> Result<PublicSettings, SettingsError> {
    let obj = value
        .as_object()
        .ok_or_else(|| SettingsError::Invalid("publicSettings must be a JSON object".into()))?;
    for key in obj.keys() {
        if !PUBLIC_KEYS.iter().any(|(k, _)| k == key) {
            let shown = shown_key(key);
            let known: Vec<&str> = PUBLIC_KEYS.iter().map(|(k, _)| *k).collect();
            return Err(SettingsError::Invalid(format!(
                "unknown setting `{shown}`; known settings: {}",
                known.join(", ")
            )));
        }
    }
    serde_json::from_value(value.clone()).map_err(|_| {
        // Find the offending key by trying each alone; name it and what it must be.
        let bad = PUBLIC_KEYS.iter().find(|(k, _)| {
            obj.get(*k).is_some_and(|v| {
                let one = serde_json::json!({ *k: v });
                serde_json::from_value::<PublicSettings>(one).is_err()
            })
        });
        match bad {
            Some((k, want)) => SettingsError::Invalid(format!("setting `{k}` must be {want}")),
            None => SettingsError::Invalid("publicSettings has an invalid value".into()),
        }
    })
}

/// Versions name catalog entries and paths: letters, digits and . _ - + ~ : only, so no
/// control or bidirectional character can reach a message or a file name.
fn check_version(v: &str) -> Result<(), SettingsError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_+~:".contains(c);
    if v.is_empty() || v.len() > 64 || !v.chars().all(allowed) {
        return Err(SettingsError::Invalid(
            "version must be a short version string such as 24.10-1.1.4.0".into(),
        ));
    }
    Ok(())
}

/// A package's URL may not carry a SAS token (that belongs in the protected `packageUrl`), and
/// its checksum is what the download is verified against.
fn check_package(p: &PackageRef) -> Result<(), SettingsError> {
    // Without url the protected packageUrl must carry it (checked when the plan is made).
    let url = p.url.as_deref().unwrap_or("https://set-by-packageUrl");
    if !is_http_url(url) {
        return Err(SettingsError::Invalid(
            "package.url must be an http or https URL".into(),
        ));
    }
    if url.contains('?') {
        return Err(SettingsError::Invalid(
            "package.url must not carry a query string; put a SAS URL in the protected setting packageUrl".into(),
        ));
    }
    if p.sha256.len() != 64 || !p.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(SettingsError::Invalid(
            "package.sha256 must be 64 hexadecimal digits".into(),
        ));
    }
    Ok(())
}

fn check_mirror(m: &str) -> Result<(), SettingsError> {
    if !m.to_ascii_lowercase().starts_with("https://") || !is_http_url(m) || m.contains('?') {
        return Err(SettingsError::Invalid(
            "mirror must be an https URL without a query string".into(),
        ));
    }
    Ok(())
}

fn check_lock_timeout(seconds: u64) -> Result<(), SettingsError> {
    if !(1..=86_400).contains(&seconds) {
        return Err(SettingsError::Invalid(
            "lockTimeoutSeconds must be between 1 and 86400".into(),
        ));
    }
    Ok(())
}

/// Validate decrypted protected settings. Messages name keys, never values.
pub fn parse_protected(plaintext: &[u8]) -> Result<ProtectedSettings, SettingsError> {
    if let Err(e) = serde_json::from_slice::<NoDuplicates>(plaintext) {
        // Only our own error is about data (a repeated key, named sanitized); the others are
        // syntax, and serde_json's syntax errors name positions, never content.
        return Err(if e.is_data() {
            SettingsError::ProtectedInvalid(format!("the decrypted protected settings: {e}"))
        } else {
            SettingsError::ProtectedNotJson
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(plaintext).map_err(|_| SettingsError::ProtectedNotJson)?;
    let obj = value.as_object().ok_or(SettingsError::ProtectedNotJson)?;
    let mut out = ProtectedSettings::default();
    for (key, v) in obj {
        // The key first: an unknown one is named (sanitized) whatever its value.
        if !PROTECTED_KEYS.contains(&key.as_str()) {
            return Err(SettingsError::ProtectedInvalid(format!(
                "unknown protected setting `{}`, expected one of {}",
                shown_key(key),
                PROTECTED_KEYS.join(", ")
            )));
        }
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => continue,
            _ => {
                return Err(SettingsError::ProtectedInvalid(format!(
                    "protected setting {key} must be a string"
                )))
            }
        };
        if !is_http_url(&s) {
            return Err(SettingsError::ProtectedInvalid(format!(
                "protected setting {key} must be an http or https URL"
            )));
        }
        match key.as_str() {
            "packageUrl" => out.package_url = Some(Secret::new(s)),
            _ => out.proxy = Some(Secret::new(s)),
        }
    }
    Ok(out)
}

/// An absolute http or https URL with a host and no whitespace.
fn is_http_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && s.split("://")
            .nth(1)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !s.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::settings::{RebootPolicy, Stack};
    use crate::error::{Code, Failure};
    use serde_json::json;

    fn public(v: serde_json::Value) -> Result<PublicSettings, SettingsError> {
        parse_public(Some(&v))
    }

    #[test]
    fn numbers_out_of_range_say_the_range() {
        for bad in [
            json!({"lockTimeoutSeconds": 0}),
            json!({"lockTimeoutSeconds": 86401}),
            json!({"lockTimeoutSeconds": -1}),
            json!({"lockTimeoutSeconds": 1.5}),
            json!({"lockTimeoutSeconds": 1e30}),
        ] {
            let e = public(bad.clone()).unwrap_err();
            assert!(
                e.to_string().contains("lockTimeoutSeconds")
                    && e.to_string().contains("between 1 and 86400"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_shown_sanitized() {
        let e = public(
            json!({"https://u:PASSWD@acct.blob.core.windows.net/c/x.tgz?sv=1&sig=SECRETSIG": 1}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`https://acct.blob.core.windows.net/c/x.tgz`"),
            "{e}"
        );
        assert!(
            !e.contains("SECRETSIG") && !e.contains("PASSWD") && !e.contains('?'),
            "{e}"
        );
        let e = public(json!({"st\u{202e}ack\u{0007}\u{0085}\u{2066}x\u{200f}": 1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`stackx`"), "{e}");
        let e = public(json!({ "k".repeat(5000): 1 }))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{}...`", "k".repeat(64))), "{e}");
        assert!(!e.contains(&"k".repeat(65)));
        let e = parse_protected(b"{\"pass\\u202eword?sig=SECRET\":\"x\"}").unwrap_err();
        assert!(e.to_string().contains("`password`"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = public(json!({"stack": "auto", "bogus": 1})).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert_eq!(Failure::from(e).code, Code::SettingsInvalid);
    }

    #[test]
    fn value_errors_name_the_key_never_the_value() {
        let e = public(
            json!({"package": "https://acct.blob.core.windows.net/c/x.tgz?sv=1&sig=SECRETSIG"}),
        )
        .unwrap_err();
        let f = Failure::from(e);
        assert!(
            f.message.contains("`package` must be an object"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("SECRETSIG"));
        let e = public(json!({"stack": "https://x/?sig=SECRETSIG"})).unwrap_err();
        assert!(!e.to_string().contains("SECRETSIG") && e.to_string().contains("`stack`"));
        let e = public(json!({"package": {"url": "https://x/y", "sha256": "a".repeat(64), "sig": "SECRETSIG"}})).unwrap_err();
        assert!(!e.to_string().contains("SECRETSIG") && e.to_string().contains("`package`"));
    }

    #[test]
    fn value_checks() {
        for bad in [
            json!({"stack": "ofed"}),
            json!({"ipoib": "yes"}),
            json!({"reboot": "always"}),
            json!({"lockTimeoutSeconds": 0}),
            json!({"lockTimeoutSeconds": "10"}),
            json!({"version": ""}),
            json!({"version": "1.0\u{202e}"}),
            json!({"version": "1.0\n"}),
            json!({"package": {"url": "ftp://x/y", "sha256": "00"}}),
            json!({"package": {"url": "https://x/y.tgz"}}),
            json!({"package": {}}),
            json!({"package": {"url": "https://x/y.tgz?sig=abc", "sha256": "a".repeat(64)}}),
            json!({"mirror": "http://mirror.example"}),
            json!([1, 2]),
        ] {
            assert!(public(bad.clone()).is_err(), "{bad}");
        }
        let ok = public(json!({"stack": "mlnx-ofed", "version": "4.9-7.1.0.0",
            "package": {"url": "https://example.com/x.tgz", "sha256": "A".repeat(64)},
            "mirror": "https://mirror.example/ofed", "reboot": "never", "lockTimeoutSeconds": 60}))
        .unwrap();
        assert_eq!(ok.stack, Stack::MlnxOfed);
        assert_eq!(ok.reboot, RebootPolicy::Never);
    }

    #[test]
    fn protected_settings_never_echo_values() {
        let p = parse_protected(
            br#"{"proxy":"http://u:S3cret@127.0.0.1:3128","packageUrl":"https://a/b?sig=TOKEN"}"#,
        )
        .unwrap();
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("S3cret") && !dbg.contains("TOKEN"), "{dbg}");
        assert_eq!(
            p.proxy.as_ref().unwrap().expose(),
            "http://u:S3cret@127.0.0.1:3128"
        );

        for (bad, secret) in [
            (r#"{"proxy":"not a url S3cret"}"#, "S3cret"),
            (r#"{"proxy":42}"#, "42"),
            (r#"{"password":"S3cret"}"#, "S3cret"),
        ] {
            let e = parse_protected(bad.as_bytes()).unwrap_err();
            let f = Failure::from(e);
            assert!(!f.message.contains(secret), "{}", f.message);
            assert_eq!(f.code, Code::SettingsInvalid);
        }
        for bad in ["S3cret", "[\"S3cret\"]"] {
            let f = Failure::from(parse_protected(bad.as_bytes()).unwrap_err());
            assert!(!f.message.contains("S3cret"), "{}", f.message);
            assert_eq!(f.code, Code::ProtectedMalformed);
        }
    }
}
