//! Any bytes as a Data Center push or pull-request body: an error or the event, never a panic.
#![no_main]

use bb2tc::config::SourceKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(push) = bb2tc::bitbucket::parse_push(SourceKind::DataCenter, body) {
        for change in &push.changes {
            let _ = change.logical_name();
            let _ = change.target.as_ref().map(|sha| sha.short().len());
        }
    }
    for key in [
        "pr:opened",
        "pr:from_ref_updated",
        "pr:modified",
        "pr:merged",
        "pr:declined",
        "pr:deleted",
    ] {
        if let Ok(pr) = bb2tc::bitbucket::parse_pull_request(SourceKind::DataCenter, key, body) {
            let _ = (pr.is_fork(), pr.source.logical_name().len());
            let _ = pr
                .source
                .target
                .as_ref()
                .map(|sha| (sha.short().len(), sha.prefix12().len()));
        }
    }
});
