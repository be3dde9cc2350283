//! Safe extraction of a `.tar.gz` stream into a directory. Every entry is judged against a
//! record of the tree this archive builds, never against the disk as it stands: paths are
//! relative with no `..`, no entry is written through a link or over another entry, hard links
//! name a regular file the archive made before, and symlinks are created only at the end, once
//! the whole tree is known, each one resolved lexically through the recorded links and refused
//! if it can reach outside the root. Only files, directories and links; modes are set
//! explicitly (umask-independent, no setuid/setgid/sticky, exec bits as the archive says).
//! Bounds: total size, 1 MiB per header (GNU long names, pax records), and before the
//! artifact is verified a cap on inflated bytes relative to the compressed bytes read (a
//! gzip bomb stops there). The tar crate only reads entries; every file is created here.

mod tree;

pub use tree::safe_relative;

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use thiserror::Error;
use tree::{Node, Tree};

/// What one tar header (with its GNU long name or pax records) may take once inflated.
pub const MAX_HEADER: u64 = 1 << 20;
#[derive(Debug, Error)]
pub enum ExtractError {
    #[error("archive entry {0} has an unsafe path")]
    UnsafePath(String),
    #[error("archive link {0} points outside the extraction directory")]
    UnsafeLink(String),
    #[error("archive entry {0} has an unsupported type")]
    UnsupportedType(String),
    #[error("archive entry {0} appears twice or replaces another entry")]
    Duplicate(String),
    #[error("archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("archive header larger than {MAX_HEADER} bytes")]
    HeaderTooLarge,
    /// Only while the artifact is unverified: it inflates faster than the bound allows.
    #[error("archive inflates to {inflated} bytes from {compressed} compressed bytes, past the bound before verification")]
    InflationBound { inflated: u64, compressed: u64 },
    #[error("archive is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot write {path}: {err}")]
    Io { path: String, err: io::Error },
}

/// Bounds on one extraction.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of entry data in all.
    pub max_bytes: u64,
    /// `(factor, slack)`: inflated bytes may not exceed `factor * compressed + slack`
    /// (set while the artifact is not verified yet; `None` once it is).
    pub inflation: Option<(u64, u64)>,
}

impl Limits {
    pub fn total(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            inflation: None,
        }
    }
}

/// Before verification at most 4 bytes per compressed byte read, plus 1 MiB.
pub const UNVERIFIED_INFLATION: (u64, u64) = (4, 1 << 20);

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

/// Byte counts shared by the readers below and the entry loop (one thread).
#[derive(Default)]
struct Meter {
    compressed: Cell<u64>,
    inflated: Cell<u64>,
    /// Inflated count when the tar reader started on a header; `None` while reading data.
    header_from: Cell<Option<u64>>,
    tripped: Cell<Option<Trip>>,
}

#[derive(Clone, Copy)]
enum Trip {
    Header,
    Inflation,
}

impl Meter {
    /// An I/O error from the tar or gzip reader, as the bound that caused it when one did.
    fn explain(&self, e: io::Error) -> ExtractError {
        match self.tripped.get() {
            Some(Trip::Header) => ExtractError::HeaderTooLarge,
            Some(Trip::Inflation) => ExtractError::InflationBound {
                inflated: self.inflated.get(),
                compressed: self.compressed.get(),
            },
            None => ExtractError::Corrupt(e.to_string()),
        }
    }
}

struct Compressed<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Compressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter
            .compressed
            .set(self.meter.compressed.get() + n as u64);
        Ok(n)
    }
}

struct Inflated<R> {
    inner: R,
    meter: Rc<Meter>,
    inflation: Option<(u64, u64)>,
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        if m.tripped.get().is_some() {
            return Err(io::Error::other("extraction bound reached"));
        }
        let n = self.inner.read(buf)?;
        let total = m.inflated.get() + n as u64;
        m.inflated.set(total);
        if m.header_from
            .get()
            .is_some_and(|from| total - from > MAX_HEADER)
        {
            m.tripped.set(Some(Trip::Header));
        } else if let Some((factor, slack)) = self.inflation {
            if total
                > m.compressed
                    .get()
                    .saturating_mul(factor)
                    .saturating_add(slack)
            {
                m.tripped.set(Some(Trip::Inflation));
            }
        }
        if m.tripped.get().is_some() {
            return Err(io::Error::other("extraction bound reached"));
        }
        Ok(n)
    }
}

