//! Every request message a node decodes, from any bytes, and the checks
//! the node applies to the ids and entries in it.
#![no_main]
use cairn_chunk_store::PackId;
use cairn_proto::convert::{entry_from_wire, from_bitmap, unpack_ids};
use cairn_proto::{MAX_BATCH, v1};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|input: (u8, &[u8])| {
    let (which, bytes) = input;
    match which % 16 {
        0 => {
            if let Ok(r) = v1::UnknownChunksRequest::decode(bytes) {
                let _ = unpack_ids(&r.ids, MAX_BATCH);
            }
        }
        1 => {
            if let Ok(r) = v1::RegisterPackRequest::decode(bytes) {
                if let Ok(pack) = PackId::from_slice(&r.pack_id) {
                    for e in &r.entries {
                        let _ = entry_from_wire(pack, e);
                    }
                }
            }
        }
        2 => {
            if let Ok(r) = v1::RelocatePackRequest::decode(bytes) {
                if let Ok(pack) = PackId::from_slice(&r.pack_id) {
                    for e in &r.entries {
                        let _ = entry_from_wire(pack, e);
                    }
                }
            }
        }
        3 => {
            if let Ok(r) = v1::LocateRequest::decode(bytes) {
                let _ = unpack_ids(&r.ids, MAX_BATCH);
            }
        }
        4 => drop(v1::GetFilterRequest::decode(bytes)),
        5 => drop(v1::ClearRepositoryRequest::decode(bytes)),
        6 => drop(v1::BeginSessionRequest::decode(bytes)),
        7 => drop(v1::RenewSessionRequest::decode(bytes)),
        8 => drop(v1::CommitManifestRequest::decode(bytes)),
        9 => drop(v1::EndSessionRequest::decode(bytes)),
        10 => drop(v1::ListSessionsRequest::decode(bytes)),
        11 => {
            if let Ok(r) = v1::CondemnRequest::decode(bytes) {
                let _ = unpack_ids(&r.ids, MAX_BATCH);
            }
        }
        12 => drop(v1::PackStatesRequest::decode(bytes)),
        13 => drop(v1::ClusterMapRequest::decode(bytes)),
        14 => drop(v1::CommitTimesRequest::decode(bytes)),
        _ => {
            // What a client decodes of an answer: bitmaps of any length.
            let _ = from_bitmap(bytes, bytes.len() * 8 + 3);
        }
    }
});
