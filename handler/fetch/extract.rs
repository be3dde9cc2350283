//! Safe extraction of a `.tar.gz` stream into a directory: no absolute paths, no `..`, no
//! writing through a link, links that stay inside, only files, directories and links, and a
//! bound on the total size. The tar crate only reads entries; every file is created here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExtractError {
    #[error("archive entry {0} has an unsafe path")]
    UnsafePath(String),
    #[error("archive link {0} points outside the extraction directory")]
    UnsafeLink(String),
    #[error("archive entry {0} has an unsupported type")]
    UnsupportedType(String),
    #[error("archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("archive is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot write {path}: {err}")]
    Io { path: String, err: io::Error },
}

/// Turn an archive path into a relative path of normal components, or refuse it.
pub fn safe_relative(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Does a symlink at `link` (relative to `root`) with target `target` stay inside the root?
/// The target is walked against the tree as extracted so far: it must never climb above the
/// root, and never pass through another link (a chain such as `r -> .` then `x -> r/r/../..`
/// would otherwise escape while every step looks inside on paper).
pub fn link_stays_inside(root: &Path, link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut at: Vec<&std::ffi::OsStr> = match link.parent() {
        Some(p) => p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    for c in target.components() {
        match c {
            Component::ParentDir => {
                if at.pop().is_none() {
                    return false;
                }
            }
            Component::Normal(n) => {
                at.push(n);
                let here: PathBuf = at.iter().collect();
                if fs::symlink_metadata(root.join(here)).is_ok_and(|m| m.file_type().is_symlink()) {
                    return false;
                }
            }
            Component::CurDir => {}
            _ => return false,
        }
    }
    true
}

/// Refuse to write through an existing symlink anywhere on the way to `rel`.
fn check_no_link_on_path(root: &Path, rel: &Path) -> Result<(), ExtractError> {
    let mut p = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        p.push(c);
        if let Ok(m) = fs::symlink_metadata(&p) {
            if m.file_type().is_symlink() {
                return Err(ExtractError::UnsafePath(rel.display().to_string()));
            }
        }
    }
    Ok(())
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ExtractError + '_ {
    move |err| ExtractError::Io {
        path: path.display().to_string(),
        err,
    }
}

/// The target of a symlink or hard-link entry (`kind` names it in the error).
fn link_target<R: Read>(
    entry: &tar::Entry<R>,
    kind: &str,
    shown: &str,
) -> Result<PathBuf, ExtractError> {
    entry
        .link_name()
        .map_err(|e| ExtractError::Corrupt(e.to_string()))?
        .map(|t| t.into_owned())
        .ok_or_else(|| ExtractError::Corrupt(format!("{kind} {shown} without target")))
}

/// Summary of what was unpacked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub files: u64,
    pub bytes: u64,
}

