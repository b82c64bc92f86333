//! The job lifecycle as pure functions of (job, event, what the store knows, now): each
//! returns the writes to make, and the store applies them in one transaction. Nothing here
//! touches the store, the clock or the network, so every transition — and every race the
//! store's indexes must settle — is a plain unit test.
//!
//! ```text
//!            enqueue ──▶ pending ──claim──▶ inflight ──sent: done──▶ done
//!     (a newer push       ▲  │                 │  │ └──sent: dead──▶ dead ──revive──▶ pending
//!      replaces it)       │  └──coalesced      │  └─release / interrupted──▶ pending
//!                         └────sent: retry─────┘      (unless superseded: dropped)
//! ```
//!
//! **The latest job of a key.** For each coalescing key (server, build type, branch) the
//! store keeps the id of the newest job enqueued for it. A pending job that is not the
//! newest is replaced at once (coalescing, SPEC §5.3). A job that was in flight when a newer
//! one arrived is *superseded*: if its call fails and would be retried, or it is put back
//! unsent, it is dropped instead, so an older commit is never built after a newer one.
//!
//! **Cancelling superseded builds** (a route's `cancel_superseded`, SPEC §3). A job on such
//! a route that finds the newest job of its key already sent, with a TeamCity build, takes
//! that build into its `supersedes`; one that replaces a pending job takes over what that
//! one superseded. Once its own build is queued, it cancels them — those TeamCity still
//! holds in the queue. An older job whose call was still under way when a newer one came
//! hands its build to the newer one if that is still pending, or else cancels its own build
//! at once. A job that only cancels ([`Purpose::CancelQueued`], a pull request ended) is
//! enqueued the same way, but never replaces a build another route asked for.

use super::{Finish, Job, JobState, Purpose, Superseded, follow};

/// One change to make to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Store this job (new or changed).
    Put(Box<Job>),
    /// Delete the job with this id.
    Delete(u64),
    /// This job is now the newest for its coalescing key.
    SetLatest {
        /// The coalescing key.
        key: Vec<u8>,
        /// The job.
        id: u64,
    },
    /// Nothing is the newest for this key any more.
    ClearLatest {
        /// The coalescing key.
        key: Vec<u8>,
    },
}

/// Why an event does not apply to a job (the caller leaves the job as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The job is not in the state the event needs; it holds the state it is in.
    WrongState(JobState),
}

/// What an event does: the writes, and what the caller should know.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The writes, in order.
    pub writes: Vec<Write>,
    /// The job as it is afterwards; `None` when it was dropped.
    pub job: Option<Job>,
    /// A pending job replaced by this one (enqueue only).
    pub coalesced: Option<Job>,
    /// Another job the writes change, as it was before (a newer job handed a build to
    /// cancel): the store's counts need its state before and after.
    pub also_changed: Option<Job>,
}

impl Transition {
    fn put(job: Job) -> Self {
        Self {
            writes: vec![Write::Put(Box::new(job.clone()))],
            job: Some(job),
            coalesced: None,
            also_changed: None,
        }
    }

    fn drop_superseded(job: &Job) -> Self {
        // The newest job of the key is another one: the index stays as it is.
        Self {
            writes: vec![Write::Delete(job.id)],
            job: None,
            coalesced: None,
            also_changed: None,
        }
    }
}

fn require(job: &Job, state: JobState) -> Result<(), Refused> {
    if job.state == state {
        Ok(())
    } else {
        Err(Refused::WrongState(job.state))
    }
}

/// Whether a newer job was enqueued for `job`'s key. `latest` is the newest job id the
/// store has for that key (`None`: none recorded, e.g. removed by an admin).
fn superseded(job: &Job, latest: Option<u64>) -> bool {
    latest.is_some_and(|id| id != job.id)
}

/// A new job (its id assigned) for a key whose newest job is `latest`: that one is replaced
/// when it is still pending; one in flight or finished is left alone.
pub fn enqueue(job: Job, latest: Option<&Job>) -> Transition {
    let key = job.coalescing_key();
    enqueue_keyed(job, key, latest)
}

