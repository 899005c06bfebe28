//! Records as the index reads them back from RocksDB: chunk, pack,
//! session and commit records of any bytes.
#![no_main]
use cairn_index::record::{decode_chunk, decode_commit, decode_pack, decode_session, encode_chunk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(r) = decode_chunk(bytes) {
        assert_eq!(decode_chunk(&encode_chunk(&r)).ok(), Some(r));
    }
    let _ = decode_pack(bytes);
    let _ = decode_session([7; 16], bytes);
    let _ = decode_commit(bytes);
});
