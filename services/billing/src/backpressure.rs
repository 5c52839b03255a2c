//! Backpressure for `exact`: a served call must be settled before its
//! authorization's `validBefore`, or it was served for free. The settlement
//! worker reports how many served calls wait and how fast it settles; when
//! the wait would eat more than half of a new authorization's validity (or
//! the oldest waiting one is about to run out), new `exact` payments are
//! refused with 503 and Retry-After until the backlog drains. (Vouchers need
//! none of this: they are collected long after, within the deposit.)

use std::sync::Mutex;
use std::time::Duration;

/// Settlements per second assumed before the worker has measured any.
const ASSUMED_RATE: f64 = 20.0;
/// How much the newest measurement counts in the running rate.
const SMOOTHING: f64 = 0.3;

#[derive(Debug, Default)]
struct State {
    due: u64,
    earliest_valid_before: u64,
    /// Settled per second while there was work, smoothed; None until measured.
    rate: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Pressure {
    state: Mutex<State>,
}

/// What the gauges show (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub due: u64,
    pub earliest_valid_before: u64,
    pub rate: f64,
}

impl Pressure {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn observe_backlog(&self, due: u64, earliest_valid_before: u64) {
        let mut state = self.state();
        state.due = due;
        state.earliest_valid_before = earliest_valid_before;
    }

    /// A worker pass settled `settled` in `took`.
    pub fn observe_settled(&self, settled: usize, took: Duration) {
        if settled == 0 {
            return;
        }
        let measured = settled as f64 / took.as_secs_f64().max(1e-3);
        let mut state = self.state();
        state.rate = Some(match state.rate {
            None => measured,
            Some(rate) => rate * (1.0 - SMOOTHING) + measured * SMOOTHING,
        });
    }

    pub fn reading(&self) -> Reading {
        let state = self.state();
        Reading {
            due: state.due,
            earliest_valid_before: state.earliest_valid_before,
            rate: state.rate.unwrap_or(ASSUMED_RATE),
        }
    }

    /// How long the current backlog takes to settle, in whole seconds.
    pub fn drain_secs(&self) -> u64 {
        let reading = self.reading();
        (reading.due as f64 / reading.rate.max(1.0)).ceil() as u64
    }

    /// Whether a payment valid for `window` seconds from `now` would be
    /// settled in time; if not, the seconds to wait before trying again.
    /// `margin`: how close to `validBefore` the worker still sends.
    pub fn admit(&self, now: u64, window: u64, margin: u64) -> Result<(), u32> {
        let reading = self.reading();
        if reading.due == 0 {
            return Ok(());
        }
        let drain = reading.due as f64 / reading.rate.max(1.0);
        let budget = window.saturating_sub(margin) as f64 / 2.0;
        let oldest_at_risk =
            reading.earliest_valid_before > 0 && reading.earliest_valid_before < now + margin * 3;
        if drain <= budget && !oldest_at_risk {
            return Ok(());
        }
        let wait = (drain - budget).ceil().clamp(1.0, 30.0);
        Err(wait as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_that_would_outlast_the_validity_window_refuses_new_payments() {
        let pressure = Pressure::default();
        assert_eq!(pressure.admit(1_000, 300, 20), Ok(()), "nothing waits");
        pressure.observe_settled(100, Duration::from_secs(1));
        pressure.observe_backlog(1_000, 1_250);
        // 1,000 at 100/s is 10 s of a 140 s budget.
        assert_eq!(pressure.admit(1_000, 300, 20), Ok(()));
        pressure.observe_backlog(30_000, 1_250);
        // 300 s to drain: far past the budget.
        assert!(pressure.admit(1_000, 300, 20).is_err());
        // The oldest waiting one is about to run out.
        pressure.observe_backlog(10, 1_030);
        assert!(pressure.admit(1_000, 300, 20).is_err());
        pressure.observe_backlog(0, 0);
        assert_eq!(pressure.admit(1_000, 300, 20), Ok(()));
    }
}