/// [`enqueue`] for a caller that made the job's coalescing key already (to find `latest`).
pub fn enqueue_keyed(mut job: Job, key: Vec<u8>, latest: Option<&Job>) -> Transition {
    debug_assert_eq!(key, job.coalescing_key());
    let mut writes = Vec::new();
    let mut coalesced = None;
    let mut becomes_latest = true;
    if let Some(old) = latest
        && old.id != job.id
    {
        match old.state {
            JobState::Pending if job.purpose == Purpose::CancelQueued && !old.cancel_superseded => {
                // An ended pull request leaves alone a build another route asked for.
                becomes_latest = false;
            }
            JobState::Pending => {
                writes.push(Write::Delete(old.id));
                if job.cancel_superseded {
                    job.supersedes.extend(old.supersedes.iter().cloned());
                }
                coalesced = Some(old.clone());
            }
            JobState::Done => {
                if let Some(build) = queued_build(old)
                    && job.cancel_superseded
                {
                    job.supersedes.push(build);
                }
            }
            JobState::Inflight | JobState::Dead => {}
        }
    }
    writes.push(Write::Put(Box::new(job.clone())));
    if becomes_latest {
        writes.push(Write::SetLatest { key, id: job.id });
    }
    Transition {
        writes,
        job: Some(job),
        coalesced,
        also_changed: None,
    }
}

/// The worker takes a pending job to send it: in flight, one more attempt.
pub fn claim(job: &Job) -> Result<Transition, Refused> {
    require(job, JobState::Pending)?;
    let mut job = job.clone();
    job.state = JobState::Inflight;
    job.attempts += 1;
    Ok(Transition::put(job))
}

/// The build a finished job queued, for a newer job to cancel: only a build job of a route
/// with `cancel_superseded` that TeamCity gave an id.
fn queued_build(job: &Job) -> Option<Superseded> {
    let build_id = job.build_id?;
    (job.cancel_superseded && job.purpose == Purpose::Build).then(|| Superseded {
        job: job.id,
        build_id,
        token: job.token.clone(),
    })
}

/// The call ended with `finish` at `now` (ms). `newest` is the newest job of the key when it
/// is another one (what `latest` names, if it can be read).
///
/// A job done is done with what it superseded (the call cancelled those). When a newer job
/// came in while this one was under way, its build is superseded at once: handed to the
/// newer job if that is still pending, else left in this job's `supersedes` for the worker
/// to cancel now.
pub fn sent(
    job: &Job,
    finish: &Finish,
    latest: Option<u64>,
    newest: Option<&Job>,
    now: u64,
) -> Result<Transition, Refused> {
    require(job, JobState::Inflight)?;
    let mut job = job.clone();
    job.interrupted = false;
    match finish {
        Finish::Done {
            build_id,
            web_url,
            warning,
        } => {
            job.state = JobState::Done;
            job.build_id = *build_id;
            job.web_url = web_url.clone();
            job.warning = warning.clone();
            job.finished_at = Some(now);
            job.supersedes.clear();
            if job.build_id.is_some() && job.purpose == Purpose::Build {
                job.build = Some(follow::started_following(job.id, now));
            }
            if let Some(build) = queued_build(&job)
                && superseded(&job, latest)
                && let Some(newer) = newest.filter(|n| n.id != job.id && n.cancel_superseded)
            {
                if newer.state == JobState::Pending {
                    let mut handed = newer.clone();
                    handed.supersedes.push(build);
                    return Ok(Transition {
                        writes: vec![
                            Write::Put(Box::new(job.clone())),
                            Write::Put(Box::new(handed)),
                        ],
                        job: Some(job),
                        coalesced: None,
                        also_changed: Some(newer.clone()),
                    });
                }
                job.supersedes.push(build);
            }
        }
        Finish::Dead { error } => {
            job.state = JobState::Dead;
            job.last_error = Some(error.clone());
            job.finished_at = Some(now);
        }
        Finish::Retry {
            delay,
            error,
            check_first,
        } => {
            if superseded(&job, latest) {
                return Ok(Transition::drop_superseded(&job));
            }
            job.interrupted = *check_first;
            job.state = JobState::Pending;
            job.next_attempt_at =
                now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            job.last_error = Some(error.clone());
        }
    }
    Ok(Transition::put(job))
}

