//! Per-object exponential backoff: kube-runtime requeues on error with whatever `Action` the
//! error policy returns, so the failure count per object lives here and resets on success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Longest delay between retries of one object.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Backoffs {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoffs {
    /// Records a failure of `key` and returns how long to wait before the next attempt:
    /// `base`, doubled per consecutive failure, capped at [`MAX_DELAY`].
    pub fn failed(&self, key: &str, base: Duration) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        let delay = base.saturating_mul(1u32 << (*n).min(16)).min(MAX_DELAY);
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let b = Backoffs::default();
        let base = Duration::from_secs(1);
        assert_eq!(b.failed("a", base), Duration::from_secs(1));
        assert_eq!(b.failed("a", base), Duration::from_secs(2));
        assert_eq!(b.failed("a", base), Duration::from_secs(4));
        assert_eq!(
            b.failed("other", base),
            Duration::from_secs(1),
            "objects are independent"
        );
        for _ in 0..20 {
            b.failed("a", base);
        }
        assert_eq!(b.failed("a", base), MAX_DELAY);
        b.succeeded("a");
        assert_eq!(b.failed("a", base), Duration::from_secs(1));
    }
}
