//! Hostile input: every case names the exact outcome, and nothing panics, hangs or leaks.

#[path = "../common/mod.rs"]
mod common;

mod argv;
mod settings;
