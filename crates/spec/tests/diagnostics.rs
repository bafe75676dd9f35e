//! Snapshot tests of the diagnostics for every file in `tests/invalid/`.
//!
//! Each file holds one realistic mistake (or, for `many_problems.yaml`, several at once).
//! The rendered report is what `trellis validate` prints when stderr is not a terminal, so
//! these snapshots are the user-visible contract: location, message, label and help.

use std::path::{Path, PathBuf};

fn invalid_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn there_are_enough_invalid_files() {
    let files = invalid_files();
    assert!(
        files.len() >= 24,
        "expected at least 24 invalid files, found {}",
        files.len()
    );
}

#[test]
fn every_invalid_file_fails_with_a_located_report() {
    let mut failures = Vec::new();
    for path in invalid_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let display = format!("invalid/{file}");
        let text = std::fs::read_to_string(&path).unwrap();
        let problems = match trellis_spec::load_str(&display, &text) {
            Ok(loaded) => {
                failures.push(format!(
                    "{display} loaded but should not have (warnings: {:?})",
                    loaded.warnings
                ));
                continue;
            }
            Err(problems) => problems,
        };
        assert!(
            problems.iter().any(|p| !p.warning),
            "{display}: rejected without any error"
        );
        let rendered = trellis_spec::diag::render_plain(&display, &text, &problems);
        assert!(
            !rendered.contains(env!("CARGO_MANIFEST_DIR")),
            "{display}: report contains an absolute path"
        );
        let snapshot = file.replace('.', "_");
        insta::assert_snapshot!(snapshot, rendered);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
