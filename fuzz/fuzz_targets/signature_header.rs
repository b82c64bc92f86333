//! Any `X-Hub-Signature` value against a body: accepted only when it is the body's real
//! signature, refused otherwise, never a panic.
#![no_main]

use bb2tc::bitbucket::signature;
use bb2tc::ids::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: where the header ends and the body starts.
    let Some((&split, rest)) = data.split_first() else { return };
    let split = usize::from(split).min(rest.len());
    let (header, body) = rest.split_at(split);
    let secrets = [Secret::new("fuzz-secret")];
    let verdict = signature::verify(&secrets, Some(header), body);
    let genuine = signature::sign(b"fuzz-secret", body);
    if verdict.is_ok() {
        assert!(std::str::from_utf8(header).is_ok_and(|h| h.trim().eq_ignore_ascii_case(&genuine)));
    }
    assert!(signature::verify(&secrets, Some(genuine.as_bytes()), body).is_ok());
});
