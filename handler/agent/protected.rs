//! Decrypting protected settings with the system `openssl`: base64 of a DER
//! CMS EnvelopedData, the recipient's `<THUMB>.crt`/`.prv` beside the agent's other files.
//! `openssl cms` first (3DES and AES), `openssl smime` as the fallback older handlers use.
//! The system OpenSSL keeps FIPS hosts compliant. Plaintext stays in memory only.
//! See docs/PROTOCOL.md, "Protected settings".

use crate::error::{Code, Failure};
use crate::sys::proc;
use base64::Engine;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProtectedError {
    #[error("protected settings are present but protectedSettingsCertThumbprint is missing")]
    NoThumbprint,
    #[error("the certificate thumbprint is not 40 hexadecimal digits")]
    BadThumbprint,
    #[error("the protected settings are not valid base64")]
    BadBase64,
    #[error("certificate {thumb} ({missing}) is not in {dir}")]
    CertMissing {
        thumb: String,
        missing: &'static str,
        dir: PathBuf,
    },
    #[error("openssl could not decrypt the protected settings with certificate {thumb}: {detail}")]
    Decrypt { thumb: String, detail: String },
}

impl From<ProtectedError> for Failure {
    fn from(e: ProtectedError) -> Self {
        let code = match e {
            ProtectedError::CertMissing { .. } | ProtectedError::NoThumbprint => {
                Code::ProtectedCertMissing
            }
            ProtectedError::Decrypt { .. } => Code::ProtectedDecryptFailed,
            ProtectedError::BadThumbprint | ProtectedError::BadBase64 => Code::ProtectedMalformed,
        };
        let hint = match code {
            Code::ProtectedCertMissing => {
                "the guest agent has not delivered the tenant certificate; redeploy the extension"
            }
            _ => "redeploy the extension with its protected settings set again",
        };
        Failure::new(code, format!("{e}; {hint}"))
    }
}

/// Decrypt `blob` for the certificate named by `thumbprint` found in `cert_dir`.
/// Each openssl run may take `timeout` (decrypting a few hundred bytes takes milliseconds).
pub fn decrypt(
    blob: &str,
    thumbprint: Option<&str>,
    cert_dir: &Path,
    timeout: Duration,
) -> Result<Vec<u8>, ProtectedError> {
    let thumb = thumbprint.ok_or(ProtectedError::NoThumbprint)?.trim();
    if thumb.len() != 40 || !thumb.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ProtectedError::BadThumbprint);
    }
    let thumb = thumb.to_ascii_uppercase();
    let compact: String = blob.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| ProtectedError::BadBase64)?;
    let crt = cert_dir.join(format!("{thumb}.crt"));
    let prv = cert_dir.join(format!("{thumb}.prv"));
    for (path, missing) in [(&crt, "certificate file"), (&prv, "private key file")] {
        if !path.is_file() {
            return Err(ProtectedError::CertMissing {
                thumb: thumb.clone(),
                missing,
                dir: cert_dir.to_path_buf(),
            });
        }
    }
    let crt_s = crt.to_string_lossy();
    let prv_s = prv.to_string_lossy();
    let mut last = String::new();
    for sub in ["cms", "smime"] {
        let args = [
            sub, "-decrypt", "-inform", "DER", "-recip", &crt_s, "-inkey", &prv_s,
        ];
        // openssl's stderr names files and error reasons, never plaintext.
        let ran = proc::run("openssl", &args, Some(&der), timeout)
            .map_err(proc::Unsuccessful::from)
            .and_then(|out| out.require_success("openssl", &format!("openssl {sub}"), 200));
        match ran {
            Ok(out) => return Ok(out.stdout),
            Err(e) => {
                last = e.to_string();
                tracing::warn!(subcommand = sub, detail = %last, "openssl decrypt failed");
            }
        }
    }
    Err(ProtectedError::Decrypt {
        thumb,
        detail: last,
    })
}
