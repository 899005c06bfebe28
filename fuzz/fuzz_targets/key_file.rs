//! A key file from the store: decoded, and its Argon2 parameters checked
//! (never run: a hostile file may ask for any cost).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(record) = cairn_chunk_store::keys::decode(bytes) {
        let _ = cairn_chunk_store::keys::params_of(&record);
    }
});
