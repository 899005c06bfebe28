//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/`), written from real objects:
//! the fixture repository the other tests read (packs, trailers, chunks,
//! trees, manifests, key files, the config), records and requests made from
//! its entries, the example agent config, schedules and a token file made
//! by `cairn-index token add`. Run:
//! `cargo test -p cairn-client --test integration -- --ignored fuzz_seeds`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cairn_chunk_store::config::SizeProtection;
use cairn_chunk_store::pack::{BlobKind, Compression, TRAILER_AAD, blob_aad};
use cairn_chunk_store::store::LocalStore;
use cairn_chunk_store::{ChunkId, Repository};
use cairn_index::record::{encode_chunk, encode_commit, encode_pack, encode_session};
use cairn_proto::convert::{entry_to_wire, pack_ids};
use cairn_proto::v1;
use prost::Message;

use crate::cluster::index_binary;
/// The fixture repositories' password (see `fixture.rs`).
const PASSWORD: &str = "cairn-fixture";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn with_tag(tag: &[u8], rest: &[u8]) -> Vec<u8> {
    [tag, rest].concat()
}

#[test]
#[ignore = "writes the committed seed corpora"]
fn write_fuzz_seed_corpora() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fixture = root().join("tests/fixtures/repo-v2");
    let repo = rt
        .block_on(Repository::open(
            Arc::new(LocalStore::new(fixture.clone())),
            PASSWORD.as_bytes(),
        ))
        .unwrap();
    let keys = repo.keys();

    // Packs: the tail (footer and trailer) of each, and its trailer's
    // plaintext; each chunk's sealed payload; trees in plain.
    let mut entries = Vec::new();
    for (n, (id, size)) in rt
        .block_on(repo.list_packs())
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let hex = id.to_hex();
        let bytes = std::fs::read(fixture.join("packs").join(&hex[..2]).join(&hex)).unwrap();
        let tail = &bytes[bytes.len().saturating_sub(16 * 1024)..];
        write("pack_footer", &format!("pack{n}"), tail);
        let trailer_len = cairn_chunk_store::pack::parse_footer(
            &bytes[bytes.len() - cairn_chunk_store::pack::FOOTER_LEN..],
            size,
        )
        .unwrap() as usize;
        let data_len = bytes.len() - cairn_chunk_store::pack::FOOTER_LEN - trailer_len;
        let plain = keys
            .open(TRAILER_AAD, &bytes[data_len..data_len + trailer_len])
            .unwrap();
        write(
            "pack_trailer",
            &format!("trailer{n}"),
            &with_tag(&(data_len.min(65_535) as u16).to_le_bytes(), &plain),
        );
        let pack_entries = rt
            .block_on(repo.read_pack_trailer(&id, Some(size)))
            .unwrap();
        for (k, e) in pack_entries.iter().enumerate().take(24) {
            let loc = &e.location;
            let sealed =
                &bytes[loc.offset as usize..(loc.offset + u64::from(loc.stored_len)) as usize];
            let payload = keys.open(&blob_aad(&e.id, loc.kind), sealed).unwrap();
            let mut seed = loc.raw_len.to_le_bytes().to_vec();
            seed.push(u8::from(loc.compression == Compression::Zstd));
            seed.push(u8::from(loc.kind == BlobKind::Tree));
            if payload.len() <= 64 * 1024 {
                // The same payload padded (compression + 2): body, zeros,
                // their count, as a repository that pads seals it.
                let mut padded = seed.clone();
                padded[4] += 2;
                padded.extend_from_slice(&payload);
                padded.extend_from_slice(&[0; 13]);
                padded.extend_from_slice(&13u32.to_le_bytes());
                write(
                    "chunk",
                    &format!("pack{n}-chunk{k}"),
                    &[seed, payload].concat(),
                );
                if k < 2 {
                    write("chunk", &format!("pack{n}-chunk{k}-padded"), &padded);
                }
            }
            if loc.kind == BlobKind::Tree {
                let tree = rt.block_on(repo.read_blob(&e.id, loc)).unwrap();
                write("tree", &format!("pack{n}-tree{k}"), &tree);
            }
        }
        entries.extend(pack_entries);
    }

    // Manifests, key files, the config.
    for (n, (_, snap)) in rt.block_on(repo.snapshots()).unwrap().iter().enumerate() {
        write("manifest", &format!("snapshot{n}"), &snap.encode_to_vec());
    }
    for (n, f) in std::fs::read_dir(fixture.join("keys")).unwrap().enumerate() {
        write(
            "key_file",
            &format!("key{n}"),
            &std::fs::read(f.unwrap().path()).unwrap(),
        );
    }
    let config = repo.config();
    write(
        "config",
        "config",
        &with_tag(
            &[config.version() as u8],
            &config.to_record().encode_to_vec(),
        ),
    );
    let v5 = config.clone().with_size_protection(SizeProtection::DEFAULT);
    write(
        "config",
        "config-v5",
        &with_tag(&[v5.version() as u8], &v5.to_record().encode_to_vec()),
    );

    // Index records and requests made of the fixture's entries.
    for (n, e) in entries.iter().enumerate().take(8) {
        let rec = cairn_index::ChunkRecord {
            location: e.location,
            first_seen: 1_733_280_000,
            last_seen: 1_733_290_000,
            condemned: n % 2 == 1,
        };
        write("index_records", &format!("chunk{n}"), &encode_chunk(&rec));
    }
    let pack = cairn_index::record::PackRecord {
        kind: 0,
        count: entries.len() as u32,
        registered: 1_733_280_000,
        dead_since: 0,
        deleted: false,
    };
    write("index_records", "pack", &encode_pack(&pack));
    let session = cairn_index::Session {
        id: [3; 16],
        host: "laptop".into(),
        parent: None,
        started: 1_733_280_000,
        expires: 1_733_280_300,
        lease: 300,
        committed: None,
    };
    write("index_records", "session", &encode_session(&session));
    let commit = cairn_index::CommitTime {
        committed: 1_733_280_100,
        started: 1_733_280_000,
    };
    write("index_records", "commit", &encode_commit(&commit));

    let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).take(64).collect();
    let repo_id = bytes::Bytes::from(repo.config().repo_id.as_bytes().to_vec());
    let first = entries[0].location.pack;
    let requests: Vec<(u8, Vec<u8>)> = vec![
        (
            0,
            v1::UnknownChunksRequest {
                repo_id: repo_id.clone(),
                ids: pack_ids(&ids).into(),
            }
            .encode_to_vec(),
        ),
        (
            1,
            v1::RegisterPackRequest {
                repo_id: repo_id.clone(),
                pack_id: first.as_bytes().to_vec().into(),
                entries: entries
                    .iter()
                    .filter(|e| e.location.pack == first)
                    .map(entry_to_wire)
                    .collect(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            3,
            v1::LocateRequest {
                repo_id: repo_id.clone(),
                ids: pack_ids(&ids).into(),
            }
            .encode_to_vec(),
        ),
        (
            6,
            v1::BeginSessionRequest {
                repo_id: repo_id.clone(),
                host: "laptop".into(),
                lease_seconds: 300,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            11,
            v1::CondemnRequest {
                repo_id: repo_id.clone(),
                ids: pack_ids(&ids).into(),
                cutoff_unix: 1_733_280_000,
            }
            .encode_to_vec(),
        ),
        (
            14,
            v1::CommitTimesRequest {
                repo_id,
                snapshot_ids: vec![vec![9u8; 32].into()],
            }
            .encode_to_vec(),
        ),
    ];
    for (which, body) in requests {
        write(
            "grpc_requests",
            &format!("request{which}"),
            &with_tag(&[which], &body),
        );
    }

    // Text inputs.
    let example = std::fs::read(root().join("contrib/cairn.example.toml")).unwrap();
    write("agent_config", "example", &example);
    for (n, s) in [
        "0 3 * * *",
        "30 2 * * *",
        "*/15 8-18 * * mon-fri",
        "hourly",
        "daily",
        "@weekly",
        "0 0 1 */3 *",
    ]
    .iter()
    .enumerate()
    {
        write("cron", &format!("schedule{n}"), s.as_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    for role in ["restore", "backup", "prune", "admin"] {
        let ok = Command::new(index_binary())
            .args([
                "token",
                "add",
                "--repository",
                &repo.config().repo_id.to_hex(),
            ])
            .args([
                "--role",
                role,
                "--label",
                &format!("{role}-seed"),
                "--expires",
                "1d",
            ])
            .arg("--tokens")
            .arg(&tokens)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok);
    }
    write("token_file", "tokens", &std::fs::read(&tokens).unwrap());
}
