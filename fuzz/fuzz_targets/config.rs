//! Any text as a config file: a config or an error naming the problem, never a panic.
#![no_main]

use bb2tc::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let env = |name: &str| (name == "SET").then(|| "value".to_string());
    if let Ok(config) = Config::from_toml_str(text, &env) {
        let _ = config.summary();
    }
});
