//! Black-box tests: a real bb2tc (`bb2tc::run` on 127.0.0.1:0, or the binary), a real sled
//! store in a temp dir, and a fake TeamCity that records what it receives.

mod browser;
mod build_statuses;
mod check_for_changes;
mod cli;
mod copy_store;
mod delivery;
mod disk_full;
mod durability;
mod exactly_once;
mod following;
mod hostile_input;
mod intake_log;
mod observability;
mod page_builds;
mod postgres_ha;
mod pull_requests;
mod pushes;
mod rate_limit;
mod restart;
mod support;
mod token_page;
mod tokens_api;
mod upgrade;
mod webhook_checks;
