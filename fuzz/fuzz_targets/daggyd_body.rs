//! Arbitrary text as the body POSTed to daggyd (`trellis_daggyd::prepare::prepare`), once
//! for each executor the daemon can run: forking, Slurm (no defaults) and no-op. It must
//! never panic; a refusal lists at least one problem; and every problem, or every warning
//! when it accepts, points into the text: line 1 to (number of lines + 1), column 1 to
//! (the line's length in bytes + 1). Columns are bounded in bytes, the looser unit:
//! serde_json counts bytes, the spec loader characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_daggyd::config::Executor;
use trellis_daggyd::prepare::{Problem, prepare};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let executors = [
        Executor::Forking { threads: 10 },
        Executor::Slurm {
            defaults: Default::default(),
        },
        Executor::Noop,
    ];
    for executor in &executors {
        match prepare(text, "daggy", executor) {
            Ok(prepared) => check(text, &lines, executor, "warning", &prepared.warnings),
            Err(problems) => {
                assert!(
                    !problems.is_empty(),
                    "{executor:?}: refused with no problem"
                );
                check(text, &lines, executor, "problem", &problems);
            }
        }
    }
});

fn check(text: &str, lines: &[&str], executor: &Executor, what: &str, problems: &[Problem]) {
    for p in problems {
        assert!(
            p.line >= 1 && p.line <= lines.len() + 1,
            "{executor:?}: {what} at line {} outside 1..={} for {:?} in {text:?}",
            p.line,
            lines.len() + 1,
            p.message
        );
        let width = lines.get(p.line - 1).map_or(0, |l| l.len());
        assert!(
            p.column >= 1 && p.column <= width + 1,
            "{executor:?}: {what} at column {} outside 1..={} on line {} for {:?} in {text:?}",
            p.column,
            width + 1,
            p.line,
            p.message
        );
    }
}
