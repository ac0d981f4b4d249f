//! The operator's notion of "now": whole seconds, as Kubernetes condition times are.

use jiff::{Timestamp, Unit};

pub fn now() -> Timestamp {
    Timestamp::now()
        .round(Unit::Second)
        .unwrap_or_else(|_| Timestamp::now())
}
