//! `diagnose --out FILE`: the support bundle (being built).

use crate::host::Root;
use std::path::Path;

pub fn run(_root: &Root, out: &Path) -> i32 {
    eprintln!(
        "ibdriver: diagnose is not available yet ({})",
        out.display()
    );
    crate::error::Code::Internal.exit_code()
}
