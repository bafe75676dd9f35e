//! A step's log, as `trellis logs [--follow]` shows it: read through the log seam, and
//! followed until the step (or its run) ends.

use std::io::Write;
use std::time::Duration;

use trellis_core::status::RunRecord;

use crate::{Error, Result, Runs};

/// How often a followed log and its run are looked at.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// The most read at once.
const CHUNK: usize = 1 << 20;

/// Which of a step's streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Runs {
    /// Copies the `stream` log of `step` (or handler) of `run` to `out`; with `follow`,
    /// keeps copying what the step writes until it (or the run) ends. The bytes copied.
    /// `Ok(None)` when the step has not started, so it has no log yet.
    pub async fn copy_log(
        &self,
        run: &RunRecord,
        step: &str,
        stream: Stream,
        follow: bool,
        out: &mut (dyn Write + Send),
    ) -> Result<Option<u64>> {
        let Some(log) = log_of(run, step, stream) else {
            return Ok(None);
        };
        let mut offset = 0u64;
        loop {
            offset += self.copy_from(&log, offset, out).await?;
            if !follow {
                return Ok(Some(offset));
            }
            let now = self.find(&run.name, Some(&run.run_id)).await.ok();
            let step_done = now
                .as_ref()
                .and_then(|r| {
                    r.steps
                        .iter()
                        .chain(r.handlers.values())
                        .find(|s| s.name == step)
                })
                .is_some_and(|s| s.status.is_final());
            if step_done || now.is_none_or(|r| r.status.is_final()) {
                // What it wrote before it ended.
                offset += self.copy_from(&log, offset, out).await?;
                return Ok(Some(offset));
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }

    /// Copies `log` from `offset` to `out`; the bytes copied (none yet when it is absent).
    /// Each chunk is read on the blocking pool: a log store may be remote.
    async fn copy_from(
        &self,
        log: &str,
        mut offset: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<u64> {
        let start = offset;
        loop {
            let (logs, name) = (self.logs.clone(), log.to_string());
            let buf = crate::blocking(move || {
                let failed = |e| Error::io(format!("read the log {name}"), e);
                logs.read(&name, offset, CHUNK).map_err(failed)
            })
            .await?;
            if buf.is_empty() {
                break;
            }
            out.write_all(&buf)
                .map_err(|e| Error::io("write the log out", e))?;
            offset += buf.len() as u64;
        }
        out.flush().map_err(|e| Error::io("write the log out", e))?;
        Ok(offset - start)
    }
}

/// The log reference a run records for a step's stream.
fn log_of(run: &RunRecord, step: &str, stream: Stream) -> Option<String> {
    let record = run
        .steps
        .iter()
        .chain(run.handlers.values())
        .find(|s| s.name == step)?;
    match stream {
        Stream::Stdout => record.stdout.clone(),
        Stream::Stderr => record.stderr.clone(),
    }
}
