//! Hostile input, faults and races: each case asserts the exact outcome.

#[path = "../common/mod.rs"]
mod common;

mod agent_env;
mod permissions;
