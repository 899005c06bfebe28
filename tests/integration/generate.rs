//! Shell completions and manual pages, generated from the command-line
//! definitions.

use std::process::Command;

use crate::common::*;

#[test]
fn completion_scripts_load_in_their_shells() {
    let (_tmp, dir) = tempdir();
    let cairn = Cairn::new(dir.join("repo"));
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = cairn.run(["completions", shell]);
        out.expect_success();
        assert!(
            out.stdout_text().contains("backup") && out.stdout_text().contains("repo"),
            "the {shell} script does not complete the subcommands and options\n{}",
            out.describe()
        );
    }
    // The bash script loads and registers a completion function for cairn.
    let script = dir.join("cairn.bash");
    std::fs::write(&script, cairn.run(["completions", "bash"]).stdout).unwrap();
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p cairn", s(&script)))
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("-F _cairn cairn"));

    cairn.run(["completions", "tcsh"]).expect_code(2);
}

#[test]
fn manual_pages_cover_every_command() {
    let (_tmp, dir) = tempdir();
    let cairn = Cairn::new(dir.join("repo"));
    let man = dir.join("man");
    let out = cairn.run(["generate", "man", s(&man)]);
    out.expect_success();
    let mut pages: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "cairn.1",
        "cairn-backup.1",
        "cairn-restore.1",
        "cairn-forget.1",
        "cairn-prune.1",
        "cairn-key-add.1",
        "cairn-schedule-install.1",
    ] {
        assert!(
            pages.contains(&page.to_string()),
            "{page} missing: {pages:?}"
        );
    }
    assert!(
        out.stdout_text()
            .starts_with(&format!("wrote {} manual pages to ", pages.len())),
        "{}",
        out.describe()
    );
    let backup = std::fs::read_to_string(man.join("cairn-backup.1")).unwrap();
    assert!(backup.contains(".TH cairn-backup 1"), "{backup}");
    assert!(backup.contains("exclude\\-if\\-present"), "{backup}");
}