/// Unpack the gzip'd tar read from `input` into `root` (which must exist and be empty).
pub fn untar_gz(input: impl Read, root: &Path, limits: Limits) -> Result<Extracted, ExtractError> {
    let meter = Rc::new(Meter::default());
    let compressed = Compressed {
        inner: input,
        meter: meter.clone(),
    };
    let gz =
        flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(256 * 1024, compressed));
    let inflated = Inflated {
        inner: gz,
        meter: meter.clone(),
        inflation: limits.inflation,
    };
    let mut archive = tar::Archive::new(inflated);
    let mut unpacking = Unpacking::new(root, limits, &meter);
    let mut entries = archive.entries().map_err(|e| meter.explain(e))?;
    while let Some(next) = next_entry(&mut entries, &meter) {
        let mut entry = next.map_err(|e| meter.explain(e))?;
        unpacking.entry(&mut entry)?;
    }
    // Drain the gzip trailer so a truncated or corrupt tail is an error, not a silent success.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| meter.explain(e))?;
    unpacking.make_links()
}

/// The next entry, its header (with any GNU long name or pax records) metered against
/// [`MAX_HEADER`] while the tar reader takes it in.
fn next_entry<'a, R: Read>(
    entries: &mut tar::Entries<'a, R>,
    meter: &Meter,
) -> Option<io::Result<tar::Entry<'a, R>>> {
    meter.header_from.set(Some(meter.inflated.get()));
    let next = entries.next();
    meter.header_from.set(None);
    next
}

/// A symlink entry, made only once the whole tree is known.
struct PendingLink {
    rel: PathBuf,
    target: PathBuf,
    shown: String,
}

/// One extraction under way: what the archive built so far and what it may still take.
struct Unpacking<'a> {
    root: &'a Path,
    limits: Limits,
    meter: &'a Meter,
    tree: Tree,
    links: Vec<PendingLink>,
    done: Extracted,
    /// Entry data read so far, whatever the entry; counted against `limits.max_bytes`.
    data_bytes: u64,
    buf: Vec<u8>,
}

