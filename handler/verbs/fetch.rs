//! `fetch`: the download pipeline on its own (verified, resumable, unpacked), for an operator
//! who stages an artifact by hand.

use crate::error::{Code, Failure};
use crate::host::Root;
use crate::net::fetch;
use std::path::Path;

/// `extract`: unpack (a tarball by default, judged from the URL's file name).
pub fn run(
    url: String,
    sha256: String,
    size: Option<u64>,
    extract: Option<bool>,
    into: &Path,
) -> i32 {
    crate::sys::logging::init(None, false);
    let req = fetch::Request {
        extract: extract.unwrap_or_else(|| fetch::is_tarball(&url)),
        url,
        sha256,
        size,
    };
    fetch_into(&req, into)
}

/// Where `fetch --into DIR` stages: inside DIR, so nothing outside what the user named is
/// touched, under a name of ours that an earlier interrupted run may have left.
pub const FETCH_STAGING: &str = ".ibdriver-fetch";

/// Is `into` usable: absent, or an empty directory, or one holding only our staging left by an
/// interrupted run (which then resumes)? What is there is never deleted or replaced.
fn fetch_target_ok(into: &Path) -> Result<bool, String> {
    let meta = match std::fs::symlink_metadata(into) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot read {}: {e}", into.display())),
    };
    if !meta.is_dir() {
        return Err(format!(
            "--into {} exists and is not a directory; name a new or empty directory",
            into.display()
        ));
    }
    let entries =
        std::fs::read_dir(into).map_err(|e| format!("cannot read {}: {e}", into.display()))?;
    for e in entries {
        let e = e.map_err(|e| format!("cannot read {}: {e}", into.display()))?;
        let ours = e.file_name() == FETCH_STAGING && e.file_type().is_ok_and(|t| t.is_dir());
        if !ours {
            return Err(format!(
                "--into {} is not empty; name a new or empty directory (nothing was changed)",
                into.display()
            ));
        }
    }
    Ok(true)
}

/// `fetch`: the download pipeline on its own, with progress on stderr. DIR must be new or
/// empty: the verified result is moved into it, and nothing already there is ever replaced.
fn fetch_into(req: &fetch::Request, into: &Path) -> i32 {
    let existed = match fetch_target_ok(into) {
        Ok(existed) => existed,
        Err(msg) => {
            crate::tell!("ibdriver: {}", Failure::new(Code::Usage, msg));
            return Code::Usage.exit_code();
        }
    };
    if !existed {
        // DIR and any missing parent 0755 whatever the umask; a link there is refused.
        if let Err(e) = crate::sys::fsutil::ensure_dir(into, crate::sys::fsutil::SYSTEM_DIR_MODE) {
            crate::tell!("ibdriver: {}", Failure::state_io(into, e));
            return Code::StateIo.exit_code();
        }
    }
    let staging = into.join(FETCH_STAGING);
    let env = crate::sys::runtime::Runtime::from_env().proxy;
    let waagent_conf = std::fs::read_to_string(Root::from_env().path("etc/waagent.conf")).ok();
    let progress = fetch::progress_every(10, |pct, done, total| {
        crate::tell!("fetch: {pct}% ({done} of {total} bytes)")
    });
    let opts = fetch::Options {
        proxy: crate::net::proxy::choose(&req.url, None, &env, waagent_conf.as_deref()),
        retry: fetch::RetryPolicy::default(),
        max_extract: fetch::DEFAULT_MAX_EXTRACT,
        limits: fetch::Limits::default(),
        sleep: &std::thread::sleep,
        progress: &progress,
        keep_going: &|| true,
        replace: false,
    };
    let r = fetch::fetch(req, &staging, into, &opts);
    // Our staging goes when empty (a resumable partial download stays in it); DIR goes only
    // when this run made it and nothing came of it.
    let _ = std::fs::remove_dir(&staging);
    if !existed && r.is_err() {
        let _ = std::fs::remove_dir(into);
    }
    match r {
        Ok(out) => {
            crate::tell!(
                "fetch: verified {} bytes (sha256 {}), {} files -> {}",
                out.size,
                req.sha256.to_ascii_lowercase(),
                out.files,
                out.path.display()
            );
            0
        }
        Err(e) => {
            let f = e.failure();
            crate::tell!("ibdriver: {f}");
            f.code.exit_code()
        }
    }
}
