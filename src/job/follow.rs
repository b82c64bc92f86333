//! Following a queued build (SPEC §6.1): when to ask TeamCity about it next, and what an
//! answer means — pure functions of the build's progress, the answer and the time.
//!
//! A build is asked about every 5–10 s for the first 10 minutes after it was queued, then
//! every 60 s, and no more once it finished or 24 h after it was queued. Where in 5–10 s is
//! spread by job id and poll count, so that many builds queued at once are not all asked in
//! the same second.

use super::{BuildProgress, Job, JobState};

/// The first polls come this often, plus up to [`SPREAD_MS`].
pub const FAST_MS: u64 = 5_000;
/// The spread on top of [`FAST_MS`].
pub const SPREAD_MS: u64 = 5_000;
/// After this long since it was queued, a build is asked about every [`SLOW_MS`].
pub const SLOW_AFTER_MS: u64 = 10 * 60_000;
/// The slow interval.
pub const SLOW_MS: u64 = 60_000;
/// No build is followed longer than this after it was queued.
pub const GIVE_UP_AFTER_MS: u64 = 24 * 3_600_000;

/// What TeamCity answered about a build (the `fields` of SPEC §6.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// `queued`, `running` or `finished`.
    pub state: String,
    /// `SUCCESS`, `FAILURE`, `UNKNOWN` once finished.
    pub status: Option<String>,
    /// TeamCity's status text.
    pub status_text: Option<String>,
    /// The build number.
    pub number: Option<String>,
    /// The link to the queued or started build.
    pub web_url: Option<String>,
    /// TeamCity could not start it.
    pub failed_to_start: bool,
    /// Cancelled, with TeamCity's reason (`canceledInfo.text`).
    pub canceled: Option<String>,
}

/// What asking TeamCity came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// TeamCity answered with the build.
    Build(Observation),
    /// The build is not there any more (404): following ends, and why.
    Gone(String),
    /// TeamCity could not be asked this time (down, 5xx, no permission): ask again later.
    NotNow(String),
}

/// When to ask next about a build queued at `queued_at`, asked `polls` times so far, at
/// `now`; `None` once 24 h have passed.
pub fn next_poll(job_id: u64, queued_at: u64, polls: u32, now: u64) -> Option<u64> {
    let age = now.saturating_sub(queued_at);
    if age >= GIVE_UP_AFTER_MS {
        return None;
    }
    let wait = if age >= SLOW_AFTER_MS {
        SLOW_MS
    } else {
        FAST_MS + spread(job_id, polls)
    };
    Some(now + wait).filter(|at| at.saturating_sub(queued_at) < GIVE_UP_AFTER_MS)
}

