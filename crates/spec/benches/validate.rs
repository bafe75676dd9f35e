//! Benchmark: loading and validating generated 10 000-step DAGs.
//!
//! Run with `cargo bench -p trellis-spec --bench validate`. Prints a table; asserts nothing.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A chain of `n` steps (each depends on the previous, Dagu's default).
fn chain(n: usize) -> String {
    let mut s = String::from("name: chain\nsteps:\n");
    for i in 0..n {
        let _ = writeln!(s, "  - name: s{i}\n    command: echo {i}");
    }
    s
}

/// A graph of `n` steps: each depends on up to three earlier steps, plus outputs and env.
fn graph(n: usize) -> String {
    let mut s = String::from("name: graph\ntype: graph\nenv:\n  - A: 1\nsteps:\n");
    for i in 0..n {
        let _ = write!(
            s,
            "  - name: s{i}\n    command: echo ${{A}} {i}\n    output: OUT_{i}\n"
        );
        if i > 0 {
            let deps: Vec<String> = [i - 1, i / 2, i / 3]
                .iter()
                .map(|d| format!("s{d}"))
                .collect();
            let _ = writeln!(s, "    depends: [{}]", deps.join(", "));
        }
    }
    s
}

fn measure(text: &str, runs: usize) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let loaded = trellis_spec::load_str("bench.yaml", text);
            let elapsed = start.elapsed();
            assert!(loaded.is_ok());
            elapsed
        })
        .collect();
    times.sort();
    (times[0], times[runs / 2])
}

fn main() {
    println!("| workflow | steps | file size | min | median |");
    println!("|---|---:|---:|---:|---:|");
    for (label, text, steps) in [
        ("chain", chain(100), 100),
        ("chain", chain(10_000), 10_000),
        ("graph (3 deps/step, outputs)", graph(10_000), 10_000),
    ] {
        let (min, median) = measure(&text, 11);
        println!(
            "| {label} | {steps} | {} KiB | {:.1} ms | {:.1} ms |",
            text.len() / 1024,
            min.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3
        );
    }
}
