//! A pack's footer and trailer as fetched from the store: any bytes.
#![no_main]
use cairn_fuzz::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|pack: &[u8]| {
    let size = pack.len() as u64;
    if pack.len() >= cairn_chunk_store::pack::FOOTER_LEN {
        let _ = cairn_chunk_store::pack::parse_footer(
            &pack[pack.len() - cairn_chunk_store::pack::FOOTER_LEN..],
            size,
        );
    }
    let _ = cairn_chunk_store::pack::read_trailer(keys(), cairn_fuzz::PACK, pack);
});
