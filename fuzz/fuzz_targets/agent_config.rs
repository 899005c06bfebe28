//! The agent's TOML config file, any text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = cairn_client::agent::config::parse(std::path::Path::new("/fuzz/agent.toml"), text);
});