/// TeamCity answered `seen` about the build of done job `job` at `now` (SPEC §6.1): what it
/// learned is kept, and the next poll set (or following ends).
pub fn followed(job: &Job, seen: &follow::Seen, now: u64) -> Result<Transition, Refused> {
    require(job, JobState::Done)?;
    let Some(progress) = job.build.as_ref().filter(|_| follow::is_followed(job)) else {
        return Err(Refused::WrongState(job.state));
    };
    let queued_at = job.finished_at.unwrap_or(now);
    let (progress, web_url) = follow::observe(progress, seen, job.id, queued_at, now);
    let mut job = job.clone();
    job.build = Some(progress);
    if web_url.is_some() {
        job.web_url = web_url;
    }
    Ok(Transition::put(job))
}

/// A claimed job goes back unsent (shutdown before its call): pending again, the attempt not
/// counted — or dropped when a newer job for its key came in meanwhile.
pub fn release(job: &Job, latest: Option<u64>) -> Result<Transition, Refused> {
    require(job, JobState::Inflight)?;
    if superseded(job, latest) {
        return Ok(Transition::drop_superseded(job));
    }
    let mut job = job.clone();
    job.state = JobState::Pending;
    job.attempts = job.attempts.saturating_sub(1);
    Ok(Transition::put(job))
}

/// A claim for `attempt` found in the intake log at start-up: sled may have lost it (the
/// claim was made durable in the log, not in sled). It applies only to a job still pending
/// at the attempt before; one that got further — sent, retried, finished — is left alone.
/// The job is then in flight, so it is recovered like any call a crash interrupted.
pub fn replay_claim(job: &Job, attempt: u32) -> Result<Transition, Refused> {
    if job.state == JobState::Pending && job.attempts.checked_add(1) == Some(attempt) {
        claim(job)
    } else {
        Err(Refused::WrongState(job.state))
    }
}

/// A job whose call may or may not have reached TeamCity (found in flight at start, or its
/// task failed mid-call): pending again and flagged, so that TeamCity is asked before it is
/// posted again — or dropped when superseded, as the newer job builds the newer commit.
pub fn interrupted(job: &Job, latest: Option<u64>, now: u64) -> Result<Transition, Refused> {
    require(job, JobState::Inflight)?;
    if superseded(job, latest) {
        return Ok(Transition::drop_superseded(job));
    }
    let mut job = job.clone();
    job.state = JobState::Pending;
    job.interrupted = true;
    job.next_attempt_at = job.next_attempt_at.min(now);
    Ok(Transition::put(job))
}

/// An admin retries a dead job: pending, due `now`, with a fresh attempt count. It becomes
/// the newest of its key unless a newer job is still waiting or under way (then both run).
pub fn revive(job: &Job, latest: Option<&Job>, now: u64) -> Result<Transition, Refused> {
    require(job, JobState::Dead)?;
    let mut job = job.clone();
    job.state = JobState::Pending;
    job.attempts = 0;
    job.next_attempt_at = now;
    job.finished_at = None;
    let newer_active = latest.is_some_and(|l| {
        l.id != job.id && matches!(l.state, JobState::Pending | JobState::Inflight)
    });
    let mut writes = vec![Write::Put(Box::new(job.clone()))];
    if !newer_active {
        writes.push(Write::SetLatest {
            key: job.coalescing_key(),
            id: job.id,
        });
    }
    Ok(Transition {
        writes,
        job: Some(job),
        coalesced: None,
        also_changed: None,
    })
}

