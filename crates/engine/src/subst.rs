//! Backtick command substitution in env values and condition texts (`` `date +%F` ``), as
//! Dagu does. Each command runs like a step's: through the run's executor, with the
//! variables the run's steps see (never [`crate::SECRET_VARS`]), under a timeout, and
//! cancelled with the run. It used to run `sh -c` in-process with Trellis's whole
//! environment, so an env value could read the database URL or the admin token.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use trellis_executor::{Executor, Outcome, ProcessSpec};

use crate::Scope;

/// How long one substituted command may run before it is killed and its text kept.
pub const SUBSTITUTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Where substitution output files go, numbered so concurrent conditions never share one.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// What a substitution runs with.
pub(crate) struct Subst<'a, E> {
    pub exec: &'a E,
    /// The environment steps inherit, under the scope's variables; secret ones are
    /// removed here regardless. Combined only when a command runs (most texts have none).
    pub base_env: &'a [(String, String)],
    pub scope: &'a Scope,
    /// A directory of the attempt for the commands' output files.
    pub dir: &'a Path,
    pub cancel: &'a CancellationToken,
}

impl<E: Executor> Subst<'_, E> {
    /// Replaces each `` `command` `` with the command's trimmed stdout. A command that
    /// fails, times out or cannot start leaves its text as written (Dagu's rule).
    pub(crate) async fn apply(&self, text: &str) -> String {
        if !text.contains('`') {
            return text.to_string();
        }
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('`') {
            let Some(len) = rest[start + 1..].find('`') else {
                break;
            };
            let command = &rest[start + 1..start + 1 + len];
            out.push_str(&rest[..start]);
            match self.run(command).await {
                Some(stdout) => out.push_str(stdout.trim()),
                None => out.push_str(&rest[start..start + len + 2]),
            }
            rest = &rest[start + len + 2..];
        }
        out.push_str(rest);
        out
    }

    /// What steps see: the base environment, then the scope's variables, never secrets.
    fn env(&self) -> Vec<(String, String)> {
        let mut env: indexmap::IndexMap<String, String> = self.base_env.iter().cloned().collect();
        env.extend(self.scope.all_vars());
        env.retain(|k, _| !crate::SECRET_VARS.contains(&k.as_str()));
        env.into_iter().collect()
    }

    async fn run(&self, command: &str) -> Option<String> {
        let dir = self.dir.join("substitutions");
        std::fs::create_dir_all(&dir).ok()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (stdout, stderr) = (dir.join(format!("{n}.out")), dir.join(format!("{n}.err")));
        let spec = ProcessSpec {
            program: "sh".into(),
            args: vec!["-c".into(), command.to_string()],
            env: self.env(),
            working_dir: None,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            timeout: Some(SUBSTITUTION_TIMEOUT),
            stop_signal: Signal::SIGTERM,
            grace: Duration::from_secs(5),
            mask: None,
            tee: trellis_executor::Tee::default(),
        };
        let outcome = self.exec.run(spec, self.cancel.clone()).await;
        let text = std::fs::read_to_string(&stdout).ok();
        let _ = std::fs::remove_file(&stdout);
        let _ = std::fs::remove_file(&stderr);
        if outcome == Outcome::Exited(0) {
            return text;
        }
        // Neither the command nor its output is logged: both may hold values of params.
        tracing::warn!(?outcome, "a command substitution failed; its text is kept");
        None
    }
}
