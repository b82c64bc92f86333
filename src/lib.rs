#![forbid(unsafe_code)]
//! bb2tc (placeholder, written in full below)
pub mod bitbucket;
pub mod config;
pub mod ids;
pub mod routing;
pub mod clock;
pub mod store;
