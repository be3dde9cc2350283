//! `N.settings`: the public settings (README, "Settings") and the protected settings
//! (decrypted by [`crate::agent::protected`]). Unknown keys are rejected by name.
//!
//! `schema` holds the settings as data, `keys` the keys they may have, `file` the agent's
//! document, `validate` the check of every value and `error` what can go wrong; this module
//! reads the files and puts the steps together.

mod error;
mod file;
mod keys;
mod schema;
mod validate;

pub use error::SettingsError;
pub use file::{parse_settings_file, RawHandlerSettings};
pub use keys::{shown_key, PROTECTED_KEYS, PUBLIC_KEYS, SHOWN_KEY_CHARS};
pub use schema::{
    HcaNaming, IpoibMode, PackageRef, ProtectedSettings, PublicSettings, RebootPolicy, Secret,
    Settings, Stack, DEFAULT_LOCK_TIMEOUT_SECONDS,
};
pub use validate::{parse_protected, parse_public};

use crate::error::Failure;
use std::path::Path;

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
    use crate::error::Code;

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
}
