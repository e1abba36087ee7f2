//! Small shared pieces: reconnect backoff. Touches nothing else.

use std::time::Duration;

/// Exponential backoff with jitter: each delay doubles from `min` up to `max`, and the
/// actual wait is drawn from [delay, 1.5 × delay] (never above `max`) so that reconnects of
/// several gateways (or sources) do not synchronise.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The reconnect policy of the upstream sources: 1 s up to 30 s.
    pub fn upstream() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// The next wait; doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        (d + (d / 2).mul_f64(fastrand::f64())).min(self.max)
    }

    /// The lower bound of the wait [`Backoff::next_delay`] would return now.
    pub fn peek_bound(&self) -> Duration {
        self.next
    }

    /// After a success: start again from `min`.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_bounds_with_jitter() {
        let mut b = Backoff::upstream();
        let mut bound = Duration::from_secs(1);
        for _ in 0..10 {
            let d = b.next_delay();
            let hi = (bound * 3 / 2).min(Duration::from_secs(30));
            assert!(d >= bound && d <= hi, "{d:?} not in [{bound:?}, {hi:?}]");
            bound = (bound * 2).min(Duration::from_secs(30));
        }
        assert_eq!(b.peek_bound(), Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1500));
    }
}
