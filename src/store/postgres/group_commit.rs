//! Group commit for deliveries: concurrent deliveries share one transaction.
//!
//! A few committer tasks take the deliveries waiting, up to [`MAX_GROUP`] at a time, and
//! record them in one transaction ([`Intake::record`]); each delivery's answer follows the
//! commit. When a committer is free, a delivery goes alone, so an unloaded bridge answers
//! as fast as before; under load, deliveries that arrive while the committers are busy wait
//! for the next free one and go together. A group costs PostgreSQL one set of statements and
//! one commit instead of one per delivery (BENCHMARKS.md, "Ingest on PostgreSQL").
//!
//! Two deliveries with the same id (de-duplicated by id) never share a group: the second
//! waits for the next one, where it is answered as the duplicate it is. A group that fails
//! for any reason but a lost race (those are run again) is run again one delivery at a
//! time, so one delivery the database refuses fails alone.
//!
//! The committers run apart from the requests: a client that goes away mid-transaction
//! does not cut it short.

use super::intake::{Intake, Push};
use crate::store::StoreError;
use crate::store::jobs::RecordOutcome;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

/// The most deliveries one transaction holds.
pub const MAX_GROUP: usize = 64;

type Answer = oneshot::Sender<Result<RecordOutcome, StoreError>>;

/// Where deliveries are handed to the committers.
#[derive(Debug)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<(Push, Answer)>,
}

/// How many committers a pool of `max_connections` gets: a quarter of the connections
/// (the rest serve the workers, the token page and the leases), at least one, at most 8.
pub fn committers(max_connections: usize) -> usize {
    (max_connections / 4).clamp(1, 8)
}

impl GroupCommit {
    /// Starts `count` committers on `pool`. They stop when this is dropped.
    pub fn start(pool: deadpool_postgres::Pool, intake: Intake, count: usize) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..count {
            tokio::spawn(commit_groups(pool.clone(), intake.clone(), waiting.clone()));
        }
        Self { queue }
    }

    /// Records `push` with whichever group it joins; answered after the commit.
    pub async fn record(&self, push: Push) -> Result<RecordOutcome, StoreError> {
        let (answer, answered) = oneshot::channel();
        let closed = || StoreError::Postgres("the store is closing".into());
        self.queue.send((push, answer)).map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }
}

/// One committer: takes a group, records it, answers, and again.
async fn commit_groups(
    pool: deadpool_postgres::Pool,
    intake: Intake,
    waiting: Arc<Mutex<mpsc::UnboundedReceiver<(Push, Answer)>>>,
) {
    let mut later = VecDeque::new();
    while let Some(group) = next_group(&waiting, &mut later).await {
        let pushes: Vec<&Push> = group.iter().map(|(push, _)| push).collect();
        match intake.record(&pool, &pushes).await {
            Ok(outcomes) => {
                for ((_, answer), outcome) in group.into_iter().zip(outcomes) {
                    let _ = answer.send(Ok(outcome));
                }
            }
            Err(e) if group.len() == 1 => {
                if let Some((_, answer)) = group.into_iter().next() {
                    let _ = answer.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    deliveries = group.len(),
                    "a group of deliveries failed; recording them one at a time"
                );
                let alone = group.into_iter().map(|(push, answer)| {
                    let (pool, intake) = (&pool, &intake);
                    async move {
                        let done = intake.record(pool, &[&push]).await;
                        let _ = answer.send(done.map(|mut outcomes| outcomes.remove(0)));
                    }
                });
                futures_util::future::join_all(alone).await;
            }
        }
    }
}

/// The next group: the deliveries held back from the last one first, then the first to
/// arrive (waited for) and every other already waiting, up to [`MAX_GROUP`]. `None` once
/// the store is closed.
async fn next_group(
    waiting: &Mutex<mpsc::UnboundedReceiver<(Push, Answer)>>,
    later: &mut VecDeque<(Push, Answer)>,
) -> Option<Vec<(Push, Answer)>> {
    let mut group = Vec::new();
    let mut ids = HashSet::new();
    let mut held = VecDeque::new();
    let mut admit = |item: (Push, Answer), group: &mut Vec<_>, held: &mut VecDeque<_>| {
        if item.0.dedup_id && !ids.insert(item.0.delivery.id.clone()) {
            held.push_back(item);
        } else {
            group.push(item);
        }
    };
    while let Some(item) = later.pop_front() {
        if group.len() < MAX_GROUP {
            admit(item, &mut group, &mut held);
        } else {
            held.push_back(item);
        }
    }
    // Another committer may be waiting for the queue: with a group already, do not wait.
    let queue = if group.is_empty() {
        Some(waiting.lock().await)
    } else {
        waiting.try_lock().ok()
    };
    if let Some(mut queue) = queue {
        if group.is_empty() {
            let first = queue.recv().await?;
            admit(first, &mut group, &mut held);
        }
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(item) => admit(item, &mut group, &mut held),
                Err(_) => break,
            }
        }
    }
    *later = held;
    Some(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(id: &str, dedup_id: bool) -> (Push, Answer) {
        let push = Push {
            delivery: crate::store::test_support::delivery(id),
            dedup_id,
            changes: Vec::new(),
        };
        (push, oneshot::channel().0)
    }

    fn ids(group: &[(Push, Answer)]) -> Vec<&str> {
        group.iter().map(|(p, _)| p.delivery.id.as_str()).collect()
    }

    #[tokio::test]
    async fn a_group_takes_what_waits_and_holds_a_repeated_id_back() {
        let (queue, waiting) = mpsc::unbounded_channel();
        let waiting = Mutex::new(waiting);
        for (id, dedup_id) in [
            ("a", true),
            ("b", true),
            ("a", true),
            ("page", false),
            ("page", false),
        ] {
            queue.send(push(id, dedup_id)).unwrap();
        }
        let mut later = VecDeque::new();
        let first = next_group(&waiting, &mut later).await.unwrap();
        // An id not de-duplicated by id (a run from the token page) may repeat.
        assert_eq!(ids(&first), ["a", "b", "page", "page"]);
        assert_eq!(later.len(), 1);
        queue.send(push("c", true)).unwrap();
        let second = next_group(&waiting, &mut later).await.unwrap();
        assert_eq!(ids(&second), ["a", "c"]);
        for n in 0..MAX_GROUP + 1 {
            queue.send(push(&n.to_string(), true)).unwrap();
        }
        assert_eq!(
            next_group(&waiting, &mut later).await.unwrap().len(),
            MAX_GROUP
        );
        assert_eq!(
            ids(&next_group(&waiting, &mut later).await.unwrap()),
            ["64"]
        );
        drop(queue);
        assert!(next_group(&waiting, &mut later).await.is_none());
    }

    #[test]
    fn a_quarter_of_the_pool_commits() {
        assert_eq!(committers(2), 1);
        assert_eq!(committers(16), 4);
        assert_eq!(committers(1000), 8);
    }
}
