//! A pack whose trailer authenticates but holds anything: what a writer
//! with the key (a buggy or compromised client) can make.
#![no_main]
use cairn_chunk_store::pack::{FOOTER_LEN, TRAILER_AAD, read_trailer};
use cairn_fuzz::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, &[u8])| {
    let (data_len, trailer) = input;
    let mut pack = vec![0u8; usize::from(data_len)];
    let sealed = keys().seal(TRAILER_AAD, trailer);
    pack.extend_from_slice(&sealed);
    let mut footer = [0u8; FOOTER_LEN];
    footer[..8].copy_from_slice(b"CAIRNPAK");
    footer[8..10].copy_from_slice(&1u16.to_le_bytes());
    footer[12..16].copy_from_slice(&(sealed.len() as u32).to_le_bytes());
    pack.extend_from_slice(&footer);
    if let Ok(entries) = read_trailer(keys(), cairn_fuzz::PACK, &pack) {
        for e in entries {
            assert!(e.location.offset + u64::from(e.location.stored_len) <= u64::from(data_len));
        }
    }
});
