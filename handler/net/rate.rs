//! The time bounds of one fetch: an overall deadline, a minimum rate over every window, and
//! the stop callback, checked while the download waits on the network and between attempts.

use crate::sys::clock::{Clock as Time, SystemClock};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Time bounds of one fetch. A download ends with [`Bound::Deadline`] once `deadline` has
/// passed since it started, and with [`Bound::TooSlow`] when, once the first bytes
/// arrived, any `window` of it (retry pauses included) brought fewer than `min_rate * window`
/// bytes: a trickle, or a server that resets after every few bytes, cannot hold the worker
/// for hours.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub deadline: Duration,
    pub min_rate: u64,
    pub window: Duration,
}

impl Default for Limits {
    /// Two hours in all, and at least 32 KiB/s over every minute.
    fn default() -> Self {
        Limits {
            deadline: Duration::from_secs(2 * 3600),
            min_rate: 32 * 1024,
            window: Duration::from_secs(60),
        }
    }
}

/// Which bound ended a fetch, with the figures its message gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// The stop callback said no (a newer sequence number, or disable).
    Stopped,
    Deadline {
        received: u64,
        limit_s: u64,
    },
    TooSlow {
        received: u64,
        elapsed_s: u64,
        window_bytes: u64,
        window_s: u64,
        min_rate: u64,
    },
}

/// The deadline and minimum-progress rule across all attempts of one fetch, on `time` (the
/// system's; a test's own, so that its windows do not depend on the machine's load).
pub(super) struct Clock<'t> {
    time: &'t dyn Time,
    limits: Limits,
    start: Instant,
    window_start: Cell<Instant>,
    window_bytes: Cell<u64>,
    received: Cell<u64>,
    in_attempt: Cell<bool>,
}

impl Clock<'static> {
    pub(super) fn new(limits: Limits) -> Clock<'static> {
        Clock::on(&SystemClock, limits)
    }
}

impl<'t> Clock<'t> {
    pub(super) fn on(time: &'t dyn Time, limits: Limits) -> Clock<'t> {
        let now = time.now();
        Clock {
            time,
            limits,
            start: now,
            window_start: Cell::new(now),
            window_bytes: Cell::new(0),
            received: Cell::new(0),
            in_attempt: Cell::new(false),
        }
    }

    /// A request starts. Until the first byte of the fetch, the window starts with it, so the
    /// pauses before it are not judged.
    pub(super) fn begin_attempt(&self) {
        if self.received.get() == 0 {
            self.window_start.set(self.time.now());
            self.window_bytes.set(0);
        }
        self.in_attempt.set(true);
    }

    pub(super) fn end_attempt(&self) {
        self.in_attempt.set(false);
    }

    pub(super) fn got(&self, n: u64) {
        self.window_bytes.set(self.window_bytes.get() + n);
        self.received.set(self.received.get() + n);
    }

    pub(super) fn remaining(&self) -> Duration {
        self.limits.deadline.saturating_sub(self.since(self.start))
    }

    pub(super) fn check(&self, keep_going: &dyn Fn() -> bool) -> Result<(), Bound> {
        if !keep_going() {
            return Err(Bound::Stopped);
        }
        if self.since(self.start) >= self.limits.deadline {
            return Err(Bound::Deadline {
                received: self.received.get(),
                limit_s: self.limits.deadline.as_secs(),
            });
        }
        // Before the first byte, only time spent waiting on a server counts: a refused
        // connection or a burst of 503s between attempts is the retry policy's to end (with
        // the real cause in the message, not "too slow"), while a server that accepts and
        // then says nothing is still too slow after one window.
        if self.received.get() == 0 && !self.in_attempt.get() {
            return Ok(());
        }
        let w = self.since(self.window_start.get());
        if w >= self.limits.window {
            let needed = (self.limits.min_rate as f64 * w.as_secs_f64()) as u64;
            if self.window_bytes.get() < needed {
                return Err(Bound::TooSlow {
                    received: self.received.get(),
                    elapsed_s: self.since(self.start).as_secs(),
                    window_bytes: self.window_bytes.get(),
                    window_s: w.as_secs(),
                    min_rate: self.limits.min_rate,
                });
            }
            self.window_start.set(self.time.now());
            self.window_bytes.set(0);
        }
        Ok(())
    }

    fn since(&self, then: Instant) -> Duration {
        self.time.now().saturating_duration_since(then)
    }

    /// The pause before a retry, in slices, so a stop or the deadline is seen.
    pub(super) fn pause(
        &self,
        d: Duration,
        keep_going: &dyn Fn() -> bool,
        sleep: &dyn Fn(Duration),
    ) -> Result<(), Bound> {
        let mut left = d.min(self.remaining());
        loop {
            self.check(keep_going)?;
            if left.is_zero() {
                return Ok(());
            }
            let slice = left.min(POLL);
            sleep(slice);
            left -= slice;
        }
    }
}

/// How often a waiting download looks at the stop callback and its bounds.
pub(super) const POLL: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::clock::fake::fake;

    #[test]
    fn a_server_that_says_nothing_in_an_attempt_is_too_slow_after_one_window() {
        let time = fake();
        let clock = Clock::on(
            &time,
            Limits {
                deadline: Duration::from_secs(600),
                min_rate: 1000,
                window: Duration::from_secs(60),
            },
        );
        // Between attempts, before any byte, the wait is the retry policy's.
        time.sleep(Duration::from_secs(90));
        assert_eq!(clock.check(&|| true), Ok(()));
        // An attempt starts the window afresh: the pause before it is not judged.
        clock.begin_attempt();
        assert_eq!(clock.check(&|| true), Ok(()));
        time.sleep(Duration::from_secs(59));
        assert_eq!(clock.check(&|| true), Ok(()));
        time.sleep(Duration::from_secs(1));
        assert!(matches!(
            clock.check(&|| true),
            Err(Bound::TooSlow { received: 0, .. })
        ));
    }

    #[test]
    fn the_rate_is_bytes_over_the_window_times_the_minimum() {
        // Against 100 B/s over a 10 s window: 1000 bytes in 10 s is enough, 999 is not.
        for (bytes, ok) in [(1000, true), (999, false)] {
            let time = fake();
            let limits = Limits {
                deadline: Duration::from_secs(600),
                min_rate: 100,
                window: Duration::from_secs(10),
            };
            let clock = Clock::on(&time, limits);
            clock.begin_attempt();
            clock.got(bytes);
            time.sleep(Duration::from_secs(10));
            assert_eq!(clock.check(&|| true).is_ok(), ok, "{bytes} bytes");
        }
    }
    #[test]
    fn a_window_below_the_rate_names_its_figures() {
        let time = fake();
        let clock = Clock::on(
            &time,
            Limits {
                deadline: Duration::from_secs(60),
                min_rate: 1000,
                window: Duration::ZERO,
            },
        );
        clock.got(10);
        time.sleep(Duration::from_secs(2));
        let e = clock.check(&|| true).unwrap_err();
        assert!(
            matches!(
                e,
                Bound::TooSlow {
                    received: 10,
                    window_bytes: 10,
                    min_rate: 1000,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn pauses_are_sliced_so_a_stop_is_seen() {
        let clock = Clock::new(Limits::default());
        let slept = Cell::new(0u32);
        let sleep = |_: Duration| slept.set(slept.get() + 1);
        let keep = || slept.get() < 3;
        let e = clock
            .pause(Duration::from_secs(30), &keep, &sleep)
            .unwrap_err();
        assert_eq!(e, Bound::Stopped);
        assert_eq!(slept.get(), 3);
    }
}
