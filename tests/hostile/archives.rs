//! Hostile archives: traversal, absolute paths, link chains and loops, hard links to links,
//! devices and fifos, huge headers, truncated or fake gzip, bombs, long and non-UTF-8 names,
//! duplicates and entries over one another. Each case is unpacked twice: by the extractor
//! into a root inside a sentinel directory (nothing outside the root may change), and through
//! the whole fetch pipeline from a loopback server (the exact error, code 230, and nothing
//! left staged or in place).

use crate::servers::{ok, sha, Scripted};
use ibdriver::error::Code;
use ibdriver::net::extract::{untar_gz, ExtractError, Limits, UNVERIFIED_INFLATION};
use ibdriver::net::fetch::{self, FetchError};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// One raw tar header block (GNU format) with names written byte for byte.
fn header(kind: u8, name: &[u8], size: u64, link: &[u8], mode: u32) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mtime(0);
    let old = h.as_old_mut();
    old.name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    old.linkname[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h.set_cksum();
    *h.as_bytes()
}

/// Builds a tar stream entry by entry.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn raw(mut self, kind: u8, name: &[u8], data: &[u8], link: &[u8], mode: u32) -> Tar {
        self.0
            .extend_from_slice(&header(kind, name, data.len() as u64, link, mode));
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Tar {
        self.raw(b'0', name.as_bytes(), data, b"", 0o644)
    }
    fn dir(self, name: &str) -> Tar {
        self.raw(b'5', name.as_bytes(), b"", b"", 0o755)
    }
    fn sym(self, name: &str, target: &str) -> Tar {
        self.raw(b'2', name.as_bytes(), b"", target.as_bytes(), 0o777)
    }
    fn hard(self, name: &str, target: &str) -> Tar {
        self.raw(b'1', name.as_bytes(), b"", target.as_bytes(), 0o644)
    }
    /// A GNU long-name record for the next entry.
    fn long_name(self, name: &[u8]) -> Tar {
        let mut data = name.to_vec();
        data.push(0);
        self.raw(b'L', b"././@LongLink", &data, b"", 0o644)
    }
    /// A pax record `key=value` for the next entry (`x`) or for all (`g`).
    fn pax(self, kind: u8, key: &str, value: &[u8]) -> Tar {
        let body_len = key.len() + value.len() + 3; // " " "=" "\n"
        let mut len = body_len + 1;
        while format!("{len}").len() + body_len != len {
            len += 1;
        }
        let mut rec = format!("{len} {key}=").into_bytes();
        rec.extend_from_slice(value);
        rec.push(b'\n');
        self.raw(kind, b"pax", &rec, b"", 0o644)
    }
    fn tar(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
    fn gz(self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A tar of one file of zeros, `size` long, without holding it in memory twice.
fn zeros(size: u64) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&header(b'0', b"zeros", size, b"", 0o644))
        .unwrap();
    let block = vec![0u8; 1 << 20];
    let mut left = size + 1024 + (512 - size % 512) % 512;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        gz.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    gz.finish().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// Unpacked: this many regular files.
    Files(u64),
    UnsafePath,
    UnsafeLink,
    Unsupported,
    Duplicate,
    TooLarge,
    Header,
    Inflation,
    Corrupt,
    Io,
}

fn kind(e: &ExtractError) -> Want {
    match e {
        ExtractError::UnsafePath(_) => Want::UnsafePath,
        ExtractError::UnsafeLink(_) => Want::UnsafeLink,
        ExtractError::UnsupportedType(_) => Want::Unsupported,
        ExtractError::Duplicate(_) => Want::Duplicate,
        ExtractError::TooLarge(_) => Want::TooLarge,
        ExtractError::HeaderTooLarge => Want::Header,
        ExtractError::InflationBound { .. } => Want::Inflation,
        ExtractError::Corrupt(_) => Want::Corrupt,
        ExtractError::Io { .. } => Want::Io,
    }
}

