//! A repository config whose envelope authenticates, with any body and
//! any version the envelope may claim.
#![no_main]
use cairn_chunk_store::config::RepoConfig;
use cairn_chunk_store::envelope::{self, CONFIG_MAGIC};
use cairn_fuzz::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &[u8])| {
    let (version, body) = input;
    let config_keys = keys().with_cipher(cairn_chunk_store::crypto::Cipher::XChaCha20Poly1305);
    let sealed = envelope::seal(&config_keys, CONFIG_MAGIC, u16::from(version % 8), body);
    if let Ok(c) = RepoConfig::open(keys(), &sealed) {
        assert_eq!(RepoConfig::from_record(c.to_record()).ok().map(|d| d.repo_id), Some(c.repo_id));
    }
});
