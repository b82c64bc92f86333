//! When to try a failed TeamCity call again (SPEC §6): the server's `retry_schedule_secs`,
//! ±20 % jitter, and TeamCity's `Retry-After` stretching the wait up to twice the step.

use std::time::Duration;

/// Jitter as a fraction of the step.
pub const JITTER: f64 = 0.2;

/// The wait before the next attempt after `attempts` calls failed, or `None` when the
/// schedule is exhausted and the job is dead. `jitter` is in [-1, 1] (random in
/// production, fixed in tests).
pub fn next_delay(
    schedule: &[Duration],
    attempts: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let index = usize::try_from(attempts.checked_sub(1)?).ok()?;
    let step = *schedule.get(index)?;
    let jittered = step.mul_f64(1.0 + JITTER * jitter.clamp(-1.0, 1.0));
    Some(match retry_after {
        Some(asked) if asked > jittered => asked.min(step * 2),
        _ => jittered,
    })
}

/// A random jitter in [-1, 1].
pub fn random_jitter() -> f64 {
    rand::random::<f64>() * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().copied().map(Duration::from_secs).collect()
    }

    #[test]
    fn follows_the_schedule_then_gives_up() {
        let schedule = secs(&[1, 5, 30]);
        assert_eq!(
            next_delay(&schedule, 1, None, 0.0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            next_delay(&schedule, 2, None, 0.0),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            next_delay(&schedule, 3, None, 0.0),
            Some(Duration::from_secs(30))
        );
        assert_eq!(next_delay(&schedule, 4, None, 0.0), None);
        assert_eq!(next_delay(&schedule, 0, None, 0.0), None);
        assert_eq!(next_delay(&[], 1, None, 0.0), None);
    }

    #[test]
    fn jitter_is_within_twenty_percent() {
        let schedule = secs(&[10]);
        assert_eq!(
            next_delay(&schedule, 1, None, 1.0),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            next_delay(&schedule, 1, None, -1.0),
            Some(Duration::from_secs(8))
        );
        assert_eq!(
            next_delay(&schedule, 1, None, 7.0),
            Some(Duration::from_secs(12))
        );
        for _ in 0..1000 {
            let d = next_delay(&schedule, 1, None, random_jitter()).unwrap();
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
    }

    #[test]
    fn retry_after_stretches_up_to_twice_the_step() {
        let schedule = secs(&[10]);
        let wait = |asked| next_delay(&schedule, 1, Some(Duration::from_secs(asked)), 0.0);
        assert_eq!(wait(15), Some(Duration::from_secs(15)));
        assert_eq!(wait(100), Some(Duration::from_secs(20)));
        assert_eq!(
            wait(3),
            Some(Duration::from_secs(10)),
            "never shortens the wait"
        );
    }
}
