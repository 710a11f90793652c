//! Exponential back-off between retries against the control plane or the kernel.

use std::time::Duration;

/// Doubles from `initial` up to `max`; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, current: initial }
    }

    /// The wait before the next try; the one after it is twice as long, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.current;
        self.current = (self.current * 2).min(self.max);
        wait
    }

    /// [`Backoff::next_wait`] with full jitter over its upper half, so cells that lost the
    /// control plane together do not all come back in the same instant.
    pub fn next_wait_jittered(&mut self) -> Duration {
        self.next_wait().mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(200), ms(1000));
        let waits: Vec<Duration> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        b.reset();
        assert_eq!(b.next_wait(), ms(200));
        b.reset();
        for expected in [200, 400, 800, 1000, 1000] {
            let w = b.next_wait_jittered();
            assert!(w >= ms(expected / 2) && w <= ms(expected), "{w:?} for {expected} ms");
        }
    }
}
