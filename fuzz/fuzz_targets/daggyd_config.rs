//! Arbitrary text as daggyd's JSON config file (`trellis_daggyd::config::Config::parse`).
//! It must never panic; a config it accepts must keep the limits it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_daggyd::config::{Config, Executor};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((config, _warnings)) = Config::parse(text) {
        assert!(config.web_threads >= 1, "web-threads 0 accepted");
        assert!(config.dag_threads >= 1, "dag-threads 0 accepted");
        if let Executor::Forking { threads } = config.executor {
            assert!(threads >= 1, "executor threads 0 accepted");
        }
    }
});
