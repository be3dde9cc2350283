//! `N.settings`: the public settings (README, "Settings") and the protected settings
//! (decrypted by [`crate::agent::protected`]). Unknown keys are rejected by name.

use crate::error::{Code, Failure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stack {
    #[default]
    Auto,
    Doca,
    MlnxOfed,
    Inbox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpoibMode {
    #[default]
    Auto,
    Native,
    Waagent,
    Off,
}

/// HCA device names: leave the kernel's, or give InfiniBand HCAs `mlx5_ib<N>`
/// and accelerated-networking ones `mlx5_an<N>` so every node of a cluster names them alike.
/// See docs/DOMAIN.md, "HCA names".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HcaNaming {
    #[default]
    Kernel,
    Stable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RebootPolicy {
    #[default]
    #[serde(rename = "ifRequired")]
    IfRequired,
    #[serde(rename = "never")]
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRef {
    /// May be left out when the protected setting `packageUrl` carries the URL.
    #[serde(default)]
    pub url: Option<String>,
    pub sha256: String,
}

pub const DEFAULT_LOCK_TIMEOUT_SECONDS: u64 = 900;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PublicSettings {
    #[serde(default)]
    pub stack: Stack,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub package: Option<PackageRef>,
    #[serde(default)]
    pub mirror: Option<String>,
    #[serde(default)]
    pub ipoib: IpoibMode,
    #[serde(default)]
    pub reboot: RebootPolicy,
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout_seconds: u64,
    #[serde(default)]
    pub hca_naming: HcaNaming,
    /// Uninstall removes the driver stack this extension installed (default: drivers stay).
    #[serde(default)]
    pub remove_drivers_on_uninstall: bool,
}

fn default_lock_timeout() -> u64 {
    DEFAULT_LOCK_TIMEOUT_SECONDS
}

impl Default for PublicSettings {
    fn default() -> Self {
        PublicSettings {
            stack: Stack::Auto,
            version: None,
            package: None,
            mirror: None,
            ipoib: IpoibMode::Auto,
            reboot: RebootPolicy::IfRequired,
            lock_timeout_seconds: DEFAULT_LOCK_TIMEOUT_SECONDS,
            hca_naming: HcaNaming::Kernel,
            remove_drivers_on_uninstall: false,
        }
    }
}

/// A value that must never be printed: Debug and Display show a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectedSettings {
    /// A package URL that may carry a SAS token (instead of `package.url`).
    pub package_url: Option<Secret>,
    /// A proxy URL that may carry credentials.
    pub proxy: Option<Secret>,
}

pub const PROTECTED_KEYS: [&str; 2] = ["packageUrl", "proxy"];

/// The settings of one sequence number, ready to use.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub public: PublicSettings,
    pub protected: ProtectedSettings,
    /// SHA-256 over the handler settings as the agent wrote them (encrypted blob included,
    /// never the plaintext), so a checkpoint can tell whether the settings changed.
    pub fingerprint: String,
}

/// The `handlerSettings` object before decryption.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawHandlerSettings {
    pub public: Option<serde_json::Value>,
    pub protected_blob: Option<String>,
    pub thumbprint: Option<String>,
    pub fingerprint: String,
}

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {err}")]
    Unreadable { path: String, err: std::io::Error },
    #[error("settings file {path} is not valid: {detail}")]
    Malformed { path: String, detail: String },
    #[error("public setting error: {0}")]
    Invalid(String),
    #[error("protected settings error: {0}")]
    ProtectedInvalid(String),
    #[error("the decrypted protected settings are not a JSON object")]
    ProtectedNotJson,
}

impl From<SettingsError> for Failure {
    fn from(e: SettingsError) -> Self {
        match e {
            SettingsError::Unreadable { .. } | SettingsError::Malformed { .. } => Failure::new(
                Code::SettingsMalformed,
                format!("{e}; redeploy the extension with valid settings"),
            ),
            SettingsError::Invalid(_) | SettingsError::ProtectedInvalid(_) => Failure::new(
                Code::SettingsInvalid,
                format!("{e}; fix the extension settings (see the README's settings table) and redeploy"),
            ),
            SettingsError::ProtectedNotJson => Failure::new(
                Code::ProtectedMalformed,
                format!("{e}; set protectedSettings to a JSON object and redeploy"),
            ),
        }
    }
}

