//! Dispatch leases (PostgreSQL, SPEC §7.1): each TeamCity server's jobs are sent by one
//! instance at a time, so the server's rate limit holds across the cluster. Each source's
//! build statuses, likewise, are posted by one instance at a time (lease `status:<source>`),
//! within the source's own limit.
//!
//! A keeper task per server takes the server's lease when it is free or expired, renews it
//! every [`RENEW_EVERY`], and counts it held only until [`LEASE_TTL`] (less a margin) after
//! the start of the last renewal that succeeded: a renewal that fails or does not answer in
//! time gives it up at once, before the database lets another instance take it. When the
//! holder dies, another instance takes over within `LEASE_TTL + RENEW_EVERY` (12 s).
//!
//! The worker of the server sends and polls only while its [`LeaseGate`] says held. On
//! gaining the lease it starts with an **empty** token bucket (the previous holder may
//! have just spent the burst), and the keeper hands it every job of the server the store
//! holds; while not holding it, the worker drops what it is handed. With sled there is no
//! keeper and no gate: the only instance always holds every server.

use super::Scheduled;
use crate::ids::{ServerId, SourceId};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long a lease lasts in the database after each renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often the holder renews it, and how often the others try to take it.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// How much before the database's expiry the holder stops counting the lease as held.
const MARGIN: Duration = Duration::from_secs(1);

/// Whether this instance holds a server's dispatch lease.
#[derive(Debug, Clone)]
pub struct LeaseGate(watch::Receiver<bool>);

impl LeaseGate {
    /// Held now.
    pub fn held(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until it changes; `false` when its keeper stopped.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// What a worker not holding its lease learnt while it waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idle {
    /// Shutdown, or the keeper or the inbox is gone.
    Stop,
    /// The lease is held now: start with an empty bucket.
    Gained,
    /// Still not held (what it was handed was dropped).
    Waiting,
}

/// Waits, while the lease is not held, for it to change — dropping what the worker is
/// handed meanwhile (the holder has those jobs; they come back when the lease is gained).
pub(super) async fn idle(
    gate: &mut LeaseGate,
    shutdown: &mut Shutdown,
    inbox: &mut mpsc::UnboundedReceiver<Scheduled>,
) -> Idle {
    tokio::select! {
        biased;
        _ = shutdown.wait() => Idle::Stop,
        changed = gate.changed() => match changed {
            false => Idle::Stop,
            true if gate.held() => Idle::Gained,
            true => Idle::Waiting,
        },
        message = inbox.recv() => match message {
            None => Idle::Stop,
            Some(_) => Idle::Waiting,
        },
    }
}

/// A gate and the sender its keeper sets.
pub(super) fn gate() -> (watch::Sender<bool>, LeaseGate) {
    let (tx, rx) = watch::channel(false);
    (tx, LeaseGate(rx))
}

/// What the keeper does after a try to take or renew the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Gained it: the worker starts (empty bucket, every job of the server handed over).
    Gained,
    /// Still held.
    Kept,
    /// Lost it (or never had it): the worker stops at once.
    Lost,
    /// Not held, and still not.
    Waiting,
}

/// The keeper's decision: `held` before, `taken` whether the try succeeded in time.
pub(super) fn step(held: bool, taken: bool) -> Step {
    match (held, taken) {
        (false, true) => Step::Gained,
        (true, true) => Step::Kept,
        (true, false) => Step::Lost,
        (false, false) => Step::Waiting,
    }
}

/// What a lease is for.
#[derive(Debug, Clone)]
pub(super) enum Leased {
    /// A TeamCity server's jobs.
    Server(ServerId),
    /// A Bitbucket source's build statuses.
    Statuses(SourceId),
}

impl Leased {
    /// The lease's row (ids hold no `:`, so the two kinds never meet).
    fn name(&self) -> String {
        match self {
            Leased::Server(id) => id.to_string(),
            Leased::Statuses(id) => format!("status:{id}"),
        }
    }
}

