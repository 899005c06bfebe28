//! A node's token file, any text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(file) = cairn_index_server::access::TokensFile::parse(text) {
        for t in &file.token {
            let _ = (t.id(), t.role(), t.name());
        }
    }
});
