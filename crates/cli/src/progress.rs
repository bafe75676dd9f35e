//! Live progress of `trellis start`: a line per settled step, and on a terminal a footer of
//! the steps still running, redrawn as they change (plain lines when not a terminal).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use indexmap::IndexMap;
use trellis_core::Dag;
use trellis_core::status::{RunRecord, Status, StepRecord};
use trellis_store::{Attempt, Entry, Shared, Store};

/// The file store, plus progress output on stderr.
pub struct Progress {
    inner: Shared,
    quiet: bool,
    tty: bool,
    footer: Mutex<Footer>,
}

#[derive(Default)]
struct Footer {
    running: IndexMap<String, Instant>,
    drawn: usize,
    settled: usize,
    failed: usize,
}

/// Steps shown in the footer; the rest are counted.
const SHOWN: usize = 8;

impl Progress {
    pub fn new(inner: Shared, quiet: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        Progress {
            inner,
            quiet,
            tty,
            footer: Mutex::new(Footer::default()),
        }
    }

    /// Removes the footer once the run is over.
    pub fn finish(&self) {
        if let Ok(mut footer) = self.footer.lock() {
            clear(&mut footer);
        }
    }

    fn show(&self, step: &StepRecord) {
        let Ok(mut footer) = self.footer.lock() else {
            return;
        };
        if self.tty {
            clear(&mut footer);
        }
        if step.status == Status::Running {
            footer.running.insert(step.name.clone(), Instant::now());
        } else if step.status.is_final() {
            footer.running.shift_remove(&step.name);
            footer.settled += 1;
            footer.failed += usize::from(matches!(
                step.status,
                Status::Failed | Status::Aborted | Status::Cancelled
            ));
            eprintln!("{}", line(step));
        }
        if self.tty {
            draw(&mut footer);
        }
    }
}

fn clear(footer: &mut Footer) {
    if footer.drawn > 0 {
        eprint!("\x1b[{}A\x1b[J", footer.drawn);
        footer.drawn = 0;
    }
}

fn draw(footer: &mut Footer) {
    let mut out = String::new();
    for (name, since) in footer.running.iter().take(SHOWN) {
        out.push_str(&format!(
            "  ⋯ {name:<24} running {:>13.1}s\n",
            since.elapsed().as_secs_f64()
        ));
    }
    let more = footer.running.len().saturating_sub(SHOWN);
    out.push_str(&format!(
        "  {} settled, {} running{}, {} failed\n",
        footer.settled,
        footer.running.len(),
        if more > 0 {
            format!(" ({more} not shown)")
        } else {
            String::new()
        },
        footer.failed
    ));
    footer.drawn = out.lines().count();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(out.as_bytes());
    let _ = err.flush();
}

/// `  ✓ build            succeeded   0.21s`
fn line(step: &StepRecord) -> String {
    let mark = match step.status {
        Status::Succeeded => "✓",
        Status::PartiallySucceeded | Status::Skipped | Status::Waiting => "•",
        _ => "✗",
    };
    let took = match (step.started_at, step.finished_at) {
        (Some(a), Some(b)) => format!("{:>8.2}s", b.0.duration_since(a.0).as_secs_f64()),
        _ => String::new(),
    };
    format!(
        "  {mark} {:<24} {:<20}{took}",
        step.name,
        step.status.as_str()
    )
}

impl Store for Progress {
    fn may_wait(&self) -> bool {
        self.inner.may_wait()
    }

    fn create_attempt(
        &self,
        dag: &str,
        run_id: &str,
        parent: Option<&Attempt>,
    ) -> trellis_store::Result<Attempt> {
        self.inner.create_attempt(dag, run_id, parent)
    }

    fn append(&self, attempt: &Attempt, entry: &Entry) -> trellis_store::Result<()> {
        // Child runs of `call` steps are summarised by their step, not shown line by line.
        let child = attempt.dir.to_string_lossy().contains("/children/");
        if let (false, false, Entry::Step { step, .. } | Entry::Handler { step, .. }) =
            (self.quiet, child, entry)
        {
            self.show(step);
        }
        self.inner.append(attempt, entry)
    }

    fn latest(&self, dag: &str) -> trellis_store::Result<Option<RunRecord>> {
        self.inner.latest(dag)
    }

    fn find(&self, dag: &str, run_id: &str) -> trellis_store::Result<Option<RunRecord>> {
        self.inner.find(dag, run_id)
    }

    fn retry_attempt(&self, dag: &str, run_id: &str) -> trellis_store::Result<Attempt> {
        self.inner.retry_attempt(dag, run_id)
    }

    fn find_child(
        &self,
        parent: &Attempt,
        run_id: &str,
    ) -> trellis_store::Result<Option<RunRecord>> {
        self.inner.find_child(parent, run_id)
    }

    fn latest_attempt(&self, dag: &str, run_id: &str) -> trellis_store::Result<Option<Attempt>> {
        self.inner.latest_attempt(dag, run_id)
    }

    fn save_definition(&self, attempt: &Attempt, dag: &Dag) -> trellis_store::Result<()> {
        self.inner.save_definition(attempt, dag)
    }

    fn definition(&self, dag: &str, run_id: &str) -> trellis_store::Result<Option<Dag>> {
        self.inner.definition(dag, run_id)
    }

    fn list(&self, dag: &str, limit: usize) -> trellis_store::Result<Vec<RunRecord>> {
        self.inner.list(dag, limit)
    }

    fn dag_names(&self) -> trellis_store::Result<Vec<String>> {
        self.inner.dag_names()
    }

    fn remove(&self, dag: &str, run_id: &str) -> trellis_store::Result<()> {
        self.inner.remove(dag, run_id)
    }

    fn history(&self, dag: &str, run_id: &str) -> trellis_store::Result<Vec<(String, Entry)>> {
        self.inner.history(dag, run_id)
    }
}