struct Case {
    name: &'static str,
    gz: Vec<u8>,
    want: Want,
    limits: Limits,
}

const ROOMY: Limits = Limits {
    max_bytes: 1 << 30,
    inflation: None,
};

fn case(name: &'static str, tar: Tar, want: Want) -> Case {
    Case {
        name,
        gz: tar.gz(),
        want,
        limits: ROOMY,
    }
}

fn cases() -> Vec<Case> {
    use Want::*;
    let t = Tar::default;
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(150));
    let mut v = vec![
        case("dotdot", t().file("../evil", b"x"), UnsafePath),
        case("nested dotdot", t().file("a/../../evil", b"x"), UnsafePath),
        case("dot then dotdot", t().file("./../evil", b"x"), UnsafePath),
        case("absolute path", t().file("/tmp/evil", b"x"), UnsafePath),
        case("dotdot directory", t().dir("../evil"), UnsafePath),
        case(
            "long name with dotdot",
            t().long_name(b"../../evil").file("x", b"x"),
            UnsafePath,
        ),
        case(
            "pax path with dotdot",
            t().pax(b'x', "path", b"../evil").file("x", b"x"),
            UnsafePath,
        ),
        case("absolute symlink", t().sym("l", "/etc"), UnsafeLink),
        case(
            "symlink up and out",
            t().sym("a/l", "../../etc"),
            UnsafeLink,
        ),
        case(
            "pax linkpath out",
            t().pax(b'x', "linkpath", b"../../x").sym("l", "ok"),
            UnsafeLink,
        ),
        case(
            "chain: link before the link it passes",
            t().sym("x", "r/..").sym("r", "."),
            UnsafeLink,
        ),
        case(
            "chain: link after the link it passes",
            t().sym("r", ".").sym("x", "r/r/../.."),
            UnsafeLink,
        ),
        case(
            "chain of three out",
            t().sym("a", "b").sym("b", "c").sym("c", ".."),
            UnsafeLink,
        ),
        case(
            "chain through a deep dir",
            t().dir("d/e").sym("d/e/up", "../..").sym("x", "d/e/up/.."),
            UnsafeLink,
        ),
        case("link loop", t().sym("a", "b").sym("b", "a"), UnsafeLink),
        case("self loop", t().sym("a", "a/x"), UnsafeLink),
        case(
            "dir through a link",
            t().dir("sub").sym("l", "sub").dir("l/x"),
            UnsafePath,
        ),
        case(
            "file through a link",
            t().sym("l", ".").file("l/f", b"x"),
            UnsafePath,
        ),
        case(
            "file through a dangling link",
            t().sym("l", "../out").file("l/f", b"x"),
            UnsafePath,
        ),
        case("dir over a link", t().sym("l", "x").dir("l"), Duplicate),
        case(
            "hard link to a symlink",
            t().file("f", b"x").sym("s", "f").hard("h", "s"),
            UnsafeLink,
        ),
        case("hard link out", t().hard("h", "../etc/passwd"), UnsafeLink),
        case(
            "hard link absolute",
            t().hard("h", "/etc/passwd"),
            UnsafeLink,
        ),
        case("hard link to nothing", t().hard("h", "missing"), UnsafeLink),
        case(
            "hard link through a symlinked dir",
            t().file("real/f", b"x").sym("d", "real").hard("h", "d/f"),
            UnsafeLink,
        ),
        case(
            "hard link to a directory",
            t().dir("d").hard("h", "d"),
            UnsafeLink,
        ),
        case(
            "character device",
            t().raw(b'3', b"tty", b"", b"", 0o666),
            Unsupported,
        ),
        case(
            "block device",
            t().raw(b'4', b"sda", b"", b"", 0o666),
            Unsupported,
        ),
        case("fifo", t().raw(b'6', b"pipe", b"", b"", 0o666), Unsupported),
        case(
            "malformed GNU sparse header",
            t().raw(b'S', b"sparse", b"", b"", 0o644),
            Corrupt,
        ),
        case(
            "duplicate file",
            t().file("f", b"1").file("f", b"2"),
            Duplicate,
        ),
        case("dir over a file", t().file("f", b"x").dir("f"), Duplicate),
        case("file over a dir", t().dir("d").file("d", b"x"), Duplicate),
        case(
            "file under a file",
            t().file("f", b"x").file("f/g", b"y"),
            UnsafePath,
        ),
        case(
            "symlink over a file",
            t().file("f", b"x").sym("f", "g"),
            Duplicate,
        ),
        case(
            "hard link over a file",
            t().file("f", b"x").file("g", b"y").hard("g", "f"),
            Duplicate,
        ),
        case(
            "name longer than the filesystem allows",
            t().long_name("n".repeat(300).as_bytes()).file("x", b"x"),
            Io,
        ),
        case(
            "long path, fine",
            t().long_name(long.as_bytes()).file("x", b"x"),
            Files(1),
        ),
        case(
            "non-UTF-8 name",
            t().raw(b'0', b"caf\xe9/\xff\xfe", b"x", b"", 0o644),
            Files(1),
        ),
        case("only the root entry", t().dir("./"), Files(0)),
        case("empty archive", t(), Files(0)),
        case(
            "links that stay inside",
            t().file("d/sub/f", b"x")
                .sym("d/up", "sub/..")
                .sym("top", "d/up/sub/f"),
            Files(1),
        ),
        // A hard link is another name, not another file.
        case(
            "hard link inside",
            t().file("a/f", b"x").hard("b", "a/f"),
            Files(1),
        ),
        case(
            "setuid and world-writable modes",
            t().raw(b'0', b"suid", b"x", b"", 0o6777)
                .raw(b'5', b"locked", b"", b"", 0o000)
                .file("locked/f", b"x"),
            Files(2),
        ),
        case(
            "directory claiming data",
            t().raw(b'5', b"d", &[1u8; 4096], b"", 0o755),
            Files(0),
        ),
    ];
    let header_bomb = Tar::default()
        .raw(b'L', b"././@LongLink", &vec![b'a'; 3 << 20], b"", 0o644)
        .file("x", b"x")
        .gz();
    v.push(Case {
        name: "huge GNU long name",
        gz: header_bomb,
        want: Header,
        limits: ROOMY,
    });
    v.push(Case {
        name: "huge pax record",
        gz: Tar::default()
            .pax(b'x', "comment", &vec![b'c'; 3 << 20])
            .file("x", b"x")
            .gz(),
        want: Header,
        limits: ROOMY,
    });
    v.push(Case {
        name: "huge global pax record",
        gz: Tar::default()
            .pax(b'g', "comment", &vec![b'c'; 3 << 20])
            .file("x", b"x")
            .gz(),
        want: Header,
        limits: ROOMY,
    });
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_path("sparse").unwrap();
    h.set_size(0);
    h.as_gnu_mut().unwrap().set_real_size(0);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(&[0u8; 1024]);
    v.push(Case {
        name: "GNU sparse file",
        gz: gzip(&raw),
        want: Unsupported,
        limits: ROOMY,
    });
    let good = Tar::default().file("a", &[5u8; 100_000]).gz();
    v.push(Case {
        name: "truncated gzip",
        gz: good[..good.len() / 2].to_vec(),
        want: Corrupt,
        limits: ROOMY,
    });
    v.push(Case {
        name: "gzip without its trailer",
        gz: good[..good.len() - 4].to_vec(),
        want: Corrupt,
        limits: ROOMY,
    });
    v.push(Case {
        name: "not gzip at all",
        gz: b"<html>403 Forbidden</html>".to_vec(),
        want: Corrupt,
        limits: ROOMY,
    });
    let mut bad_sum = Tar::default().file("a", b"x").tar();
    bad_sum[148] ^= 1;
    v.push(Case {
        name: "bad header checksum",
        gz: gzip(&bad_sum),
        want: Corrupt,
        limits: ROOMY,
    });
    v.push(Case {
        name: "bomb past the size bound",
        gz: zeros(8 << 20),
        want: TooLarge,
        limits: Limits {
            max_bytes: 2 << 20,
            inflation: None,
        },
    });
    v.push(Case {
        name: "bomb past the inflation bound",
        gz: zeros(8 << 20),
        want: Inflation,
        limits: Limits {
            max_bytes: 1 << 30,
            inflation: Some(UNVERIFIED_INFLATION),
        },
    });
    v
}

