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

/// A problem code with its 1-based line and column.
type Located = (&'static str, usize, usize);

/// Every error of every file: code, line and column, in report order. The snapshots show the
/// full reports; this table states the locations on their own, so that accepting a snapshot
/// by mistake cannot move a diagnostic unnoticed.
const EXPECTED: &[(&str, &[Located])] = &[
    (
        "bad_catchup_window.yaml",
        &[("spec::invalid-duration", 3, 17)],
    ),
    ("bad_dag_type.yaml", &[("spec::bad-enum", 2, 7)]),
    ("bad_expected_regex.yaml", &[("spec::invalid-value", 7, 19)]),
    ("bad_indentation.yaml", &[("spec::syntax", 7, 14)]),
    ("bad_log_output.yaml", &[("spec::bad-enum", 6, 17)]),
    ("bad_overlap_policy.yaml", &[("spec::bad-enum", 4, 17)]),
    (
        "conflict_dir_working_dir.yaml",
        &[("spec::conflicting-fields", 5, 5)],
    ),
    (
        "conflict_exec_command.yaml",
        &[("spec::conflicting-fields", 7, 5)],
    ),
    (
        "conflict_hist_retention.yaml",
        &[("spec::conflicting-fields", 3, 1)],
    ),
    (
        "conflict_tags_labels.yaml",
        &[("spec::conflicting-fields", 3, 1)],
    ),
    (
        "cron_minute_out_of_range.yaml",
        &[("spec::invalid-cron", 4, 5)],
    ),
    (
        "cron_wrong_field_count.yaml",
        &[("spec::invalid-cron", 3, 10)],
    ),
    ("cycle_three_steps.yaml", &[("spec::cycle", 3, 11)]),
    (
        "daggy_children_in_details.json",
        &[("spec::unknown-key", 6, 21)],
    ),
    ("daggy_malformed.json", &[("spec::syntax", 7, 5)]),
    ("daggy_obsolete_list.json", &[("spec::wrong-type", 3, 3)]),
    (
        "duplicate_step_names.yaml",
        &[("spec::duplicate-step", 7, 11)],
    ),
    ("empty.yaml", &[("spec::missing-field", 1, 1)]),
    (
        "many_problems.yaml",
        &[
            ("spec::invalid-cron", 2, 11),
            ("spec::bad-enum", 3, 17),
            ("spec::unknown-key", 6, 5),
            ("spec::wrong-type", 9, 18),
            ("spec::unknown-dependency", 10, 24),
            ("spec::invalid-value", 16, 16),
        ],
    ),
    (
        "parallel_without_call.yaml",
        &[("spec::missing-field", 5, 5)],
    ),
    (
        "param_default_not_in_enum.yaml",
        &[("spec::invalid-param", 4, 14)],
    ),
    (
        "param_default_wrong_type.yaml",
        &[("spec::invalid-param", 5, 14)],
    ),
    (
        "secret_provider_unsupported.yaml",
        &[("spec::unsupported", 4, 15)],
    ),
    ("self_dependency.yaml", &[("spec::cycle", 9, 9)]),
    (
        "step_nothing_to_run.yaml",
        &[("spec::missing-field", 5, 11)],
    ),
    ("subdag_without_name.yaml", &[("spec::missing-field", 6, 1)]),
    ("unclosed_quote.yaml", &[("spec::syntax", 4, 14)]),
    (
        "unknown_dependency.yaml",
        &[("spec::unknown-dependency", 10, 14)],
    ),
    ("unknown_key_typo.yaml", &[("spec::unknown-key", 8, 5)]),
    ("unknown_step_type.yaml", &[("spec::bad-enum", 4, 11)]),
    ("unknown_top_level_key.yaml", &[("spec::unknown-key", 2, 1)]),
    ("v1_bad_signal.yaml", &[("spec::bad-enum", 6, 19)]),
    (
        "v1_executor_and_type.yaml",
        &[("spec::conflicting-fields", 5, 5)],
    ),
    ("v1_handler_typo.yaml", &[("spec::unknown-key", 3, 3)]),
    (
        "v1_retry_without_limit.yaml",
        &[("spec::missing-field", 6, 7)],
    ),
    ("wrong_type_steps.yaml", &[("spec::wrong-type", 3, 8)]),
    ("wrong_type_timeout.yaml", &[("spec::wrong-type", 4, 18)]),
];

#[test]
fn every_error_is_where_the_mistake_is() {
    let files: Vec<String> = invalid_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: Vec<&str> = EXPECTED.iter().map(|(f, _)| *f).collect();
    assert_eq!(
        files, listed,
        "EXPECTED must list every file in tests/invalid"
    );
    for (file, expected) in EXPECTED {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/invalid")
                .join(file),
        )
        .unwrap();
        let problems = trellis_spec::load_str(file, &text).expect_err(file);
        let got: Vec<Located> = problems
            .iter()
            .filter(|p| !p.warning)
            .map(|p| {
                let (line, column) = p.line_col(&text);
                (p.code.as_str(), line, column)
            })
            .collect();
        assert_eq!(&got, expected, "{file}");
    }
}
