//! The one wall clock RunGate reads: unix seconds (authorization windows,
//! OpenAI `created` fields).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