/// Parse the text of `N.settings`. An empty file means no settings at all.
pub fn parse_settings_file(text: &str, path: &Path) -> Result<RawHandlerSettings, SettingsError> {
    let malformed = |detail: String| SettingsError::Malformed {
        path: path.display().to_string(),
        detail,
    };
    let text = text.trim_start_matches('\u{feff}');
    if text.trim().is_empty() {
        return Ok(RawHandlerSettings {
            fingerprint: fingerprint(b""),
            ..Default::default()
        });
    }
    // Duplicate keys first: serde_json keeps the last of them silently, and which of two
    // values the agent meant is anybody's guess.
    serde_json::from_str::<NoDuplicates>(text).map_err(|e| {
        // serde_json's message names a line and column, never the content; ours a shown key.
        malformed(format!("not JSON ({e})"))
    })?;
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| malformed(format!("not JSON ({e})")))?;
    if !doc.is_object() {
        return Err(malformed("it is not a JSON object".into()));
    }
    let rs = match doc.get("runtimeSettings") {
        None => return Err(malformed("no runtimeSettings array".into())),
        Some(v) => v
            .as_array()
            .ok_or_else(|| malformed("runtimeSettings must be an array".into()))?,
    };
    let first = match rs.as_slice() {
        [] => return Err(malformed("runtimeSettings is empty".into())),
        [one] => one,
        more => {
            return Err(malformed(format!(
                "the settings file has {} runtimeSettings entries; the agent writes one — remove the extra",
                more.len()
            )))
        }
    };
    let hs = first
        .get("handlerSettings")
        .ok_or_else(|| malformed("runtimeSettings[0] has no handlerSettings".into()))?;
    if !hs.is_object() && !hs.is_null() {
        return Err(malformed(
            "runtimeSettings[0].handlerSettings must be an object".into(),
        ));
    }
    let public = match hs.get("publicSettings") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.clone()),
    };
    let string_field = |key: &str| -> Result<Option<String>, SettingsError> {
        match hs.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(malformed(format!("{key} must be a string"))),
        }
    };
    let protected_blob = string_field("protectedSettings")?;
    let thumbprint = string_field("protectedSettingsCertThumbprint")?;
    let canonical = serde_json::to_vec(hs).map_err(|e| malformed(e.to_string()))?;
    Ok(RawHandlerSettings {
        public,
        protected_blob,
        thumbprint,
        fingerprint: fingerprint(&canonical),
    })
}

/// Walks a JSON document, failing on an object with a key twice.
struct NoDuplicates;

impl<'de> serde::Deserialize<'de> for NoDuplicates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "key `{}` appears twice",
                    shown_key(&key)
                )));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

/// How long a shown key may be before it is cut.
pub const SHOWN_KEY_CHARS: usize = 64;

/// A key name as messages show it. Keys are user text too: a SAS URL pasted as a key keeps no
/// query or credentials, and control and bidirectional characters, which could disguise a
/// status line, are dropped.
pub fn shown_key(key: &str) -> String {
    let mut k = key;
    if let Some(q) = k.find(['?', '#']) {
        k = &k[..q];
    }
    let mut owned;
    if let Some(scheme) = k.find("://") {
        let rest = &k[scheme + 3..];
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            owned = format!("{}{}", &k[..scheme + 3], &rest[at + 1..]);
            k = &owned;
        }
    }
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}' | '\u{feff}')
    };
    owned = k.chars().filter(|c| !hidden(*c)).collect();
    if owned.chars().count() > SHOWN_KEY_CHARS {
        owned = owned.chars().take(SHOWN_KEY_CHARS).collect::<String>() + "...";
    }
    owned
}

fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_http_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && s.split("://")
            .nth(1)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !s.chars().any(char::is_whitespace)
}