/// Everything under `p` (path, mode, size), to compare before and after.
fn snapshot(p: &Path) -> Vec<(String, u32, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            out.push((
                e.path().display().to_string(),
                m.permissions().mode(),
                m.len(),
            ));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_archives_stay_inside_and_fail_exactly() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let outer = tempfile::tempdir().unwrap();
        let victim = outer.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("keep"), b"keep").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o777)).unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let before = snapshot(&victim);
        let got = untar_gz(&c.gz[..], &root, c.limits);
        let names: Vec<_> = fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        if names.len() != 2 || snapshot(&victim) != before {
            failures.push(format!("{}: wrote outside the root: {names:?}", c.name));
        }
        // No link the extractor made points outside the root, whatever the outcome.
        for (path, _, _) in snapshot(&root) {
            if let Ok(real) = fs::canonicalize(&path) {
                if !real.starts_with(fs::canonicalize(&root).unwrap()) {
                    failures.push(format!("{}: {path} resolves to {}", c.name, real.display()));
                }
            }
        }
        match (c.want, &got) {
            (Want::Files(n), Ok(x)) if x.files == n => {}
            (want, Err(e)) if kind(e) == want => {}
            (want, got) => failures.push(format!("{}: wanted {want:?}, got {got:?}", c.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn modes_never_come_from_the_archive_or_the_umask_alone() {
    let c = cases()
        .into_iter()
        .find(|c| c.name.starts_with("setuid"))
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    untar_gz(&c.gz[..], root.path(), ROOMY).unwrap();
    let mode = |p: &str| {
        fs::metadata(root.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("locked"), 0o700);
    assert_eq!(mode("locked/f"), 0o644);
}

#[test]
fn hostile_archives_through_the_pipeline_leave_nothing() {
    // The archive is the one asked for (its checksum matches): what stops it is the extractor.
    let mut failures = Vec::new();
    for c in cases() {
        if c.limits.inflation.is_some() || c.limits.max_bytes != ROOMY.max_bytes {
            continue;
        }
        let body = c.gz.clone();
        let server = Scripted::start(move |_| ok(&body));
        let dir = tempfile::tempdir().unwrap();
        let req = fetch::Request {
            url: format!("{}/bundle.tgz", server.base),
            sha256: sha(&c.gz),
            size: Some(c.gz.len() as u64),
            extract: true,
        };
        let sleep = |d: Duration| std::thread::sleep(d);
        let opts = crate::servers::opts(&sleep, &|| true, ROOMY.max_bytes);
        let got = fetch::fetch(
            &req,
            &dir.path().join("staging"),
            &dir.path().join("out"),
            &opts,
        );
        let staged = fs::read_dir(dir.path().join("staging")).unwrap().count();
        match (c.want, got) {
            (Want::Files(n), Ok(out)) if out.files == n && staged == 0 => {}
            (Want::Files(_), got) => {
                failures.push(format!("{}: wanted success, got {got:?}", c.name))
            }
            (want, Err(e @ FetchError::Extract { .. })) => {
                let FetchError::Extract { err, .. } = &e else {
                    unreachable!()
                };
                if kind(err) != want || e.failure().code != Code::DownloadFailed {
                    failures.push(format!("{}: wanted {want:?}, got {e}", c.name));
                }
                if staged != 0 || dir.path().join("out").exists() {
                    failures.push(format!("{}: left {staged} staged entries", c.name));
                }
            }
            (want, got) => failures.push(format!("{}: wanted {want:?}, got {got:?}", c.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
