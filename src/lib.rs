#![forbid(unsafe_code)]
//! bb2tc (placeholder, written in full below)
pub mod bitbucket;
pub mod clock;
pub mod config;
pub mod ids;
pub mod queue;
pub mod routing;
pub mod shutdown;
pub mod store;
pub mod teamcity;
