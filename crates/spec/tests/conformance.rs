//! Loads the shared conformance corpora, when present next to the repository
//! (`../shared/conformance`), and checks that every file loads, or is rejected, exactly as
//! the corpus says. A clone without that folder skips these tests and says so.

use std::path::PathBuf;

fn corpus(kind: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance")
        .join(kind);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: conformance corpus {} not found", dir.display());
        None
    }
}

/// Load + param resolution fails exactly for the cases whose `trellis start` must exit 2.
#[test]
fn dagu_corpus_loads_or_is_rejected_as_expected() {
    let Some(dir) = corpus("dagu") else { return };
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (case, exp) in expected.as_object().unwrap() {
        let file = exp["file"].as_str().unwrap();
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let outcome = trellis_spec::load_str(file, &text)
            .map_err(|p| format!("{p:?}"))
            .and_then(|l| {
                trellis_spec::resolve_params(&l.dag, exp["params"].as_str(), &[])
                    .map_err(|e| format!("{e:?}"))
            });
        let must_reject = exp["exit"].as_i64() == Some(2);
        match (&outcome, must_reject) {
            (Ok(_), true) => wrong.push(format!("{case}: loaded, but must be rejected")),
            (Err(e), false) => wrong.push(format!("{case}: rejected: {e}")),
            _ => {}
        }
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} cases");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn daggy_corpus_loads_or_is_rejected_as_documented() {
    let Some(dir) = corpus("daggy") else { return };
    let load = |file: &str| {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        trellis_spec::load_str(file, &text)
    };
    for file in [
        "daggyr__basic__job.json",
        "daggyr__agent__job.json",
        "daggyr__test_expansion.json",
        "daggyr__test_generator.json",
        "daggyr__test_retry.json",
        "daggyr__test_simple_chain.json",
        "daggy_cpp__readme_example_reconstructed.json",
    ] {
        if let Err(problems) = load(file) {
            panic!("{file} must load: {problems:?}");
        }
    }
    let messages = |file: &str| -> String {
        let problems = load(file)
            .err()
            .unwrap_or_else(|| panic!("{file} must be rejected"));
        problems
            .iter()
            .map(|p| p.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(messages("daggyr__agent__big_job.json").contains("`children` inside `details`"));
    assert!(messages("daggyr__ssh__job.json").contains("`tasks` must be a mapping"));
    let expansion = load("daggyr__test_expansion.json").unwrap().dag;
    assert_eq!(expansion.steps.len(), 10, "1 + (3 + 2) + (2 + 2) vertices");
    // Executor details are acted on or warned about, never dropped in silence.
    let agent = load("daggyr__agent__job.json").unwrap();
    assert!(
        agent
            .warnings
            .iter()
            .any(|w| w.message.contains("`resources`"))
    );
    let slurm = load("daggyr__slurm_task_details.json").unwrap();
    assert_eq!(slurm.dag.steps[0].executor_kind(), "slurm");
    assert_eq!(slurm.warnings.len(), 2, "`user` and `jwt_token`");
    let kept = serde_json::to_string(&slurm.dag).unwrap();
    assert!(
        !kept.contains("TOKEN_FROM_scontrol_token"),
        "the token is never kept"
    );
}
