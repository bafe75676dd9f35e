//! The workflows under `examples/` at the repository root: every one must load cleanly,
//! and together they must show every feature of the loader, so that deleting or breaking
//! an example fails here rather than going unnoticed.

use std::path::{Path, PathBuf};
use trellis_core::pattern::Pattern;

use trellis_core::params::ParamType;
use trellis_core::{
    Action, Dag, DagType, OutputDecode, OutputField, OutputSource, OverlapPolicy, ParallelItems,
    RepeatMode, Schedule, Step, WorkerSelector,
};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
}

/// One example file after loading.
struct Example {
    /// Path relative to `examples/`, with `/` separators.
    rel: String,
    text: String,
    dag: Dag,
    warnings: usize,
}

impl Example {
    fn is_legacy(&self) -> bool {
        self.rel.contains("legacy")
    }
}

fn load_all() -> Vec<Example> {
    let root = examples_dir();
    let mut files = Vec::new();
    collect(&root, &mut files);
    assert!(
        files.len() >= 10,
        "expected the examples directory at {} to hold workflows, found {}",
        root.display(),
        files.len()
    );
    let mut failures = Vec::new();
    let mut out = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(&root)
            .expect("under examples/")
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path).expect("readable example");
        match trellis_spec::load_str(&rel, &text) {
            Ok(loaded) => out.push(Example {
                rel,
                text,
                dag: loaded.dag,
                warnings: loaded.warnings.len(),
            }),
            Err(problems) => {
                let messages: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
                failures.push(format!("{rel}: {}", messages.join("; ")));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "examples that fail to load:\n{}",
        failures.join("\n")
    );
    out
}

/// Every DAG in the examples, local sub-DAGs included.
fn all_dags(examples: &[Example]) -> Vec<&Dag> {
    fn walk<'a>(dag: &'a Dag, out: &mut Vec<&'a Dag>) {
        out.push(dag);
        for sub in &dag.local_dags {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    for e in examples {
        walk(&e.dag, &mut out);
    }
    out
}

/// Every step in the examples: regular steps and handlers, of every DAG.
fn all_steps<'a>(dags: &[&'a Dag]) -> Vec<&'a Step> {
    dags.iter()
        .flat_map(|d| d.steps.iter().chain(d.handlers.iter().map(|(_, s)| s)))
        .collect()
}

#[test]
fn every_example_loads_without_errors_or_unexpected_warnings() {
    let examples = load_all();
    let mut noisy = Vec::new();
    for e in &examples {
        if e.is_legacy() {
            assert!(
                e.warnings > 0,
                "{}: a legacy example should show legacy-key warnings",
                e.rel
            );
        } else if e.warnings > 0 {
            noisy.push(format!("{} ({} warnings)", e.rel, e.warnings));
        }
    }
    assert!(
        noisy.is_empty(),
        "non-legacy examples must load without warnings: {}",
        noisy.join(", ")
    );
}

#[test]
fn dotenv_files_named_by_examples_exist() {
    let root = examples_dir();
    for e in load_all() {
        let dir = root.join(&e.rel);
        let dir = dir.parent().expect("file in a directory");
        for file in &e.dag.dotenv {
            assert!(
                dir.join(file).is_file(),
                "{}: dotenv file `{file}` is missing",
                e.rel
            );
        }
    }
}

#[test]
fn hello_is_a_small_graph() {
    let examples = load_all();
    let hello = examples
        .iter()
        .find(|e| e.rel == "hello.yaml")
        .expect("examples/hello.yaml exists");
    assert_eq!(hello.dag.dag_type, DagType::Graph);
    assert!(
        (3..=4).contains(&hello.dag.steps.len()),
        "hello.yaml should have 3 or 4 steps"
    );
    assert!(hello.dag.steps.iter().any(|s| !s.depends.is_empty()));
    assert!(
        hello
            .dag
            .steps
            .iter()
            .all(|s| s.executor.is_none() && s.retry_policy.is_none() && s.repeat_policy.is_none())
    );
}

