//! The stages the engine runs, each one effect on the host: install (prerequisites,
//! fetch, install, post-install, activate, repair, remove, pins), configure and verify.

pub mod configure;
pub mod install;
pub mod verify;