/// Every public key, with what its value must be (for messages that never quote the value:
/// a SAS URL pasted into the wrong setting must not reach a status file or a log).
pub const PUBLIC_KEYS: [(&str, &str); 9] = [
    ("stack", "one of auto, doca, mlnx-ofed, inbox"),
    ("version", "a string"),
    ("package", "an object {url, sha256}"),
    ("mirror", "an https URL"),
    ("ipoib", "one of auto, native, waagent, off"),
    ("reboot", "one of ifRequired, never"),
    ("lockTimeoutSeconds", "an integer between 1 and 86400"),
    ("hcaNaming", "one of kernel, stable"),
    ("removeDriversOnUninstall", "true or false"),
];

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
        // Versions name catalog entries and paths: letters, digits and . _ - + ~ : only, so
        // no control or bidirectional character can reach a message or a file name.
        let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_+~:".contains(c);
        if v.is_empty() || v.len() > 64 || !v.chars().all(allowed) {
            return Err(SettingsError::Invalid(
                "version must be a short version string such as 24.10-1.1.4.0".into(),
            ));
        }
    }
    if let Some(p) = &s.package {
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
    }
    if let Some(m) = &s.mirror {
        if !m.to_ascii_lowercase().starts_with("https://") || !is_http_url(m) || m.contains('?') {
            return Err(SettingsError::Invalid(
                "mirror must be an https URL without a query string".into(),
            ));
        }
    }
    if !(1..=86_400).contains(&s.lock_timeout_seconds) {
        return Err(SettingsError::Invalid(
            "lockTimeoutSeconds must be between 1 and 86400".into(),
        ));
    }
    Ok(s)
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

/// Read, validate and decrypt the settings of the agent's current sequence number.
pub fn load(
    agent: &crate::agent::environment::AgentContext,
    openssl_timeout: std::time::Duration,
) -> Result<Settings, Failure> {
    let path = agent.settings_path();
    let text = match crate::sys::fsutil::read_text(&path) {
        Ok(t) => t,
        // The agent passes N=0 with no file for a handler without settings.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && agent.seq == 0 => String::new(),
        Err(err) => {
            return Err(SettingsError::Unreadable {
                path: path.display().to_string(),
                err,
            }
            .into())
        }
    };
    let raw = parse_settings_file(&text, &path)?;
    let public = parse_public(raw.public.as_ref())?;
    let protected = match &raw.protected_blob {
        None => ProtectedSettings::default(),
        Some(blob) => {
            let plain = crate::agent::protected::decrypt(
                blob,
                raw.thumbprint.as_deref(),
                &agent.certificate_dir(),
                openssl_timeout,
            )?;
            parse_protected(&plain)?
        }
    };
    Ok(Settings {
        public,
        protected,
        fingerprint: raw.fingerprint,
    })
}

