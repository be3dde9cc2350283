//! What can be wrong with the settings, and the status code and advice each maps to.

use crate::error::{Code, Failure};
use thiserror::Error;

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
