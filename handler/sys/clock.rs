//! Time: deadlines that bound a whole operation, UTC timestamps in the ISO-8601 form the agent
//! writes (`2024-01-01T00:00:00Z`), and `poll_until`, the one bounded wait loop, over a `Clock`
//! a test can replace.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point in time that bounds a whole operation; each step takes a budget from it.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(d: Duration) -> Self {
        Deadline(Instant::now() + d)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// At most `max`, never past the deadline, and never so short that a step cannot start.
    pub fn budget(&self, max: Duration) -> Duration {
        max.min(self.remaining()).max(Duration::from_millis(200))
    }
}

pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Format seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's civil-from-days algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What time it is and how to wait: the system's in production; a test passes its own, so a
/// wait is as long as the test says and never depends on how loaded the machine is.
pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// One look of [`poll_until`].
pub enum Look<T> {
    /// Waiting is over (what was waited for came, or there is no point waiting longer).
    Done(T),
    /// Not yet; this is what a look found, returned if time runs out.
    NotYet(T),
}

impl Look<()> {
    /// Done when `cond` holds: a wait for a condition rather than for a value.
    pub fn when(cond: bool) -> Look<()> {
        if cond {
            Look::Done(())
        } else {
            Look::NotYet(())
        }
    }
}

/// Look at once, then every `tick`, until a look is [`Look::Done`] or `timeout` has passed;
/// the last pause is cut to what is left, and there is always a look at the end. Returns the
/// last look's value and whether it was `Done`. The one wait loop of the handler: every
/// bounded wait (locks, the worker, ports, interfaces, addresses, an installer) goes through it.
pub fn poll_until<T>(
    clock: &dyn Clock,
    timeout: Duration,
    tick: Duration,
    mut look: impl FnMut() -> Look<T>,
) -> (T, bool) {
    let deadline = clock.now() + timeout;
    loop {
        let value = match look() {
            Look::Done(v) => return (v, true),
            Look::NotYet(v) => v,
        };
        let now = clock.now();
        if now >= deadline {
            return (value, false);
        }
        clock.sleep(tick.min(deadline - now));
    }
}

/// [`poll_until`] for work that can be called off: it also ends, with the last look's value,
/// as soon as a look is not done and `keep_going` says the work is no longer wanted (a disable
/// or a newer sequence number).
pub fn poll_while_wanted<T>(
    clock: &dyn Clock,
    timeout: Duration,
    tick: Duration,
    keep_going: &dyn Fn() -> bool,
    mut look: impl FnMut() -> Look<T>,
) -> T {
    poll_until(clock, timeout, tick, || match look() {
        Look::NotYet(v) if !keep_going() => Look::Done(v),
        done_or_waiting => done_or_waiting,
    })
    .0
}

/// [`poll_until`] on the real clock.
pub fn poll<T>(timeout: Duration, tick: Duration, look: impl FnMut() -> Look<T>) -> (T, bool) {
    poll_until(&SystemClock, timeout, tick, look)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_704_067_199), "2023-12-31T23:59:59Z");
        assert_eq!(rfc3339(1_795_305_600), "2026-11-22T00:00:00Z");
    }
}

/// The tests' clock: its sleeps move it forward and nothing else does, so a wait is as long as
/// the test says, however loaded the machine.
#[cfg(test)]
pub(crate) mod fake {
    use super::Clock;
    use std::cell::{Cell, RefCell};
    use std::time::{Duration, Instant};

    pub(crate) struct FakeClock {
        pub(crate) now: Cell<Instant>,
        /// Every pause asked for, in order.
        pub(crate) slept: RefCell<Vec<Duration>>,
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.now.get()
        }
        fn sleep(&self, d: Duration) {
            self.slept.borrow_mut().push(d);
            self.now.set(self.now.get() + d);
        }
    }

    pub(crate) fn fake() -> FakeClock {
        FakeClock {
            now: Cell::new(Instant::now()),
            slept: RefCell::new(Vec::new()),
        }
    }
}

#[cfg(test)]
mod poll_tests {
    use super::fake::fake;
    use super::*;
    use std::cell::Cell;

    #[test]
    fn the_system_clock_really_waits() {
        let before = Instant::now();
        SystemClock.sleep(Duration::from_millis(20));
        assert!(before.elapsed() >= Duration::from_millis(20));
        assert!(SystemClock.now() >= before + Duration::from_millis(20));
    }

    #[test]
    fn it_looks_at_once_then_every_tick_and_the_last_pause_is_what_is_left() {
        let c = fake();
        let looks = Cell::new(0);
        let (v, done) = poll_until(
            &c,
            Duration::from_millis(250),
            Duration::from_millis(100),
            || {
                looks.set(looks.get() + 1);
                Look::NotYet(looks.get())
            },
        );
        assert!(!done);
        assert_eq!(v, 4);
        assert_eq!(*c.slept.borrow(), [100, 100, 50].map(Duration::from_millis));
    }

    #[test]
    fn a_done_look_ends_the_wait_with_its_value() {
        let c = fake();
        let looks = Cell::new(0);
        let (v, done) = poll_until(&c, Duration::from_secs(60), Duration::from_secs(1), || {
            looks.set(looks.get() + 1);
            if looks.get() == 3 {
                Look::Done("ready")
            } else {
                Look::NotYet("waiting")
            }
        });
        assert_eq!((v, done), ("ready", true));
        assert_eq!(c.slept.borrow().len(), 2);
        // No time at all: one look, no sleep.
        let c = fake();
        let (v, done) = poll_until(&c, Duration::ZERO, Duration::from_secs(1), || {
            Look::NotYet(7)
        });
        assert_eq!((v, done), (7, false));
        assert!(c.slept.borrow().is_empty());
    }

    #[test]
    fn a_wait_for_unwanted_work_ends_at_once_and_a_wanted_one_runs_its_course() {
        // (done at the first look, still wanted, value, seconds paused): a done look or
        // unwanted work ends at once; wanted work not done waits the whole 3 s.
        for (done, wanted, paused) in [(true, false, 0), (false, false, 0), (false, true, 3)] {
            let c = fake();
            let v = poll_while_wanted(
                &c,
                Duration::from_secs(3),
                Duration::from_secs(1),
                &|| wanted,
                || {
                    if done {
                        Look::Done(1)
                    } else {
                        Look::NotYet(2)
                    }
                },
            );
            assert_eq!(v, if done { 1 } else { 2 });
            let total: Duration = c.slept.borrow().iter().sum();
            assert_eq!(
                total,
                Duration::from_secs(paused),
                "done {done}, wanted {wanted}"
            );
        }
    }
}
