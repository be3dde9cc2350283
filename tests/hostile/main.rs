//! Hostile input: archives and servers built to break the handler. Each case asserts the
//! exact outcome; every bound that ends a case is the code's own.

#[path = "../common/mod.rs"]
mod common;

mod archives;
mod servers;