/// A stable spread in [0, SPREAD_MS) (Fibonacci hashing of id and poll count).
fn spread(job_id: u64, polls: u32) -> u64 {
    let mixed = (job_id ^ (u64::from(polls) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) % SPREAD_MS
}

/// The progress of a build TeamCity just queued at `now`: queued, first asked about soon.
pub fn started_following(job_id: u64, now: u64) -> BuildProgress {
    BuildProgress {
        state: "queued".into(),
        next_poll_at: next_poll(job_id, now, 0, now),
        ..BuildProgress::default()
    }
}

/// Whether `job` is a build being followed.
pub fn is_followed(job: &Job) -> bool {
    job.state == JobState::Done && job.build.as_ref().is_some_and(|b| b.next_poll_at.is_some())
}

/// `progress` after TeamCity answered `seen` at `now`, for the build of job `job_id` that
/// was queued at `queued_at`; and the link TeamCity gave, if any.
pub fn observe(
    progress: &BuildProgress,
    seen: &Seen,
    job_id: u64,
    queued_at: u64,
    now: u64,
) -> (BuildProgress, Option<String>) {
    let mut next = progress.clone();
    next.polls = next.polls.saturating_add(1);
    let mut web_url = None;
    match seen {
        Seen::Build(o) => {
            next.state = o.state.clone();
            next.status = o.status.clone();
            next.status_text = o.status_text.clone();
            next.number = o.number.clone().or(next.number);
            next.failed_to_start = o.failed_to_start;
            next.canceled = o.canceled.clone();
            web_url = o.web_url.clone();
            next.next_poll_at = if o.state == "finished" {
                None
            } else {
                next_poll(job_id, queued_at, next.polls, now)
            };
        }
        Seen::Gone(why) => {
            next.next_poll_at = None;
            next.stopped = Some(why.clone());
        }
        Seen::NotNow(_) => next.next_poll_at = next_poll(job_id, queued_at, next.polls, now),
    }
    if next.next_poll_at.is_none() && next.state != "finished" && next.stopped.is_none() {
        next.stopped = Some("not finished 24 h after it was queued; no longer followed".into());
    }
    (next, web_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_every_five_to_ten_seconds_then_every_minute_then_stop() {
        let queued = 1_000_000;
        for polls in 0..50 {
            let at = next_poll(7, queued, polls, queued).unwrap() - queued;
            assert!((FAST_MS..FAST_MS + SPREAD_MS).contains(&at), "{at}");
        }
        // Builds queued together are asked at different moments.
        let moments: std::collections::HashSet<u64> = (0..20)
            .map(|id| next_poll(id, queued, 0, queued).unwrap())
            .collect();
        assert!(moments.len() > 10, "{moments:?}");
        let later = queued + SLOW_AFTER_MS;
        assert_eq!(next_poll(7, queued, 90, later), Some(later + SLOW_MS));
        assert_eq!(next_poll(7, queued, 9, queued + GIVE_UP_AFTER_MS), None);
        // Never a poll scheduled past the 24 h.
        assert_eq!(
            next_poll(7, queued, 9, queued + GIVE_UP_AFTER_MS - 1_000),
            None
        );
    }

    #[test]
    fn an_answer_moves_the_build_on_and_a_finished_one_is_no_longer_followed() {
        let start = started_following(3, 0);
        assert_eq!(start.state, "queued");
        let running = Seen::Build(Observation {
            state: "running".into(),
            number: Some("41".into()),
            web_url: Some("https://tc/viewLog.html?buildId=9".into()),
            ..Observation::default()
        });
        let (progress, link) = observe(&start, &running, 3, 0, 6_000);
        assert_eq!((progress.state.as_str(), progress.polls), ("running", 1));
        assert!(progress.next_poll_at.unwrap() > 6_000);
        assert_eq!(link.as_deref(), Some("https://tc/viewLog.html?buildId=9"));
        assert_eq!(progress.result(), None);
        let finished = Seen::Build(Observation {
            state: "finished".into(),
            status: Some("FAILURE".into()),
            status_text: Some("Tests failed: 2".into()),
            ..Observation::default()
        });
        let (done, _) = observe(&progress, &finished, 3, 0, 12_000);
        assert_eq!((done.next_poll_at, done.result()), (None, Some("failure")));
        assert_eq!(done.number.as_deref(), Some("41"), "kept from before");
        let cancelled = Seen::Build(Observation {
            state: "finished".into(),
            status: Some("UNKNOWN".into()),
            canceled: Some("superseded".into()),
            ..Observation::default()
        });
        assert_eq!(
            observe(&progress, &cancelled, 3, 0, 1).0.result(),
            Some("cancelled")
        );
        // Gone, or asked too late: following ends and says why.
        let (gone, _) = observe(&progress, &Seen::Gone("404".into()), 3, 0, 1);
        assert_eq!(
            (gone.next_poll_at, gone.stopped.as_deref()),
            (None, Some("404"))
        );
        let (late, _) = observe(
            &progress,
            &Seen::NotNow("503".into()),
            3,
            0,
            GIVE_UP_AFTER_MS,
        );
        assert!(late.stopped.unwrap().contains("24 h"));
        let (again, _) = observe(&progress, &Seen::NotNow("503".into()), 3, 0, 7_000);
        assert_eq!(again.state, "running");
        assert!(again.next_poll_at.is_some());
    }
}
