//! The tree an archive builds, recorded entry by entry, and what is judged on paper against it:
//! whether an archive path is a safe relative one, where a symlink ends up through the other
//! recorded links, whether a hard link names a file of the archive's own. Pure: the disk is
//! never consulted.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// How deep a chain of symlinks may go (the kernel's own limit).
pub(super) const MAX_LINK_DEPTH: u32 = 40;

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

/// What the archive put at a path.
#[derive(Debug, Clone)]
pub(super) enum Node {
    Dir,
    File,
    Link(PathBuf),
}

/// The tree an archive builds, as recorded entry by entry.
#[derive(Default)]
pub(super) struct Tree {
    pub(super) nodes: HashMap<PathBuf, Node>,
}

impl Tree {
    /// Where a symlink at `link` with `target` ends up, as components below the root; `None`
    /// when any step of it (through other recorded links) climbs above the root, is absolute
    /// or loops. Names the archive did not create count as plain directories.
    pub(super) fn resolve(&self, link: &Path, target: &Path) -> Option<Vec<OsString>> {
        let start: Vec<OsString> = link
            .parent()
            .map(|p| p.iter().map(|c| c.to_os_string()).collect())
            .unwrap_or_default();
        let mut depth = 0;
        self.walk(start, target, &mut depth)
    }

    /// [`Tree::resolve`] on from `at`, each recorded link on the way followed, at most
    /// [`MAX_LINK_DEPTH`] deep.
    fn walk(&self, mut at: Vec<OsString>, target: &Path, depth: &mut u32) -> Option<Vec<OsString>> {
        *depth += 1;
        if *depth > MAX_LINK_DEPTH {
            return None;
        }
        for c in target.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    at.pop()?;
                }
                Component::Normal(n) => {
                    at.push(n.to_os_string());
                    let here: PathBuf = at.iter().collect();
                    if let Some(Node::Link(t)) = self.nodes.get(&here) {
                        at.pop();
                        at = self.walk(at, t, depth)?;
                    }
                }
                Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        Some(at)
    }

    /// The hard-link target `target` as a path below the root, when it names a regular file
    /// of this archive and every directory on the way to it is the archive's own, never
    /// reached through a link.
    pub(super) fn own_file(&self, target: &Path) -> Option<PathBuf> {
        let target_rel = safe_relative(target)?;
        let mut p = PathBuf::new();
        let parts: Vec<_> = target_rel.components().collect();
        for c in &parts[..parts.len() - 1] {
            p.push(c);
            if !matches!(self.nodes.get(&p), Some(Node::Dir)) {
                return None;
            }
        }
        matches!(self.nodes.get(&target_rel), Some(Node::File)).then_some(target_rel)
    }
}