type Check = fn(&[Example], &[&Dag], &[&Step]) -> bool;

#[test]
fn examples_cover_every_loader_feature() {
    let examples = load_all();
    let dags = all_dags(&examples);
    let steps = all_steps(&dags);
    let checks: Vec<(&str, Check)> = vec![
        ("a chain DAG of several steps", |_, d, _| {
            d.iter()
                .any(|d| d.dag_type == DagType::Chain && d.steps.len() >= 3)
        }),
        ("an explicit `type: graph` DAG", |ex, _, _| {
            ex.iter().any(|e| {
                e.dag.dag_type == DagType::Graph && e.text.lines().any(|l| l == "type: graph")
            })
        }),
        (
            "a graph inferred from `depends` without `type:`",
            |ex, _, _| {
                ex.iter().filter(dagu_example).any(|e| {
                    e.dag.dag_type == DagType::Graph
                        && !e.text.lines().any(|l| l.starts_with("type:"))
                        && !e.is_legacy()
                })
            },
        ),
        ("a parallel group (nested list) in a chain", |_, d, _| {
            d.iter().any(|d| {
                d.dag_type == DagType::Chain
                    && d.steps
                        .windows(2)
                        .any(|w| !w[0].depends.is_empty() && w[0].depends == w[1].depends)
            })
        }),
        (
            "a chain mixing bare-string steps and a parallel group",
            |_, d, _| {
                d.iter().any(|d| {
                    d.dag_type == DagType::Chain
                        && d.steps.iter().any(|s| s.name.starts_with("cmd_"))
                        && d.steps
                            .windows(2)
                            .any(|w| !w[0].depends.is_empty() && w[0].depends == w[1].depends)
                })
            },
        ),
        ("steps written as a map", |ex, _, _| {
            ex.iter().any(|e| {
                e.text.contains("\nsteps:\n  ") && {
                    let after = e.text.split("\nsteps:\n").nth(1).unwrap_or("");
                    after.starts_with("  ") && !after.trim_start().starts_with('-')
                }
            })
        }),
        ("a router step", |_, _, s| {
            s.iter().any(|s| {
                matches!(&s.action, Action::Router { routes, .. }
                if routes.iter().any(|r| matches!(r.pattern, Pattern::Regex(_))))
            })
        }),
        (
            "a multi-document file calling a local sub-DAG with params",
            |ex, _, _| {
                ex.iter().any(|e| {
                    e.dag.steps.iter().any(|s| {
                        matches!(&s.action, Action::Call(c)
                    if c.parallel.is_none() && !c.params.is_empty()
                        && e.dag.local_dag(&c.dag).is_some())
                    })
                })
            },
        ),
        (
            "a parallel call over listed items with max_concurrent",
            |_, _, s| {
                s.iter().any(|s| {
                    matches!(&s.action, Action::Call(c)
                if c.parallel.as_ref().is_some_and(|p| matches!(p.items, ParallelItems::List(_))
                    && p.max_concurrent != trellis_core::DEFAULT_PARALLEL_MAX_CONCURRENT))
                })
            },
        ),
        ("a parallel call over a ${VAR}", |_, _, s| {
            s.iter().any(|s| matches!(&s.action, Action::Call(c)
                if c.parallel.as_ref().is_some_and(|p| matches!(p.items, ParallelItems::Variable(_)))))
        }),
        ("positional params", |_, d, _| {
            d.iter()
                .any(|d| d.params.defs.iter().filter(|p| p.name.is_none()).count() >= 2)
        }),
        ("named params as a list and as a map", |ex, _, _| {
            let list = ex
                .iter()
                .any(|e| e.text.contains("\nparams:\n  - ") && !e.dag.params.defs.is_empty());
            let map = ex.iter().any(|e| {
                e.text.contains("\nparams:\n  ")
                    && !e.text.contains("\nparams:\n  - ")
                    && !e.text.contains("\n  type: object")
                    && e.dag.params.defs.len() >= 2
            });
            list && map
        }),
        ("a named param declared with no default", |_, d, _| {
            d.iter().flat_map(|d| &d.params.defs).any(|p| {
                p.name.is_some() && p.default.is_none() && !p.required && p.description.is_none()
            })
        }),
        (
            "rich params with type, enum, required and description",
            |_, d, _| {
                let defs: Vec<_> = d.iter().flat_map(|d| &d.params.defs).collect();
                defs.iter()
                    .any(|p| !p.choices.is_empty() && p.default.is_some())
                    && defs.iter().any(|p| p.required && p.pattern.is_some())
                    && defs
                        .iter()
                        .any(|p| p.kind == ParamType::Integer && p.minimum.is_some())
                    && defs.iter().any(|p| p.kind == ParamType::Boolean)
                    && defs.iter().any(|p| p.kind == ParamType::Number)
                    && defs.iter().any(|p| p.description.is_some())
            },
        ),
        ("params as an inline JSON Schema", |ex, _, _| {
            ex.iter().any(|e| {
                e.text.contains("\n  type: object\n  properties:")
                    && e.dag.params.defs.iter().any(|p| p.required)
            })
        }),
        ("a command string and a command list", |_, _, s| {
            s.iter()
                .any(|s| matches!(&s.action, Action::Commands { commands } if commands.len() == 1))
                && s.iter().any(
                    |s| matches!(&s.action, Action::Commands { commands } if commands.len() >= 2),
                )
        }),
        (
            "a script with a shebang, and one run by `command`",
            |_, _, s| {
                s.iter().any(|s| {
                    matches!(&s.action, Action::Script { script, program: None }
                if script.starts_with("#!"))
                }) && s.iter().any(|s| {
                    matches!(
                        &s.action,
                        Action::Script {
                            program: Some(_),
                            ..
                        }
                    )
                })
            },
        ),
        ("shell at DAG and step level", |_, d, s| {
            d.iter().any(|d| d.shell.is_some()) && s.iter().any(|s| s.shell.is_some())
        }),
        ("exec with argv", |_, _, s| {
            s.iter()
                .any(|s| matches!(&s.action, Action::Exec { args, .. } if args.len() >= 2))
        }),
        ("working_dir", |_, _, s| {
            s.iter().any(|s| s.working_dir.is_some())
        }),
        ("env as a map and as a list of maps", |ex, d, s| {
            d.iter().any(|d| d.env.len() >= 2)
                && s.iter().any(|s| s.env.len() >= 2)
                && ex.iter().any(|e| e.text.contains("env:\n      - "))
        }),
        ("dotenv", |_, d, _| d.iter().any(|d| !d.dotenv.is_empty())),
        ("output as a variable", |_, _, s| {
            s.iter()
                .any(|s| matches!(s.output.as_deref(), Some(trellis_core::Output::Variable(_))))
        }),
        (
            "output fields from stdout (json + select), stderr, file and literals",
            |_, _, s| {
                let fields: Vec<&OutputField> = s
                    .iter()
                    .filter_map(|s| match s.output.as_deref() {
                        Some(trellis_core::Output::Fields(f)) => Some(f.values()),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                let capture = |want: OutputSource| {
                    fields
                        .iter()
                        .any(|f| matches!(f, OutputField::Capture { from, .. } if *from == want))
                };
                capture(OutputSource::Stdout)
                    && capture(OutputSource::Stderr)
                    && capture(OutputSource::File)
                    && fields.iter().any(|f| {
                        matches!(
                            f,
                            OutputField::Capture {
                                decode: OutputDecode::Json,
                                select: Some(_),
                                ..
                            }
                        )
                    })
                    && fields.iter().any(|f| matches!(f, OutputField::Literal(_)))
            },
        ),
        (
            "preconditions: command, expected, regex and negate",
            |_, d, s| {
                let conds: Vec<_> = d
                    .iter()
                    .flat_map(|d| &d.preconditions)
                    .chain(s.iter().flat_map(|s| &s.preconditions))
                    .collect();
                conds.iter().any(|c| c.expected.is_none())
                    && conds
                        .iter()
                        .any(|c| matches!(c.expected, Some(Pattern::Literal(_))))
                    && conds
                        .iter()
                        .any(|c| matches!(c.expected, Some(Pattern::Regex(_))))
                    && conds.iter().any(|c| c.negate)
            },
        ),
        ("DAG-level preconditions", |_, d, _| {
            d.iter().any(|d| !d.preconditions.is_empty())
        }),
        (
            "retry_policy with backoff, max interval and exit codes",
            |_, _, s| {
                s.iter().any(|s| {
                    s.retry_policy.as_ref().is_some_and(|r| {
                        r.limit > 0
                            && r.interval_sec > 0.0
                            && r.backoff.is_some()
                            && r.max_interval_sec.is_some()
                            && !r.exit_codes.is_empty()
                    })
                })
            },
        ),
        ("repeat_policy while and until", |_, _, s| {
            let mode = |m: RepeatMode| {
                s.iter()
                    .any(|s| s.repeat_policy.as_ref().is_some_and(|r| r.mode == m))
            };
            mode(RepeatMode::While)
                && mode(RepeatMode::Until)
                && s.iter().any(|s| {
                    s.repeat_policy
                        .as_ref()
                        .is_some_and(|r| r.condition.as_ref().is_some_and(|c| c.expected.is_some()))
                })
                && s.iter().any(|s| {
                    s.repeat_policy.as_ref().is_some_and(|r| {
                        !r.exit_codes.is_empty() && r.backoff.is_some() && r.limit.is_some()
                    })
                })
        }),
        (
            "continue_on: failure, skipped, exit_code, output, mark_success",
            |_, _, s| {
                let c =
                    |f: fn(&trellis_core::ContinueOn) -> bool| s.iter().any(|s| f(&s.continue_on));
                c(|c| c.failure)
                    && c(|c| c.skipped)
                    && c(|c| !c.exit_codes.is_empty())
                    && c(|c| !c.output.is_empty())
                    && c(|c| c.mark_success)
            },
        ),
        ("step timeout_sec and signal_on_stop", |_, _, s| {
            s.iter().any(|s| s.timeout_sec.is_some())
                && s.iter().any(|s| s.signal_on_stop.is_some())
        }),
        ("approval with inputs and rewind_to", |_, _, s| {
            s.iter().any(|s| {
                s.approval.as_ref().is_some_and(|a| {
                    a.prompt.is_some() && !a.required.is_empty() && a.rewind_to.is_some()
                })
            })
        }),
        ("step id and description", |_, _, s| {
            s.iter().any(|s| s.id.is_some()) && s.iter().any(|s| s.description.is_some())
        }),
        ("DAG name, description, group and labels", |ex, d, _| {
            d.iter()
                .any(|d| d.description.is_some() && d.group.is_some() && !d.labels.is_empty())
                && ex.iter().any(|e| e.text.contains("\nlabels:"))
                && ex.iter().any(|e| e.text.contains("\ntags:"))
        }),
        ("defaults applied to steps", |ex, _, _| {
            ex.iter().any(|e| {
                e.text.contains("\ndefaults:")
                    && e.dag
                        .steps
                        .iter()
                        .all(|s| s.timeout_sec.is_some() || !s.preconditions.is_empty())
            })
        }),
        ("all six handlers", |_, d, _| {
            d.iter().any(|d| d.handlers.iter().count() == 6)
        }),
        (
            "schedule as a string, a list, start/stop/restart and a one-off",
            |_, d, _| {
                d.iter()
                    .any(|d| d.schedule.start.len() == 1 && d.schedule.stop.is_empty())
                    && d.iter().any(|d| d.schedule.start.len() >= 3)
                    && d.iter()
                        .any(|d| !d.schedule.stop.is_empty() && !d.schedule.restart.is_empty())
                    && d.iter().any(|d| {
                        d.schedule
                            .start
                            .iter()
                            .any(|s| matches!(s, Schedule::At { .. }))
                    })
                    && d.iter().any(|d| {
                        d.schedule.start.iter().any(|s| {
                            matches!(
                                s,
                                Schedule::Cron {
                                    timezone: Some(_),
                                    ..
                                }
                            )
                        })
                    })
            },
        ),
        (
            "skip_if_successful, catchup_window, overlap_policy, max_active_runs",
            |_, d, _| {
                d.iter().any(|d| {
                    d.skip_if_successful
                        && d.catchup_window_ms.is_some()
                        && d.overlap_policy != OverlapPolicy::Skip
                        && d.max_active_runs.is_some()
                })
            },
        ),
        (
            "max_active_steps, queue and a labelled worker_selector",
            |_, d, _| {
                d.iter().any(|d| {
                    d.max_active_steps.is_some()
                        && d.queue.is_some()
                        && matches!(&d.worker_selector, WorkerSelector::Labels(l) if !l.is_empty())
                })
            },
        ),
        ("worker_selector: local", |_, d, s| {
            d.iter().any(|d| d.worker_selector == WorkerSelector::Local)
                || s.iter().any(|s| s.worker_selector == WorkerSelector::Local)
        }),
        (
            "DAG timeout, delay, output size, retention, log_dir and retry",
            |_, d, _| {
                d.iter().any(|d| {
                    d.timeout_sec.is_some()
                        && d.delay_sec.is_some()
                        && d.max_output_size != trellis_core::DEFAULT_MAX_OUTPUT_SIZE
                        && d.hist_retention_days.is_some()
                        && d.log_dir.is_some()
                        && d.retry_policy.is_some()
                })
            },
        ),
        (
            // Only the types whose executors are built: the binary refuses the others.
            "docker steps with `with:`",
            |_, _, s| {
                ["docker"].iter().all(|kind| {
                    s.iter().any(|s| {
                        s.executor.as_ref().is_some_and(|e| {
                            e.kind == *kind && e.config.as_object().is_some_and(|o| !o.is_empty())
                        })
                    })
                })
            },
        ),
        ("a custom step type", |ex, _, _| {
            ex.iter()
                .any(|e| e.text.contains("\nstep_types:") && !e.dag.steps.is_empty())
        }),
        ("a legacy v1 camelCase file", |ex, _, _| {
            ex.iter()
                .any(|e| e.is_legacy() && e.warnings >= 5 && !e.dag.local_dags.is_empty())
        }),
        ("a Daggy run spec with parameter expansion", |ex, _, _| {
            ex.iter().any(|e| {
                e.rel.ends_with(".json")
                    && e.dag.steps.iter().any(|s| s.name.ends_with(".tail"))
                    && !e.dag.labels.is_empty()
            })
        }),
        ("a Daggy generator task", |ex, _, _| {
            ex.iter()
                .any(|e| e.rel.ends_with(".json") && e.dag.steps.iter().any(|s| s.generator))
        }),
        ("Daggy retries", |ex, _, _| {
            ex.iter().any(|e| {
                e.rel.ends_with(".json")
                    && e.dag.steps.iter().any(|s| {
                        s.retry_policy
                            .as_ref()
                            .is_some_and(|r| r.limit > 0 && r.interval_sec > 0.0)
                    })
            })
        }),
    ];
    assert!(checks.len() >= 15);
    let missing: Vec<&str> = checks
        .iter()
        .filter(|(_, check)| !check(&examples, &dags, &steps))
        .map(|(name, _)| *name)
        .collect();
    assert!(
        missing.is_empty(),
        "no example shows these features:\n  - {}",
        missing.join("\n  - ")
    );
}

fn dagu_example(e: &&Example) -> bool {
    !e.rel.ends_with(".json")
}