/// Public settings from a file holding either the bare public settings object or a whole
/// agent `N.settings` document.
/// A file that cannot be read or is not JSON is [`SettingsError::Unreadable`] or
/// [`SettingsError::Malformed`] (code 102); a bad value is [`SettingsError::Invalid`] (103).
pub fn read_public_settings(path: &Path) -> Result<PublicSettings, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|err| SettingsError::Unreadable {
        path: path.display().to_string(),
        err,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| SettingsError::Malformed {
            path: path.display().to_string(),
            detail: format!("not JSON: {e}"),
        })?;
    if v.get("runtimeSettings").is_some() {
        let raw = parse_settings_file(&text, path)?;
        return parse_public(raw.public.as_ref());
    }
    parse_public(Some(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_file_keeps_malformed_and_invalid_apart() {
        let d = tempfile::tempdir().unwrap();
        let code = |text: Option<&str>| {
            let p = d.path().join("s.json");
            let _ = std::fs::remove_file(&p);
            if let Some(t) = text {
                std::fs::write(&p, t).unwrap();
            }
            read_public_settings(&p)
                .map(|_| ())
                .map_err(|e| Failure::from(e).code)
        };
        assert_eq!(code(None), Err(Code::SettingsMalformed));
        assert_eq!(code(Some("{not json")), Err(Code::SettingsMalformed));
        assert_eq!(
            code(Some(r#"{"runtimeSettings": [{}, {}]}"#)),
            Err(Code::SettingsMalformed)
        );
        assert_eq!(
            code(Some(r#"{"ipoib": "sideways"}"#)),
            Err(Code::SettingsInvalid)
        );
        assert_eq!(
            code(Some(
                r#"{"runtimeSettings": [{"handlerSettings": {"publicSettings": {"stack": 7}}}]}"#
            )),
            Err(Code::SettingsInvalid)
        );
        assert_eq!(code(Some(r#"{"ipoib": "off"}"#)), Ok(()));
    }
    use serde_json::json;

    fn public(v: serde_json::Value) -> Result<PublicSettings, SettingsError> {
        parse_public(Some(&v))
    }

    #[test]
    fn empty_file_means_defaults() {
        let raw = parse_settings_file("", Path::new("0.settings")).unwrap();
        assert_eq!(raw.public, None);
        assert_eq!(
            parse_public(raw.public.as_ref()).unwrap(),
            PublicSettings::default()
        );
    }

    #[test]
    fn agent_shape_is_parsed() {
        let text = r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"stack":"doca","ipoib":"native"},
            "protectedSettings":"MIIB","protectedSettingsCertThumbprint":"ABCDEF"}}]}"#;
        let raw = parse_settings_file(text, Path::new("1.settings")).unwrap();
        assert_eq!(raw.protected_blob.as_deref(), Some("MIIB"));
        assert_eq!(raw.thumbprint.as_deref(), Some("ABCDEF"));
        let p = parse_public(raw.public.as_ref()).unwrap();
        assert_eq!(p.stack, Stack::Doca);
        assert_eq!(p.ipoib, IpoibMode::Native);
        assert_eq!(p.reboot, RebootPolicy::IfRequired);
        assert_eq!(p.lock_timeout_seconds, 900);
    }

    #[test]
    fn nulls_are_absent() {
        let text = r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":null,"protectedSettings":null,
            "protectedSettingsCertThumbprint":null}}]}"#;
        let raw = parse_settings_file(text, Path::new("1.settings")).unwrap();
        assert_eq!(raw.public, None);
        assert_eq!(raw.protected_blob, None);
    }

    #[test]
    fn fingerprint_follows_content() {
        let a = parse_settings_file(
            r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{}}}]}"#,
            Path::new("a"),
        )
        .unwrap();
        let b = parse_settings_file(
            r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"ipoib":"off"}}}]}"#,
            Path::new("b"),
        )
        .unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 64);
    }

    #[test]
    fn malformed_files() {
        for bad in [
            "{",
            "[]",
            r#"{"runtimeSettings":[]}"#,
            r#"{"runtimeSettings":[{}]}"#,
            r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettings":5}}]}"#,
            r#"{"runtimeSettings":[{"handlerSettings":"x"}]}"#,
            r#"{"runtimeSettings":[{"handlerSettings":5}]}"#,
        ] {
            let e = parse_settings_file(bad, Path::new("x")).unwrap_err();
            assert!(matches!(e, SettingsError::Malformed { .. }), "{bad}");
            assert_eq!(Failure::from(e).code, Code::SettingsMalformed);
        }
    }

    #[test]
    fn a_second_runtime_settings_entry_is_malformed() {
        let text = r#"{"runtimeSettings":[{"handlerSettings":{}},{"handlerSettings":{"publicSettings":{"stack":"doca"}}}]}"#;
        let f = Failure::from(parse_settings_file(text, Path::new("1.settings")).unwrap_err());
        assert_eq!(f.code, Code::SettingsMalformed);
        assert!(
            f.message.contains("the settings file has 2 runtimeSettings entries; the agent writes one — remove the extra"),
            "{}",
            f.message
        );
        let e = parse_settings_file(r#"{"runtimeSettings":{}}"#, Path::new("x")).unwrap_err();
        assert!(
            e.to_string().contains("runtimeSettings must be an array"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_keys_are_malformed() {
        for text in [
            r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"stack":"doca","stack":"inbox"}}}]}"#,
            r#"{"runtimeSettings":[],"runtimeSettings":[{"handlerSettings":{}}]}"#,
            r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettings":"A","protectedSettings":"B"}}]}"#,
        ] {
            let f = Failure::from(parse_settings_file(text, Path::new("x")).unwrap_err());
            assert_eq!(f.code, Code::SettingsMalformed, "{text}");
            assert!(f.message.contains("appears twice"), "{}", f.message);
        }
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