/// An admin removes a job, or pruning drops a finished one.
pub fn remove(job: &Job, latest: Option<u64>) -> Transition {
    let mut writes = vec![Write::Delete(job.id)];
    if latest == Some(job.id) {
        writes.push(Write::ClearLatest {
            key: job.coalescing_key(),
        });
    }
    Transition {
        writes,
        job: None,
        coalesced: None,
        also_changed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::TokenRef;
    use crate::store::test_support::job;
    use std::time::Duration;

    fn with_id(id: u64, state: JobState) -> Job {
        let mut job = job("main", 'a');
        job.id = id;
        job.state = state;
        job
    }

    fn retry(secs: u64) -> Finish {
        Finish::Retry {
            delay: Duration::from_secs(secs),
            error: "TeamCity answered 503: starting".into(),
            check_first: false,
        }
    }

    #[test]
    fn enqueue_replaces_only_a_pending_newest_job() {
        let old = with_id(1, JobState::Pending);
        let new = with_id(2, JobState::Pending);
        let t = enqueue(new.clone(), Some(&old));
        assert_eq!(t.coalesced.as_ref().map(|j| j.id), Some(1));
        assert_eq!(
            t.writes,
            vec![
                Write::Delete(1),
                Write::Put(Box::new(new.clone())),
                Write::SetLatest {
                    key: new.coalescing_key(),
                    id: 2
                }
            ]
        );
        for state in [JobState::Inflight, JobState::Done, JobState::Dead] {
            let t = enqueue(new.clone(), Some(&with_id(1, state)));
            assert!(t.coalesced.is_none(), "{state:?} is not replaced");
            assert!(!t.writes.contains(&Write::Delete(1)));
        }
        assert!(enqueue(new, None).coalesced.is_none());
    }

    #[test]
    fn a_replayed_claim_applies_only_where_sled_lost_it() {
        let pending = with_id(1, JobState::Pending);
        let job = replay_claim(&pending, 1).unwrap().job.unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Inflight, 1));
        // Sled kept the claim, or the job moved on: nothing changes.
        assert_eq!(
            replay_claim(&job, 1),
            Err(Refused::WrongState(JobState::Inflight))
        );
        let mut retried = with_id(1, JobState::Pending);
        retried.attempts = 1;
        assert!(
            replay_claim(&retried, 1).is_err(),
            "retried after that attempt"
        );
        assert!(replay_claim(&with_id(1, JobState::Done), 1).is_err());
        assert!(replay_claim(&with_id(1, JobState::Dead), 1).is_err());
        assert!(replay_claim(&pending, 3).is_err(), "not the next attempt");
        assert!(replay_claim(&pending, 0).is_err());
    }

    #[test]
    fn claim_needs_a_pending_job_and_counts_the_attempt() {
        let t = claim(&with_id(1, JobState::Pending)).unwrap();
        let job = t.job.unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Inflight, 1));
        for state in [JobState::Inflight, JobState::Done, JobState::Dead] {
            assert_eq!(claim(&with_id(1, state)), Err(Refused::WrongState(state)));
        }
    }

    #[test]
    fn sent_done_and_dead_are_final() {
        let inflight = with_id(1, JobState::Inflight);
        let done = Finish::Done {
            build_id: Some(7),
            web_url: Some("http://tc/7".into()),
            warning: None,
        };
        let job = sent(&inflight, &done, Some(1), None, 500)
            .unwrap()
            .job
            .unwrap();
        assert_eq!(
            (job.state, job.build_id, job.finished_at),
            (JobState::Done, Some(7), Some(500))
        );
        let dead = Finish::Dead {
            error: "404".into(),
        };
        let job = sent(&inflight, &dead, Some(1), None, 500)
            .unwrap()
            .job
            .unwrap();
        assert_eq!(
            (job.state, job.last_error.as_deref()),
            (JobState::Dead, Some("404"))
        );
        // Superseded does not matter for a call that ended for good.
        assert!(
            sent(&inflight, &done, Some(9), None, 500)
                .unwrap()
                .job
                .is_some()
        );
        // A job removed while its call ran (or finished twice) is left alone.
        assert_eq!(
            sent(&with_id(1, JobState::Done), &done, Some(1), None, 500),
            Err(Refused::WrongState(JobState::Done))
        );
    }

    #[test]
    fn sent_retry_waits_on_its_own_clock() {
        let mut inflight = with_id(1, JobState::Inflight);
        inflight.interrupted = true;
        let job = sent(&inflight, &retry(30), Some(1), None, 1_000)
            .unwrap()
            .job
            .unwrap();
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(job.next_attempt_at, 31_000);
        assert!(!job.interrupted, "the call was answered");
        let unread = Finish::Retry {
            delay: Duration::from_secs(1),
            error: "TeamCity answered 200 but the answer could not be read".into(),
            check_first: true,
        };
        let job = sent(&inflight, &unread, Some(1), None, 0)
            .unwrap()
            .job
            .unwrap();
        assert!(job.interrupted, "the next attempt asks TeamCity first");
        // No newest job recorded (e.g. the index entry was pruned): still retried.
        assert!(
            sent(&inflight, &retry(1), None, None, 0)
                .unwrap()
                .job
                .is_some()
        );
    }

    /// The race of the storage issue: A in flight, B (newer) enqueued and already claimed;
    /// A's call fails and would be retried — before, A went back to pending and the older
    /// commit was built last.
    #[test]
    fn a_superseded_job_is_dropped_instead_of_retried() {
        let a = with_id(1, JobState::Inflight);
        let b = enqueue(with_id(2, JobState::Pending), Some(&a));
        assert!(b.coalesced.is_none(), "in flight: not replaced");
        let b = claim(b.job.as_ref().unwrap()).unwrap().job.unwrap();
        assert_eq!(b.state, JobState::Inflight);
        let t = sent(&a, &retry(1), Some(2), None, 0).unwrap();
        assert_eq!(t.writes, vec![Write::Delete(1)]);
        assert!(t.job.is_none());
    }

    #[test]
    fn release_puts_back_unsent_unless_superseded() {
        let mut a = with_id(1, JobState::Inflight);
        a.attempts = 3;
        let job = release(&a, Some(1)).unwrap().job.unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Pending, 2));
        assert_eq!(release(&a, Some(2)).unwrap().writes, vec![Write::Delete(1)]);
        assert!(release(&with_id(1, JobState::Pending), Some(1)).is_err());
    }

    #[test]
    fn interrupted_jobs_are_flagged_for_the_teamcity_check() {
        let mut a = with_id(1, JobState::Inflight);
        a.attempts = 1;
        a.next_attempt_at = 9_000;
        let job = interrupted(&a, Some(1), 5_000).unwrap().job.unwrap();
        assert_eq!(
            (
                job.state,
                job.interrupted,
                job.attempts,
                job.next_attempt_at
            ),
            (JobState::Pending, true, 1, 5_000)
        );
        assert_eq!(
            interrupted(&a, Some(2), 0).unwrap().writes,
            vec![Write::Delete(1)]
        );
        assert!(interrupted(&with_id(1, JobState::Dead), Some(1), 0).is_err());
    }

    #[test]
    fn revive_makes_a_dead_job_pending_and_newest_unless_a_newer_one_is_active() {
        let mut dead = with_id(1, JobState::Dead);
        dead.attempts = 8;
        dead.finished_at = Some(10);
        let t = revive(&dead, Some(&with_id(2, JobState::Done)), 777).unwrap();
        let job = t.job.clone().unwrap();
        assert_eq!(
            (
                job.state,
                job.attempts,
                job.next_attempt_at,
                job.finished_at
            ),
            (JobState::Pending, 0, 777, None)
        );
        assert!(t.writes.contains(&Write::SetLatest {
            key: dead.coalescing_key(),
            id: 1
        }));
        for state in [JobState::Pending, JobState::Inflight] {
            let t = revive(&dead, Some(&with_id(2, state)), 0).unwrap();
            assert_eq!(
                t.writes.len(),
                1,
                "the newer {state:?} job stays the newest"
            );
        }
        assert_eq!(
            revive(&with_id(1, JobState::Done), None, 0),
            Err(Refused::WrongState(JobState::Done))
        );
    }

    #[test]
    fn remove_clears_the_index_only_for_the_newest() {
        let job = with_id(1, JobState::Done);
        assert_eq!(remove(&job, Some(2)).writes, vec![Write::Delete(1)]);
        assert_eq!(
            remove(&job, Some(1)).writes,
            vec![
                Write::Delete(1),
                Write::ClearLatest {
                    key: job.coalescing_key()
                }
            ]
        );
    }

    fn cancelling(id: u64, state: JobState) -> Job {
        let mut job = with_id(id, state);
        job.cancel_superseded = true;
        job
    }

    fn done_with_build(id: u64, build_id: u64) -> Job {
        let mut job = cancelling(id, JobState::Done);
        job.build_id = Some(build_id);
        job
    }

    #[test]
    fn a_newer_job_takes_the_queued_build_of_a_sent_one_to_cancel() {
        let t = enqueue(
            cancelling(2, JobState::Pending),
            Some(&done_with_build(1, 501)),
        );
        let job = t.job.unwrap();
        assert_eq!(
            job.supersedes,
            vec![Superseded {
                job: 1,
                build_id: 501,
                token: TokenRef::Service
            }]
        );
        // Not when either route does not cancel, nor for a build TeamCity gave no id.
        assert!(
            enqueue(
                with_id(2, JobState::Pending),
                Some(&done_with_build(1, 501))
            )
            .job
            .unwrap()
            .supersedes
            .is_empty()
        );
        let mut other_route = done_with_build(1, 501);
        other_route.cancel_superseded = false;
        assert!(
            enqueue(cancelling(2, JobState::Pending), Some(&other_route))
                .job
                .unwrap()
                .supersedes
                .is_empty()
        );
        // Replacing a pending job takes over what it superseded.
        let mut pending = cancelling(2, JobState::Pending);
        pending.supersedes = job.supersedes.clone();
        let t = enqueue(cancelling(3, JobState::Pending), Some(&pending));
        assert_eq!(t.coalesced.map(|c| c.id), Some(2));
        assert_eq!(t.job.unwrap().supersedes, job.supersedes);
    }

    #[test]
    fn an_ended_pull_request_replaces_only_builds_that_cancel() {
        let mut end = cancelling(2, JobState::Pending);
        end.purpose = Purpose::CancelQueued;
        let t = enqueue(end.clone(), Some(&cancelling(1, JobState::Pending)));
        assert_eq!(t.coalesced.map(|c| c.id), Some(1));
        let t = enqueue(end.clone(), Some(&with_id(1, JobState::Pending)));
        assert!(t.coalesced.is_none());
        assert_eq!(
            t.writes,
            vec![Write::Put(Box::new(end.clone()))],
            "not the newest"
        );
        let t = enqueue(end, Some(&done_with_build(1, 7)));
        assert_eq!(t.job.unwrap().supersedes[0].build_id, 7);
        // A build that only cancelled queued none to cancel.
        let mut ended = done_with_build(1, 7);
        ended.purpose = Purpose::CancelQueued;
        let t = enqueue(cancelling(3, JobState::Pending), Some(&ended));
        assert!(t.job.unwrap().supersedes.is_empty());
    }

    #[test]
    fn a_build_queued_after_a_newer_job_came_is_superseded_at_once() {
        let done = Finish::Done {
            build_id: Some(900),
            web_url: None,
            warning: None,
        };
        let mut inflight = cancelling(1, JobState::Inflight);
        inflight.supersedes = vec![Superseded {
            job: 0,
            build_id: 800,
            token: TokenRef::Service,
        }];
        // The newer job is still pending: it gets the build to cancel after its own.
        let newer = cancelling(2, JobState::Pending);
        let t = sent(&inflight, &done, Some(2), Some(&newer), 5).unwrap();
        let job = t.job.unwrap();
        assert!(job.supersedes.is_empty(), "done with what it cancelled");
        let Write::Put(handed) = &t.writes[1] else {
            panic!("{:?}", t.writes)
        };
        assert_eq!((handed.id, handed.supersedes[0].build_id), (2, 900));
        // The newer job was sent already: this one's build is cancelled now.
        let sent_newer = cancelling(2, JobState::Inflight);
        let job = sent(&inflight, &done, Some(2), Some(&sent_newer), 5)
            .unwrap()
            .job
            .unwrap();
        assert_eq!(job.supersedes[0].build_id, 900);
        // Not superseded, or the route does not cancel: nothing.
        let t = sent(&inflight, &done, Some(1), None, 5).unwrap();
        assert!(t.job.unwrap().supersedes.is_empty());
        let mut keeps = inflight.clone();
        keeps.cancel_superseded = false;
        let t = sent(&keeps, &done, Some(2), Some(&newer), 5).unwrap();
        assert_eq!(t.writes.len(), 1);
    }
}
