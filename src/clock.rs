//! Wall-clock time as stored (milliseconds since the Unix epoch) and as shown (RFC 3339 UTC).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable that shifts bb2tc's wall clock by a number of milliseconds
/// (negative: into the past). For the upgrade tests only: they open stores that older
/// releases wrote days ago, as if an hour had passed, so that the 24 h de-duplication
/// window and the sessions in them still hold. Nothing else should set it.
pub const TEST_OFFSET_VAR: &str = "BB2TC_TEST_CLOCK_OFFSET_MS";

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    real.saturating_add_signed(test_offset_ms())
}

/// [`TEST_OFFSET_VAR`], read once; 0 when unset or not a number.
fn test_offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var(TEST_OFFSET_VAR)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// `2026-11-28T10:00:00Z` for a stored time.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_seconds() {
        assert_eq!(super::rfc3339(1_795_860_000_000), "2026-11-28T10:00:00Z");
    }
}
