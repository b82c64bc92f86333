//! What every request handler shares: the config, the store, the queue, the TeamCity clients,
//! the token page's state and the admin token's hash.

use crate::config::{Config, TeamCityServer};
use crate::ids::{Secret, ServerId};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::store::{Store, StoreError};
use crate::teamcity::TeamCityClient;
use crate::web::WebState;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Shared state of a running bridge.
pub struct App {
    /// The validated config.
    pub config: Config,
    /// The store.
    pub store: Arc<Store>,
    /// The per-server workers.
    pub queue: Queue,
    /// One client per configured server.
    pub clients: HashMap<ServerId, TeamCityClient>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The token page's sign-ins under way and rate limits.
    pub web: WebState,
    /// Memory for webhook bodies being received.
    pub body_budget: crate::http::body_budget::BodyBudget,
    /// Bitbucket Cloud's API, for pull requests' head commits.
    pub cloud_api: crate::bitbucket::cloud_api::CloudApi,
    /// Bitbucket's branch heads, for builds run from the token page without a commit.
    pub branch_heads: crate::bitbucket::branch_head::BranchHeads,
    admin_token_hash: [u8; 32],
}

impl App {
    /// Assembles the state; `admin_token_hash` comes from [`admin_token_hash`]. Fails only
    /// when the Bitbucket Cloud API client cannot be set up.
    pub fn new(
        config: Config,
        store: Arc<Store>,
        queue: Queue,
        clients: HashMap<ServerId, TeamCityClient>,
        metrics: Arc<Metrics>,
        web: WebState,
        admin_token_hash: [u8; 32],
    ) -> Result<Self, crate::bitbucket::cloud_api::CloudApiError> {
        Ok(Self {
            cloud_api: crate::bitbucket::cloud_api::CloudApi::new()?,
            branch_heads: crate::bitbucket::branch_head::BranchHeads::new()
                .map_err(crate::bitbucket::cloud_api::CloudApiError::Unreachable)?,
            body_budget: crate::http::body_budget::BodyBudget::new(config.http.body_budget_bytes),
            config,
            store,
            queue,
            clients,
            metrics,
            web,
            admin_token_hash,
        })
    }

    /// The client for a configured server.
    pub fn client(&self, server: &TeamCityServer) -> Option<&TeamCityClient> {
        self.clients.get(&server.id)
    }

    /// A fingerprint of the current admin token, kept in admin sessions of the token page so
    /// that replacing the admin token ends them.
    pub fn admin_token_fingerprint(&self) -> String {
        let mut digest = Sha256::new();
        digest.update(b"bb2tc admin session\0");
        digest.update(self.admin_token_hash);
        hex::encode(&digest.finalize()[..16])
    }

    /// Whether `presented` is the admin token, compared in constant time (of the hashes).
    pub fn is_admin_token(&self, presented: &str) -> bool {
        sha256(presented).ct_eq(&self.admin_token_hash).into()
    }
}

/// The admin token's hash: the configured token's, else the one generated at first start.
/// A generated token is printed once on standard output and only its hash is kept.
pub async fn admin_token_hash(
    configured: Option<&Secret>,
    store: &Store,
) -> Result<[u8; 32], StoreError> {
    if let Some(token) = configured {
        return Ok(sha256(token.expose()));
    }
    if let Some(hash) = store.admin_token_hash().await? {
        return Ok(hash);
    }
    let token = hex::encode(rand::random::<[u8; 24]>());
    let hash = sha256(&token);
    store.set_admin_token_hash(hash).await?;
    println!(
        "bb2tc: generated an admin token (shown only this once; keep it, e.g. as BB2TC_ADMIN_TOKEN):\n{token}"
    );
    tracing::info!("generated an admin token and printed it on standard output");
    Ok(hash)
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}
