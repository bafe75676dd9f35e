//! `trellis validate FILE...`

use std::process::ExitCode;

use crate::cli::ValidateArgs;
use crate::report;

pub fn run(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut all_ok = true;
    for path in &args.files {
        let name = path.display().to_string();
        let text = match super::read(path) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("error: {e:#}");
                all_ok = false;
                continue;
            }
        };
        let (ok, problems) = match trellis_spec::load_str(&name, &text) {
            Ok(loaded) => {
                if args.check_runtime {
                    for warning in runtime_warnings(&loaded.dag) {
                        eprintln!("warning: {name}: {warning}");
                    }
                }
                (true, loaded.warnings)
            }
            Err(problems) => (false, problems),
        };
        all_ok &= ok;
        let shown: Vec<_> = problems
            .into_iter()
            .filter(|p| !(args.quiet && p.warning))
            .collect();
        if args.json {
            for p in &shown {
                println!("{}", report::problem_json(&name, &text, p));
            }
        } else if !shown.is_empty() {
            eprint!("{}", report::problems(&name, &text, &shown));
        }
        if !args.json && !args.quiet {
            summary(&name, ok, &shown);
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(report::EXIT_INVALID)
    })
}

/// What the DAG's steps need that does not answer: each executor's `probe` of each
/// distinct set of options (the DAG-level container's through the docker executor).
fn runtime_warnings(dag: &trellis_core::Dag) -> Vec<String> {
    let mut needs: Vec<(String, String, serde_json::Value)> = Vec::new();
    if let Some(container) = dag.run_container() {
        needs.push((
            "the DAG's container".into(),
            "docker".into(),
            container.clone(),
        ));
    }
    for step in &dag.steps {
        if let Some(e) = &step.executor {
            needs.push((
                format!("step `{}`", step.name),
                e.kind.clone(),
                e.config.clone(),
            ));
        }
    }
    if needs.is_empty() {
        return Vec::new();
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return vec!["cannot start a runtime to check".into()];
    };
    let registry = trellis_executor::Registry::builtin();
    let mut seen = std::collections::HashSet::new();
    let mut warnings = Vec::new();
    for (who, kind, config) in needs {
        let Some(executor) = registry.get(&kind) else {
            continue;
        };
        // The docker options reach one API each; probe each host once.
        let key = (kind.clone(), config.get("host").cloned());
        if !seen.insert(format!("{key:?}")) {
            continue;
        }
        if let Err(e) = runtime.block_on(executor.probe(&config)) {
            warnings.push(format!("{who} needs {kind}: {e}"));
        }
    }
    warnings
}

fn summary(name: &str, ok: bool, shown: &[trellis_spec::diag::Problem]) {
    let errors = shown.iter().filter(|p| !p.warning).count();
    let warnings = shown.len() - errors;
    match (ok, warnings) {
        (true, 0) => println!("{name}: ok"),
        (true, w) => println!("{name}: ok ({w} warning{})", plural(w)),
        (false, _) => eprintln!("{name}: {errors} error{}", plural(errors)),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
