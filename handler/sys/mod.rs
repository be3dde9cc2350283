//! The operating system under everything: processes, files, clocks, logging and the test
//! builds' fault points.

pub mod clock;
pub mod faultpoint;
pub mod fsutil;
pub mod logging;
pub mod proc;
pub mod runtime;
pub mod systemd;
