//! Partitions and their owners.
//!
//! A chunk id's first 12 bits name its partition (4096 partitions; ids are
//! uniformly random, so partitions are even and each is one contiguous key
//! range). Each partition lives on the R nodes with the highest rendezvous
//! score `blake3(node id || partition)`: adding or removing one of N nodes
//! moves only the partitions whose top-R set changes, about R/N of them.
//! With capacities ([`owners_weighted`]), a node of capacity `w` wins a
//! partition `w` times as often as one of capacity 1 (weighted rendezvous:
//! score `w / -ln(u)` for the node's uniform hash `u`); with equal
//! capacities the order is exactly [`owners`]'s, so clients that predate
//! capacities place partitions alike.

use cairn_chunk_store::ChunkId;

/// Number of partitions. Fixed: it is part of the wire contract.
pub const PARTITIONS: u32 = 4096;

/// The partition of a chunk.
pub fn partition_of(id: &ChunkId) -> u32 {
    let b = id.as_bytes();
    (u32::from(b[0]) << 4) | (u32::from(b[1]) >> 4)
}

/// The first key (32 bytes) of a partition, and the first key after it.
pub fn partition_range(partition: u32) -> ([u8; 32], Option<[u8; 32]>) {
    let key = |p: u32| {
        let mut k = [0u8; 32];
        k[0] = (p >> 4) as u8;
        k[1] = ((p & 0xf) << 4) as u8;
        k
    };
    let end = (partition + 1 < PARTITIONS).then(|| key(partition + 1));
    (key(partition), end)
}

fn score(node: &str, partition: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(node.as_bytes());
    h.update(&partition.to_le_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(out)
}

/// Indices into `nodes` of the owners of `partition`, best first.
pub fn owners<S: AsRef<str>>(nodes: &[S], partition: u32, replication: usize) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (score(n.as_ref(), partition), i))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored
        .into_iter()
        .take(replication.max(1))
        .map(|(_, i)| i)
        .collect()
}

/// Indices into `nodes` (id, capacity) of the owners of `partition`, best
/// first. A capacity of 0 counts as 1.
pub fn owners_weighted<S: AsRef<str>>(
    nodes: &[(S, u32)],
    partition: u32,
    replication: usize,
) -> Vec<usize> {
    let mut scored: Vec<(f64, u64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, (n, w))| {
            let h = score(n.as_ref(), partition);
            // u in (0, 1): (h + 0.5) / 2^64, never 0 or 1.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (f64::from((*w).max(1)) / -u.ln(), h, i)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    scored
        .into_iter()
        .take(replication.max(1))
        .map(|(_, _, i)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_ids_in_order() {
        assert_eq!(partition_of(&ChunkId::from_bytes([0; 32])), 0);
        assert_eq!(
            partition_of(&ChunkId::from_bytes([0xff; 32])),
            PARTITIONS - 1
        );
        let (start, end) = partition_range(0x123);
        let mut id = start;
        assert_eq!(partition_of(&ChunkId::from_bytes(id)), 0x123);
        id[1] |= 0x0f;
        id[2] = 0xff;
        assert_eq!(partition_of(&ChunkId::from_bytes(id)), 0x123);
        assert_eq!(partition_of(&ChunkId::from_bytes(end.unwrap())), 0x124);
        assert!(partition_range(PARTITIONS - 1).1.is_none());
    }

    #[test]
    fn adding_a_node_moves_about_a_quarter() {
        let three = ["n1", "n2", "n3"];
        let four = ["n1", "n2", "n3", "n4"];
        let moved = (0..PARTITIONS)
            .filter(|&p| {
                let a: Vec<&str> = owners(&three, p, 1).into_iter().map(|i| three[i]).collect();
                let b: Vec<&str> = owners(&four, p, 1).into_iter().map(|i| four[i]).collect();
                a != b
            })
            .count();
        let share = moved as f64 / f64::from(PARTITIONS);
        assert!((0.18..0.32).contains(&share), "{share}");
        // Owners are distinct and deterministic.
        let o = owners(&four, 7, 2);
        assert_eq!(o.len(), 2);
        assert_ne!(o[0], o[1]);
        assert_eq!(o, owners(&four, 7, 2));
    }

    #[test]
    fn equal_capacities_place_like_plain_rendezvous() {
        let nodes = ["n0", "n1", "n2", "n3", "n4"];
        let weighted: Vec<(&str, u32)> = nodes.iter().map(|n| (*n, 1)).collect();
        for p in 0..PARTITIONS {
            assert_eq!(
                owners(&nodes, p, 3),
                owners_weighted(&weighted, p, 3),
                "{p}"
            );
        }
    }

    #[test]
    fn a_node_of_double_capacity_owns_twice_as_many() {
        let nodes = [("small", 1), ("big", 2), ("other", 1)];
        let mut wins = [0u32; 3];
        for p in 0..PARTITIONS {
            wins[owners_weighted(&nodes, p, 1)[0]] += 1;
        }
        let share = f64::from(wins[1]) / f64::from(PARTITIONS);
        assert!((0.46..0.54).contains(&share), "{wins:?}");
    }
}
