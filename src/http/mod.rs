//! The HTTP interface (SPEC §4): the accept loop, routing, and one file per endpoint group.

mod admin_jobs;
mod admin_tokens;
pub mod body_budget;
mod error;
mod health;
pub mod response;
mod router;
mod server;
mod webhook;

pub use error::ApiError;
pub use server::serve;
