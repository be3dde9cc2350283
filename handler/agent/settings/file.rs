//! The agent's `N.settings` document: one `runtimeSettings` entry whose `handlerSettings`
//! hold the public settings, the encrypted protected ones and the certificate's thumbprint.

use super::error::SettingsError;
use super::keys::NoDuplicates;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The `handlerSettings` object before decryption.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawHandlerSettings {
    pub public: Option<serde_json::Value>,
    pub protected_blob: Option<String>,
    pub thumbprint: Option<String>,
    pub fingerprint: String,
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
    let hs = handler_settings(&doc).map_err(malformed)?;
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

/// The `handlerSettings` of the document's one `runtimeSettings` entry (an object, or null for
/// none); `Err` says what is wrong with the document.
fn handler_settings(doc: &serde_json::Value) -> Result<&serde_json::Value, String> {
    if !doc.is_object() {
        return Err("it is not a JSON object".into());
    }
    let rs = match doc.get("runtimeSettings") {
        None => return Err("no runtimeSettings array".into()),
        Some(v) => v
            .as_array()
            .ok_or_else(|| "runtimeSettings must be an array".to_string())?,
    };
    let first = match rs.as_slice() {
        [] => return Err("runtimeSettings is empty".into()),
        [one] => one,
        more => {
            return Err(format!(
                "the settings file has {} runtimeSettings entries; the agent writes one — remove the extra",
                more.len()
            ))
        }
    };
    let hs = first
        .get("handlerSettings")
        .ok_or_else(|| "runtimeSettings[0] has no handlerSettings".to_string())?;
    if !hs.is_object() && !hs.is_null() {
        return Err("runtimeSettings[0].handlerSettings must be an object".into());
    }
    Ok(hs)
}

fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Code, Failure};

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
}