impl<'a> Unpacking<'a> {
    fn new(root: &'a Path, limits: Limits, meter: &'a Meter) -> Unpacking<'a> {
        Unpacking {
            root,
            limits,
            meter,
            tree: Tree::default(),
            links: Vec::new(),
            done: Extracted::default(),
            data_bytes: 0,
            buf: vec![0u8; 256 * 1024],
        }
    }

    /// One archive entry, judged and made, by its kind.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), ExtractError> {
        let raw = entry
            .path()
            .map_err(|e| ExtractError::Corrupt(e.to_string()))?
            .into_owned();
        let shown = raw.display().to_string();
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            // Global pax records carry nothing we use; bounded like any header.
            if entry.size() > MAX_HEADER {
                return Err(ExtractError::HeaderTooLarge);
            }
            drain(entry, &mut self.buf, self.meter)?;
            return Ok(());
        }
        let Some(rel) = self.destination(&raw, kind, &shown)? else {
            return Ok(());
        };
        let dest = self.root.join(&rel);
        // No setuid, setgid or sticky bit and no group/other write; the exec bits stay.
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        match kind {
            tar::EntryType::Directory => self.dir(rel, &dest, mode, &shown)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.file(entry, rel, &dest, mode, &shown)?
            }
            tar::EntryType::Symlink => self.symlink(entry, rel, shown)?,
            tar::EntryType::Link => self.hard_link(entry, rel, &dest, &shown)?,
            // Devices, fifos, sparse files and the rest have no place in a driver bundle.
            _ => return Err(ExtractError::UnsupportedType(shown)),
        }
        // Data a non-file entry claims to carry is read past, and counted.
        let rest = drain(entry, &mut self.buf, self.meter)?;
        self.count(rest)
    }

    /// The entry's path below the root, its parents made directories of this archive; `None`
    /// for the archive's own root directory, which is skipped.
    fn destination(
        &mut self,
        raw: &Path,
        kind: tar::EntryType,
        shown: &str,
    ) -> Result<Option<PathBuf>, ExtractError> {
        let Some(rel) = safe_relative(raw) else {
            // `./` alone is the archive's root directory entry.
            if kind == tar::EntryType::Directory && raw.components().all(|c| c == Component::CurDir)
            {
                return Ok(None);
            }
            return Err(ExtractError::UnsafePath(shown.to_string()));
        };
        self.parents(&rel, shown)?;
        Ok(Some(rel))
    }

    /// Every proper prefix of `rel` must be a directory of this archive (or not exist yet, and
    /// then it is made one): never a link, never a file.
    fn parents(&mut self, rel: &Path, shown: &str) -> Result<(), ExtractError> {
        let mut p = PathBuf::new();
        let parts: Vec<_> = rel.components().collect();
        for c in &parts[..parts.len().saturating_sub(1)] {
            p.push(c);
            match self.tree.nodes.get(&p) {
                Some(Node::Dir) => {}
                Some(_) => return Err(ExtractError::UnsafePath(shown.to_string())),
                None => {
                    let d = self.root.join(&p);
                    fs::create_dir(&d).map_err(io_err(&d))?;
                    fs::set_permissions(&d, fs::Permissions::from_mode(0o755))
                        .map_err(io_err(&d))?;
                    self.tree.nodes.insert(p.clone(), Node::Dir);
                }
            }
        }
        Ok(())
    }

    /// Entry data read: over the size bound ends the extraction.
    fn count(&mut self, n: u64) -> Result<(), ExtractError> {
        self.data_bytes += n;
        if self.data_bytes > self.limits.max_bytes {
            return Err(ExtractError::TooLarge(self.limits.max_bytes));
        }
        Ok(())
    }

    /// Only a directory may meet a directory entry of the same name; any other entry must be
    /// the first at its path.
    fn refuse_existing(&self, rel: &Path, shown: &str) -> Result<(), ExtractError> {
        if self.tree.nodes.contains_key(rel) {
            return Err(ExtractError::Duplicate(shown.to_string()));
        }
        Ok(())
    }

    /// A directory: made unless the archive made it already, with owner access whatever the
    /// archive says.
    fn dir(
        &mut self,
        rel: PathBuf,
        dest: &Path,
        mode: u32,
        shown: &str,
    ) -> Result<(), ExtractError> {
        match self.tree.nodes.get(&rel) {
            Some(Node::Dir) => {}
            Some(_) => return Err(ExtractError::Duplicate(shown.to_string())),
            None => {
                fs::create_dir(dest).map_err(io_err(dest))?;
                self.tree.nodes.insert(rel, Node::Dir);
            }
        }
        fs::set_permissions(dest, fs::Permissions::from_mode(mode | 0o700)).map_err(io_err(dest))
    }

    /// A regular file: created new (never through a link), its data copied within the size
    /// bound, its mode set on the open file.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        rel: PathBuf,
        dest: &Path,
        mode: u32,
        shown: &str,
    ) -> Result<(), ExtractError> {
        self.refuse_existing(&rel, shown)?;
        if self.data_bytes.saturating_add(entry.size()) > self.limits.max_bytes {
            return Err(ExtractError::TooLarge(self.limits.max_bytes));
        }
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(dest)
            .map_err(io_err(dest))?;
        self.tree.nodes.insert(rel, Node::File);
        let mut written = 0u64;
        loop {
            let n = entry
                .read(&mut self.buf)
                .map_err(|e| self.meter.explain(e))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            self.count(n as u64)?;
            f.write_all(&self.buf[..n]).map_err(io_err(dest))?;
        }
        // fchmod: the umask never decides a mode.
        f.set_permissions(fs::Permissions::from_mode(mode | 0o600))
            .map_err(io_err(dest))?;
        self.done.files += 1;
        self.done.bytes += written;
        Ok(())
    }

    /// A symlink: recorded now, judged and made once the whole tree is known.
    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<R>,
        rel: PathBuf,
        shown: String,
    ) -> Result<(), ExtractError> {
        self.refuse_existing(&rel, &shown)?;
        let target = link_target(entry, "symlink", &shown)?;
        self.tree
            .nodes
            .insert(rel.clone(), Node::Link(target.clone()));
        self.links.push(PendingLink { rel, target, shown });
        Ok(())
    }

    /// A hard link: only to a regular file this archive made, reached through its own
    /// directories.
    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<R>,
        rel: PathBuf,
        dest: &Path,
        shown: &str,
    ) -> Result<(), ExtractError> {
        self.refuse_existing(&rel, shown)?;
        let target = link_target(entry, "hard link", shown)?;
        let target_rel = self
            .tree
            .own_file(&target)
            .ok_or_else(|| ExtractError::UnsafeLink(shown.to_string()))?;
        let src = self.root.join(&target_rel);
        fs::hard_link(&src, dest).map_err(io_err(dest))?;
        self.tree.nodes.insert(rel, Node::File);
        Ok(())
    }

    /// The whole tree is known: each link is judged against it, then all are made.
    fn make_links(self) -> Result<Extracted, ExtractError> {
        for l in &self.links {
            if self.tree.resolve(&l.rel, &l.target).is_none() {
                return Err(ExtractError::UnsafeLink(l.shown.clone()));
            }
        }
        for l in &self.links {
            let dest = self.root.join(&l.rel);
            std::os::unix::fs::symlink(&l.target, &dest).map_err(io_err(&dest))?;
        }
        Ok(self.done)
    }
}