/// Unpack the gzip'd tar read from `input` into `root` (which must exist and be empty).
pub fn untar_gz(input: impl Read, root: &Path, max_bytes: u64) -> Result<Extracted, ExtractError> {
    let gz = flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(256 * 1024, input));
    let mut archive = tar::Archive::new(gz);
    let mut done = Extracted::default();
    let mut buf = vec![0u8; 256 * 1024];
    let entries = archive
        .entries()
        .map_err(|e| ExtractError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ExtractError::Corrupt(e.to_string()))?;
        let raw = entry
            .path()
            .map_err(|e| ExtractError::Corrupt(e.to_string()))?
            .into_owned();
        let shown = raw.display().to_string();
        let Some(rel) = safe_relative(&raw) else {
            // `./` alone is the archive's root directory entry.
            if raw.components().all(|c| c == Component::CurDir) {
                continue;
            }
            return Err(ExtractError::UnsafePath(shown));
        };
        check_no_link_on_path(root, &rel)?;
        let dest = root.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        let kind = entry.header().entry_type();
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        match kind {
            tar::EntryType::Directory => {
                // Never chmod through a link an earlier entry planted.
                if fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_dir()) {
                    return Err(ExtractError::UnsafePath(shown));
                }
                fs::create_dir_all(&dest).map_err(io_err(&dest))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_err(&dest))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().unwrap_or(0);
                if done.bytes + size > max_bytes {
                    return Err(ExtractError::TooLarge(max_bytes));
                }
                let mut f: File = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .mode(mode | 0o600)
                    .open(&dest)
                    .map_err(io_err(&dest))?;
                let mut written = 0u64;
                loop {
                    let n = entry
                        .read(&mut buf)
                        .map_err(|e| ExtractError::Corrupt(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    written += n as u64;
                    if done.bytes + written > max_bytes {
                        return Err(ExtractError::TooLarge(max_bytes));
                    }
                    f.write_all(&buf[..n]).map_err(io_err(&dest))?;
                }
                done.files += 1;
                done.bytes += written;
            }
            tar::EntryType::Symlink => {
                let target = link_target(&entry, "symlink", &shown)?;
                if !link_stays_inside(root, &rel, &target) {
                    return Err(ExtractError::UnsafeLink(shown));
                }
                std::os::unix::fs::symlink(&target, &dest).map_err(io_err(&dest))?;
            }
            tar::EntryType::Link => {
                let target = link_target(&entry, "hard link", &shown)?;
                let target_rel = safe_relative(&target)
                    .ok_or_else(|| ExtractError::UnsafeLink(shown.clone()))?;
                check_no_link_on_path(root, &target_rel)?;
                let src = root.join(&target_rel);
                let m = fs::symlink_metadata(&src).map_err(io_err(&src))?;
                if !m.file_type().is_file() {
                    return Err(ExtractError::UnsafeLink(shown));
                }
                fs::hard_link(&src, &dest).map_err(io_err(&dest))?;
            }
            // pax/GNU headers are consumed by the tar crate; anything else (devices, fifos)
            // has no place in a driver bundle.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            _ => return Err(ExtractError::UnsupportedType(shown)),
        }
    }
    // Drain the gzip trailer so a truncated or corrupt tail is an error, not a silent success.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| ExtractError::Corrupt(e.to_string()))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let raw = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the raw name so unsafe paths reach the extractor unchanged.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_link_name(target).unwrap();
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    #[test]
    fn extracts_files_dirs_and_inner_links() {
        let data = tar_gz(|b| {
            file(b, "MLNX/mlnxofedinstall", b"#!/bin/sh\n");
            file(b, "MLNX/RPMS/a.rpm", &[7u8; 5000]);
            link(b, tar::EntryType::Symlink, "MLNX/latest", "RPMS/a.rpm");
            link(b, tar::EntryType::Link, "MLNX/hard", "MLNX/RPMS/a.rpm");
        });
        let d = tempfile::tempdir().unwrap();
        let got = untar_gz(&data[..], d.path(), 1 << 20).unwrap();
        assert_eq!(
            got,
            Extracted {
                files: 2,
                bytes: 5010
            }
        );
        let inst = d.path().join("MLNX/mlnxofedinstall");
        assert_eq!(
            fs::metadata(&inst).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(fs::read(d.path().join("MLNX/latest")).unwrap().len(), 5000);
        assert_eq!(fs::read(d.path().join("MLNX/hard")).unwrap().len(), 5000);
    }

    #[test]
    fn refuses_escapes() {
        for (name, build) in [
            (
                "dotdot",
                Box::new(|b: &mut tar::Builder<Vec<u8>>| file(b, "../evil", b"x"))
                    as Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>,
            ),
            (
                "absolute",
                Box::new(|b: &mut tar::Builder<Vec<u8>>| file(b, "/etc/evil", b"x")),
            ),
            (
                "symlink out",
                Box::new(|b: &mut tar::Builder<Vec<u8>>| {
                    link(b, tar::EntryType::Symlink, "a/l", "../../etc")
                }),
            ),
            (
                "absolute symlink",
                Box::new(|b: &mut tar::Builder<Vec<u8>>| {
                    link(b, tar::EntryType::Symlink, "l", "/etc")
                }),
            ),
            (
                "through symlink",
                Box::new(|b: &mut tar::Builder<Vec<u8>>| {
                    link(b, tar::EntryType::Symlink, "d", "x");
                    file(b, "d/f", b"x");
                }),
            ),
            (
                "hard link out",
                Box::new(|b: &mut tar::Builder<Vec<u8>>| {
                    link(b, tar::EntryType::Link, "h", "../etc/passwd")
                }),
            ),
        ] {
            let data = tar_gz(|b| build(b));
            let outer = tempfile::tempdir().unwrap();
            let root = outer.path().join("root");
            fs::create_dir(&root).unwrap();
            assert!(untar_gz(&data[..], &root, 1 << 20).is_err(), "{name}");
            assert!(
                !outer.path().join("evil").exists() && !outer.path().join("etc").exists(),
                "{name}"
            );
        }
    }

    #[test]
    fn bounded_size_and_truncation() {
        let data = tar_gz(|b| file(b, "big", &[1u8; 10_000]));
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar_gz(&data[..], d.path(), 5_000),
            Err(ExtractError::TooLarge(_))
        ));
        let d = tempfile::tempdir().unwrap();
        assert!(untar_gz(&data[..data.len() - 10], d.path(), 1 << 20).is_err());
    }

    #[test]
    fn link_rule() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert!(link_stays_inside(r, Path::new("a/b/l"), Path::new("../c")));
        assert!(!link_stays_inside(
            r,
            Path::new("a/l"),
            Path::new("../../c")
        ));
        assert!(!link_stays_inside(r, Path::new("l"), Path::new("/abs")));
        std::os::unix::fs::symlink(".", r.join("r")).unwrap();
        assert!(!link_stays_inside(
            r,
            Path::new("x"),
            Path::new("r/r/../../tmp")
        ));
    }

    #[test]
    fn a_link_chain_cannot_reach_outside() {
        // r -> . ; x -> r/r/r/../../../.. (outside on disk, inside on paper); then chmod x.
        let data = tar_gz(|b| {
            link(b, tar::EntryType::Symlink, "r", ".");
            link(b, tar::EntryType::Symlink, "x", "r/r/r/../../../../victim");
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0);
            h.set_path("x").unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        });
        let outer = tempfile::tempdir().unwrap();
        let victim = outer.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o777)).unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        assert!(untar_gz(&data[..], &root, 1 << 20).is_err());
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o777
        );
    }
}
