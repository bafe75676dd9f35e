//! `trellis dry FILE`: the resolved plan, without running anything.

use std::process::ExitCode;

use serde_json::json;
use trellis_core::graph::Graph;
use trellis_core::{Action, Dag, Step};

use crate::cli::DryArgs;
use crate::report;

pub fn run(args: &DryArgs) -> anyhow::Result<ExitCode> {
    let name = args.file.display().to_string();
    let text = super::read(&args.file)?;
    let dag = match trellis_spec::load_file_str(&args.file, &text) {
        Ok(loaded) => loaded.dag,
        Err(problems) => {
            eprint!("{}", report::problems(&name, &text, &problems));
            return Ok(ExitCode::from(report::EXIT_INVALID));
        }
    };
    let params = match trellis_spec::resolve_params(&dag, args.params.as_deref(), &args.positional)
    {
        Ok(values) => values,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {name}: {e}");
            }
            return Ok(ExitCode::from(report::EXIT_INVALID));
        }
    };
    let levels = levels(&dag);
    if args.json {
        let plan = json!({
            "name": dag.name,
            "type": dag.dag_type,
            "params": params.iter().map(|p| json!({"name": p.name, "value": p.value})).collect::<Vec<_>>(),
            "env": dag.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
            "levels": levels.iter().map(|l| l.iter().map(|&i| step_json(&dag.steps[i])).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "handlers": dag.handlers.iter().map(|(n, s)| json!({"name": n, "runs": describe(s)})).collect::<Vec<_>>(),
            "local_dags": dag.local_dags.iter().map(|d| &d.name).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print_text(&dag, &params, &levels);
    }
    Ok(ExitCode::SUCCESS)
}

fn levels(dag: &Dag) -> Vec<Vec<usize>> {
    let index = |name: &str| dag.steps.iter().position(|s| s.name == name);
    let edges = dag.steps.iter().enumerate().flat_map(|(i, s)| {
        s.depends
            .iter()
            .filter_map(move |d| index(d).map(|j| (j, i)))
    });
    let edges: Vec<(usize, usize)> = edges.collect();
    // The loader has already rejected cycles, so levels cannot fail here.
    Graph::new(dag.steps.len(), edges)
        .levels()
        .unwrap_or_default()
}

fn print_text(dag: &Dag, params: &[trellis_core::params::ParamValue], levels: &[Vec<usize>]) {
    println!(
        "DAG {} ({:?}, {} steps)",
        dag.name,
        dag.dag_type,
        dag.steps.len()
    );
    if !params.is_empty() {
        println!("\nparams:");
        for p in params {
            let shown = if p.positional {
                format!("${}", p.name)
            } else {
                p.name.clone()
            };
            println!("  {shown}={}", p.value);
        }
    }
    if !dag.env.is_empty() {
        println!("\nenv:");
        for (k, v) in &dag.env {
            println!("  {k}={v}");
        }
    }
    println!("\nplan:");
    for (n, level) in levels.iter().enumerate() {
        println!("  level {}:", n + 1);
        for &i in level {
            let step = &dag.steps[i];
            println!("    - {}: {}", step.name, describe(step));
        }
    }
    let handlers: Vec<String> = dag
        .handlers
        .iter()
        .map(|(n, s)| format!("{n}: {}", describe(s)))
        .collect();
    if !handlers.is_empty() {
        println!("\nhandlers:\n  {}", handlers.join("\n  "));
    }
    println!("\nnothing was run (dry run)");
}

fn step_json(step: &Step) -> serde_json::Value {
    json!({"name": step.name, "runs": describe(step), "depends": step.depends, "type": step.executor_kind()})
}

/// One line saying what a step does.
fn describe(step: &Step) -> String {
    let text = match &step.action {
        Action::Commands { commands } => commands.join(" && "),
        Action::Script { program, .. } => {
            format!("script via {}", program.as_deref().unwrap_or("sh"))
        }
        Action::Exec { program, args } => format!("exec {program} {}", args.join(" ")),
        Action::Call(call) => format!("call {} {}", call.dag, call.params),
        Action::Router { value, .. } => format!("route on {value}"),
        Action::Noop if step.output.is_some() => "publish outputs".into(),
        Action::Noop => "nothing (joins its dependencies)".into(),
    };
    match &step.executor {
        Some(e) => format!("[{}] {text}", e.kind),
        None => text.trim().to_string(),
    }
}
