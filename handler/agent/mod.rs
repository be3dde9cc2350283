//! The agent's side of the contract: where it put things (environment), what it asked
//! (settings, protected settings) and what we tell it back (status, heartbeat, events).

pub mod environment;
pub mod events;
pub mod heartbeat;
pub mod invocation;
pub mod protected;
pub mod settings;
pub mod status;