/// Keeps one lease for this instance while it can.
pub(super) struct LeaseKeeper {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub leased: Leased,
    pub held: watch::Sender<bool>,
    /// The worker, handed what it sends when the lease is gained.
    pub inbox: mpsc::UnboundedSender<Scheduled>,
    pub shutdown: Shutdown,
}

impl LeaseKeeper {
    pub async fn run(mut self) {
        let name = self.leased.name();
        let mut valid_until: Option<Instant> = None;
        loop {
            let started = Instant::now();
            // A renewal must answer while the lease is still ours; a take, within a round.
            let deadline = valid_until.unwrap_or(started + RENEW_EVERY * 2);
            let attempt =
                tokio::time::timeout_at(deadline, self.store.take_dispatch_lease(&name, LEASE_TTL));
            let taken = tokio::select! {
                biased;
                _ = self.shutdown.wait() => break,
                taken = attempt => match taken {
                    Ok(Ok(taken)) => taken,
                    Ok(Err(e)) => {
                        tracing::warn!(lease = %name, error = %e, "cannot take or renew the dispatch lease");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(lease = %name, "the dispatch lease's renewal did not answer in time");
                        false
                    }
                },
            };
            match step(valid_until.is_some(), taken) {
                Step::Gained => {
                    valid_until = self.gained().await.then_some(started + LEASE_TTL - MARGIN);
                }
                Step::Kept => valid_until = Some(started + LEASE_TTL - MARGIN),
                Step::Lost => {
                    valid_until = None;
                    self.set(false);
                    tracing::warn!(lease = %name, "lost the dispatch lease; another instance sends these jobs");
                }
                Step::Waiting => {}
            }
            tokio::select! {
                biased;
                _ = self.shutdown.wait() => break,
                _ = tokio::time::sleep_until(started + RENEW_EVERY) => {}
            }
        }
        if valid_until.is_some() {
            self.set(false);
            if let Err(e) = self.store.give_up_dispatch_lease(&name).await {
                tracing::warn!(lease = %name, error = %e, "cannot give up the dispatch lease; it expires by itself");
            }
        }
    }

    fn set(&self, held: bool) {
        self.held.send_replace(held);
        if let Leased::Server(server) = &self.leased {
            self.metrics.dispatch_lease(server.as_str(), held);
        }
    }

    /// The lease is ours: the worker opens, then is handed every job it sends (those made
    /// from now on arrive as they are made). `false` when it was given up again.
    async fn gained(&self) -> bool {
        self.set(true);
        let name = self.leased.name();
        tracing::info!(lease = %name, "holding the dispatch lease: this instance sends these jobs");
        let jobs = match &self.leased {
            Leased::Server(server) => self.store.resume_server_jobs(server).await,
            Leased::Statuses(source) => self.store.resume_status_jobs(source).await,
        };
        match jobs {
            Ok(jobs) => {
                for job in &jobs {
                    super::hand_to(&self.inbox, job);
                }
                true
            }
            Err(e) => {
                // Without its jobs the worker would send nothing: let another instance try.
                tracing::error!(lease = %name, error = %e, "cannot read the jobs to send; giving the lease up");
                self.set(false);
                let _ = self.store.give_up_dispatch_lease(&name).await;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_renewal_gives_the_lease_up_at_once() {
        assert_eq!(step(false, true), Step::Gained);
        assert_eq!(step(true, true), Step::Kept);
        assert_eq!(step(true, false), Step::Lost);
        assert_eq!(step(false, false), Step::Waiting);
    }

    #[test]
    fn the_holder_stops_before_another_can_take_over() {
        // Counted held until TTL - MARGIN after the renewal began; the database lets another
        // instance take it only at TTL after the renewal reached it (later still).
        const { assert!(MARGIN.as_millis() > 0 && MARGIN.as_millis() < LEASE_TTL.as_millis()) };
        // Another instance tries every RENEW_EVERY, so it takes over within 15 s of a death.
        assert!(LEASE_TTL + RENEW_EVERY <= Duration::from_secs(15));
    }
}
