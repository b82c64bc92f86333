//! Any bytes as a Data Center push body: an error or a push, never a panic.
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
});
