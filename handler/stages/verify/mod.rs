//! The verify stage: one health check of the host as it is ([`check`]), and the bounded wait
//! for the host to be healthy ([`wait_until_healthy`]). The judgement itself is pure
//! ([`evaluate()`]); here are its inputs: sysfs, the installed stack, the addresses `ip`
//! reports and what configure recorded.

mod evaluate;

pub use evaluate::{evaluate, required_modules, HcaReport, HealthReport, NetdevReport, PortReport};

use crate::error::{Code, Failure};
use crate::host::{self, Root};
use crate::sys::clock::{poll_until, Clock, Look};
use std::time::{Duration, Instant};

/// One health check: the report, then the heartbeat that carries it. What the configure stage
/// set up (`configure.json`) is checked too.
pub fn check(root: &Root) -> HealthReport {
    let sysfs = host::read_sysfs(root);
    let stack = host::stack::detect(root);
    let addresses = crate::host::ip::addresses();
    let report = evaluate(
        &sysfs.kernel,
        &sysfs.mellanox,
        &sysfs.modules,
        stack.as_ref(),
        &addresses,
    );
    let unmet = crate::stages::configure::unmet_now(root, &sysfs, move || addresses);
    report.with_unmet(unmet)
}

/// How [`wait_until_healthy`] waits.
#[derive(Debug, Clone, Copy)]
pub struct PortWait {
    /// The whole wait.
    pub timeout: Duration,
    /// From one health check to the next.
    pub every: Duration,
    /// How soon, between two checks, a newer sequence number or disable is noticed.
    pub slice: Duration,
}

/// Check the host until it is healthy, at most `wait.timeout`. Ends at once when waiting
/// cannot help: missing software will not fix itself, while a link may still come up and the
/// agent may still be assigning IPoIB addresses (ipoib waagent).
pub fn wait_until_healthy(
    clock: &dyn Clock,
    root: &Root,
    wait: PortWait,
    keep_going: &dyn Fn() -> bool,
) -> Result<HealthReport, Failure> {
    let deadline = clock.now() + wait.timeout;
    let pauses = UntilStopped {
        clock,
        keep_going,
        slice: wait.slice,
    };
    let (end, _) = poll_until(&pauses, wait.timeout, wait.every, || {
        // Asked first: a worker superseded while it paused must not report its sequence
        // number healthy because the ports came up meanwhile.
        if !keep_going() {
            return Look::Done(Err(Failure::new(
                Code::Superseded,
                "superseded by a newer sequence number or disable",
            )));
        }
        let report = check(root);
        if report.healthy {
            return Look::Done(Ok(report));
        }
        let failure = report.failure().expect("unhealthy report has a failure");
        let may_improve = matches!(report.code, Code::PortsNotActive | Code::IpoibNotConfigured);
        // The check at the deadline is the last: it ends the wait without announcing another.
        if !may_improve || clock.now() >= deadline {
            return Look::Done(Err(failure));
        }
        tracing::info!("waiting for ports: {}", report.summary);
        Look::NotYet(Err(failure))
    });
    end
}

/// A clock whose sleeps end early, within a slice, once the work should stop: the seconds
/// between two health checks never delay a newer sequence number or disable.
struct UntilStopped<'a> {
    clock: &'a dyn Clock,
    keep_going: &'a dyn Fn() -> bool,
    slice: Duration,
}

impl Clock for UntilStopped<'_> {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn sleep(&self, d: Duration) {
        poll_until(self.clock, d, self.slice, || {
            Look::when(!(self.keep_going)())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::clock::fake::fake;
    use std::cell::Cell;

    #[test]
    fn a_pause_between_checks_is_sliced_and_ends_at_a_stop() {
        let ms = Duration::from_millis;
        let c = fake();
        let always = || true;
        let pauses = UntilStopped {
            clock: &c,
            keep_going: &always,
            slice: ms(200),
        };
        pauses.sleep(ms(500));
        assert_eq!(*c.slept.borrow(), [ms(200), ms(200), ms(100)]);
        assert_eq!(pauses.now(), c.now());

        let c = fake();
        let asked = Cell::new(0);
        let until_the_third_ask = || {
            asked.set(asked.get() + 1);
            asked.get() < 3
        };
        let pauses = UntilStopped {
            clock: &c,
            keep_going: &until_the_third_ask,
            slice: ms(200),
        };
        pauses.sleep(Duration::from_secs(5));
        assert_eq!(*c.slept.borrow(), [ms(200), ms(200)]);
    }

    #[test]
    fn a_superseded_wait_never_ends_healthy() {
        let root = Root::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/hbv3"),
        );
        let wait = PortWait {
            timeout: Duration::from_secs(1),
            every: Duration::from_millis(100),
            slice: Duration::from_millis(50),
        };
        let c = fake();
        assert!(wait_until_healthy(&c, &root, wait, &|| true).is_ok());
        let c = fake();
        let f = wait_until_healthy(&c, &root, wait, &|| false).unwrap_err();
        assert_eq!(f.code, Code::Superseded);
    }
}
