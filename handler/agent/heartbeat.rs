//! The heartbeat while a worker runs: refreshed every 30 s (the agent calls a handler
//! Unresponsive once its heartbeat is 600 s old) until the worker stops it.

use crate::agent::status::{self, HeartbeatState};
use crate::error::Code;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Refreshes the heartbeat every 30 s (the agent's limit is 600 s) until stopped.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    message: Arc<Mutex<String>>,
    handle: Option<thread::JoinHandle<()>>,
}

pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(30);

/// Logged when a beat finds the heartbeat no longer this worker's (a disable or a newer
/// sequence number wrote its own): the refresh ends there.
pub const YIELDED: &str =
    "heartbeat refresh ends: a disable or a newer sequence number owns the heartbeat now";

impl Heartbeat {
    /// Refresh `path` until stopped; each beat first asks `wanted`, so once a disable or a
    /// newer sequence number has written its own heartbeat, this worker's never lands on it.
    pub fn start(path: PathBuf, wanted: impl Fn() -> bool + Send + 'static) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let message = Arc::new(Mutex::new("enable in progress".to_string()));
        let (s, m) = (stop.clone(), message.clone());
        let handle = thread::spawn(move || {
            let tick = Duration::from_millis(250);
            let mut waited = HEARTBEAT_PERIOD;
            while !s.load(Ordering::Relaxed) {
                if waited >= HEARTBEAT_PERIOD {
                    if !wanted() {
                        tracing::info!("{YIELDED}");
                        break;
                    }
                    let msg = m.lock().map(|g| g.clone()).unwrap_or_default();
                    if let Err(f) =
                        status::write_heartbeat(&path, HeartbeatState::Ready, Code::Success, &msg)
                    {
                        tracing::warn!("{f}");
                    }
                    waited = Duration::ZERO;
                }
                thread::sleep(tick);
                waited += tick;
            }
        });
        Heartbeat {
            stop,
            message,
            handle: Some(handle),
        }
    }

    pub fn set_message(&self, msg: &str) {
        if let Ok(mut g) = self.message.lock() {
            *g = msg.to_string();
        }
    }

    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Heartbeat {
    /// Every way out of the worker stops the refresh before the final heartbeat is written.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