fn drain<R: Read>(entry: &mut R, buf: &mut [u8], meter: &Meter) -> Result<u64, ExtractError> {
    let mut n = 0u64;
    loop {
        match entry.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k as u64,
            Err(e) => return Err(meter.explain(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tree::MAX_LINK_DEPTH;
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
        let got = untar_gz(&data[..], d.path(), Limits::total(1 << 20)).unwrap();
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
            assert!(
                untar_gz(&data[..], &root, Limits::total(1 << 20)).is_err(),
                "{name}"
            );
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
            untar_gz(&data[..], d.path(), Limits::total(5_000)),
            Err(ExtractError::TooLarge(_))
        ));
        let d = tempfile::tempdir().unwrap();
        assert!(untar_gz(&data[..data.len() - 10], d.path(), Limits::total(1 << 20)).is_err());
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
        assert!(untar_gz(&data[..], &root, Limits::total(1 << 20)).is_err());
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o777
        );
    }

    #[test]
    fn a_link_made_before_the_link_it_passes_through_is_refused() {
        // x -> r/.. looks like the root on paper; r -> . arrives later and makes it the parent.
        let data = tar_gz(|b| {
            link(b, tar::EntryType::Symlink, "x", "r/..");
            link(b, tar::EntryType::Symlink, "r", ".");
        });
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let err = untar_gz(&data[..], &root, Limits::total(1 << 20)).unwrap_err();
        assert!(
            matches!(err, ExtractError::UnsafeLink(ref l) if l == "x"),
            "{err}"
        );
        assert!(fs::symlink_metadata(root.join("x")).is_err());
    }

    #[test]
    fn links_resolve_through_the_final_tree() {
        let data = tar_gz(|b| {
            file(b, "d/sub/f", b"x");
            link(b, tar::EntryType::Symlink, "d/up", "sub/..");
            link(b, tar::EntryType::Symlink, "d/sub/s", "../up/sub/f");
            link(b, tar::EntryType::Symlink, "top", "d/sub/s");
        });
        let d = tempfile::tempdir().unwrap();
        untar_gz(&data[..], d.path(), Limits::total(1 << 20)).unwrap();
        assert_eq!(fs::read(d.path().join("top")).unwrap(), b"x");
    }

    #[test]
    fn link_chains_resolve_up_to_the_depth_bound_and_loops_are_refused() {
        // l0 -> l1 -> ... -> l{n-1} -> f: the first link's resolution walks n links.
        let chain = |n: usize| {
            tar_gz(|b| {
                file(b, "f", b"end");
                for i in 0..n {
                    let next = if i + 1 == n {
                        "f".to_string()
                    } else {
                        format!("l{}", i + 1)
                    };
                    link(b, tar::EntryType::Symlink, &format!("l{i}"), &next);
                }
            })
        };
        let depth = MAX_LINK_DEPTH as usize;
        let d = tempfile::tempdir().unwrap();
        untar_gz(&chain(depth)[..], d.path(), Limits::total(1 << 20)).unwrap();
        assert_eq!(fs::read(d.path().join("l0")).unwrap(), b"end");
        let d = tempfile::tempdir().unwrap();
        let err = untar_gz(&chain(depth + 1)[..], d.path(), Limits::total(1 << 20)).unwrap_err();
        assert!(
            matches!(err, ExtractError::UnsafeLink(ref l) if l == "l0"),
            "{err}"
        );
        // a -> b -> a never ends on paper: refused, not followed for ever.
        let looped = tar_gz(|b| {
            link(b, tar::EntryType::Symlink, "a", "b");
            link(b, tar::EntryType::Symlink, "b", "a");
        });
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar_gz(&looped[..], d.path(), Limits::total(1 << 20)),
            Err(ExtractError::UnsafeLink(_))
        ));
    }

    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &str,
        mode: u32,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn directory_entries_are_made_with_owner_access_and_the_root_entry_is_skipped() {
        let data = tar_gz(|b| {
            entry(b, tar::EntryType::Directory, "./", 0o755, b"");
            entry(b, tar::EntryType::Directory, "d", 0o555, b"");
            entry(b, tar::EntryType::Directory, "e", 0o7777, b"");
            file(b, "d2/f", b"x");
        });
        let d = tempfile::tempdir().unwrap();
        untar_gz(&data[..], d.path(), Limits::total(1 << 20)).unwrap();
        let mode = |p: &str| fs::metadata(d.path().join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("d"), 0o755);
        assert_eq!(mode("e"), 0o755);
        // A `./` that is not a directory, and a directory that climbs out, are refused.
        for (kind, path) in [
            (tar::EntryType::Regular, "./"),
            (tar::EntryType::Directory, "../up"),
            (tar::EntryType::Directory, "/abs"),
        ] {
            let bad = tar_gz(|b| entry(b, kind, path, 0o755, b""));
            let d = tempfile::tempdir().unwrap();
            assert!(
                matches!(
                    untar_gz(&bad[..], d.path(), Limits::total(1 << 20)),
                    Err(ExtractError::UnsafePath(_))
                ),
                "{kind:?} {path}"
            );
        }
    }

    #[test]
    fn the_size_bound_counts_every_entry_and_data_a_non_file_claims() {
        let two = tar_gz(|b| {
            file(b, "a", &[1u8; 600]);
            file(b, "b", &[2u8; 400]);
        });
        // Exactly the bound is allowed; one byte less is not.
        let d = tempfile::tempdir().unwrap();
        let got = untar_gz(&two[..], d.path(), Limits::total(1000)).unwrap();
        assert_eq!((got.files, got.bytes), (2, 1000));
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar_gz(&two[..], d.path(), Limits::total(999)),
            Err(ExtractError::TooLarge(999))
        ));
        // A directory entry that carries data: read past, and counted against the bound.
        let heavy = tar_gz(|b| entry(b, tar::EntryType::Directory, "d", 0o755, &[0u8; 2000]));
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar_gz(&heavy[..], d.path(), Limits::total(1000)),
            Err(ExtractError::TooLarge(1000))
        ));
        let d = tempfile::tempdir().unwrap();
        untar_gz(&heavy[..], d.path(), Limits::total(2000)).unwrap();
    }

    #[test]
    fn a_global_pax_header_is_read_past_up_to_its_bound() {
        let with_global = |size: usize| {
            tar_gz(|b| {
                let record = format!("comment={}\n", "c".repeat(size));
                let record = format!(
                    "{} {record}",
                    record.len() + 1 + (record.len() + 1).to_string().len()
                );
                entry(
                    b,
                    tar::EntryType::XGlobalHeader,
                    "pax_global_header",
                    0o644,
                    record.as_bytes(),
                );
                file(b, "f", b"x");
            })
        };
        let d = tempfile::tempdir().unwrap();
        untar_gz(&with_global(100)[..], d.path(), Limits::total(1 << 30)).unwrap();
        assert_eq!(fs::read(d.path().join("f")).unwrap(), b"x");
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar_gz(
                &with_global(MAX_HEADER as usize + 10)[..],
                d.path(),
                Limits::total(1 << 30)
            ),
            Err(ExtractError::HeaderTooLarge)
        ));
    }

    #[test]
    fn modes_are_explicit_and_never_setuid() {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o4777);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path("suid").unwrap();
        h.set_cksum();
        let data = tar_gz(|b| {
            b.append(&h, &b"x"[..]).unwrap();
            file(b, "plain", b"x");
        });
        let d = tempfile::tempdir().unwrap();
        untar_gz(&data[..], d.path(), Limits::total(1 << 20)).unwrap();
        let mode = |p: &str| fs::metadata(d.path().join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("suid"), 0o755);
        assert_eq!(mode("plain"), 0o755);
    }

    #[test]
    fn inflation_is_bounded_before_verification() {
        let data = tar_gz(|b| file(b, "zeros", &vec![0u8; 8 << 20]));
        let d = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 30,
            inflation: Some(UNVERIFIED_INFLATION),
        };
        let err = untar_gz(&data[..], d.path(), limits).unwrap_err();
        let ExtractError::InflationBound {
            inflated,
            compressed,
        } = err
        else {
            panic!("{err}");
        };
        assert!(
            inflated <= 4 * compressed + (1 << 20) + 256 * 1024,
            "{inflated} {compressed}"
        );
        let on_disk = fs::metadata(d.path().join("zeros")).unwrap().len();
        assert!(on_disk <= 4 * data.len() as u64 + (1 << 20), "{on_disk}");
    }

    #[test]
    fn a_huge_long_name_is_refused_without_reading_it_into_memory() {
        let mut raw = Vec::new();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(4 << 20);
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.resize(raw.len() + (4 << 20), b'a');
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let data = gz.finish().unwrap();
        let d = tempfile::tempdir().unwrap();
        let err = untar_gz(&data[..], d.path(), Limits::total(1 << 40)).unwrap_err();
        assert!(matches!(err, ExtractError::HeaderTooLarge), "{err}");
    }
}
