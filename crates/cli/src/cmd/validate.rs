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
            Ok(loaded) => (true, loaded.warnings),
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
