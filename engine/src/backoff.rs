//! Exponential backoff for the loops that reconnect to a back end or retry
//! a failed write: the first wait is `initial`, each further one doubles, up
//! to `max`; a success resets it.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait to use now; the one after is twice as long (at most `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Whether an earlier failure is still being backed off from.
    pub fn backing_off(&self) -> bool {
        self.next > self.initial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u64> = (0..4).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        assert!(b.backing_off());
        b.reset();
        assert!(!b.backing_off());
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
