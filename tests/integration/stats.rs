//! `cairn stats`: sizes, distinct contents and what deduplication saves,
//! to the byte.

use std::fs;

use crate::common::*;

const MIB: u64 = 1 << 20;

#[test]
fn stats_count_restore_size_distinct_contents_and_savings() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    write_random_file(&src.join("a.bin"), MIB, 1);
    fs::copy(src.join("a.bin"), src.join("b.bin")).unwrap();
    fs::write(src.join("c.txt"), "compressible line\n".repeat(58_255)).unwrap();
    let c_size = fs::metadata(src.join("c.txt")).unwrap().len();
    let first = cairn.backup(&[&src], &[]);
    cairn.backup(&[&src], &[]);

    let all = cairn.run(["stats", "--json"]);
    all.expect_success();
    let all = all.json();
    assert_eq!(all["snapshots"], 2);
    assert_eq!(all["files"], 6);
    assert_eq!(all["restore_size"], 2 * (2 * MIB + c_size));
    assert_eq!(all["unique_files"], 2);
    assert_eq!(all["unique_files_size"], MIB + c_size);
    assert_eq!(all["raw_data_size"], MIB + c_size, "{all}");
    let dedup = all["dedup_ratio"].as_f64().unwrap();
    let expected = (2 * (2 * MIB + c_size)) as f64 / (MIB + c_size) as f64;
    assert!((dedup - expected).abs() < 1e-9, "{dedup} vs {expected}");
    // The text file compresses; the random one cannot.
    assert!(all["compression_ratio"].as_f64().unwrap() > 1.5, "{all}");
    assert!(all["stored_size"].as_u64().unwrap() < all["raw_size"].as_u64().unwrap());

    let one = cairn.run(["stats", "--json", &first.snapshot_id()]);
    one.expect_success();
    let one = one.json();
    assert_eq!(one["snapshots"], 1);
    assert_eq!(one["restore_size"], 2 * MIB + c_size);
    // The second snapshot of an unchanged tree needs nothing more.
    assert_eq!(one["chunks"], all["chunks"]);
    assert_eq!(one["tree_chunks"], all["tree_chunks"]);

    let text = cairn.run(["stats", "--mode", "raw-data"]);
    text.expect_success();
    let lines = text.lines();
    assert_eq!(lines[0], "snapshots:         2");
    assert!(lines[1].starts_with("unique chunks:     "), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("deduplication:     {expected:.2}x")),
        "{lines:?}"
    );
    let text = cairn.run(["stats", "--mode", "files-by-contents"]);
    text.expect_success();
    assert_eq!(text.lines()[1], "unique files:      2");
    cairn.run(["stats", "--mode", "everything"]).expect_code(2);
}
