//! The pure heart of Trellis: the workflow model every other crate shares.
//!
//! A [`Dag`] is the validated form of a workflow file (Dagu YAML v1/v2 or a Daggy JSON run
//! spec); [`graph`] orders its steps, [`params`] resolves parameters, [`cron`] and
//! [`duration`] do the time maths. Nothing here touches the filesystem, processes, the
//! network or the clock: callers pass every input in, so all of it is deterministic and
//! cheap to test. CI enforces this with `cargo tree -p trellis-core -e normal`.

pub mod backoff;
pub mod cron;
pub mod duration;
pub mod graph;
pub mod ids;
pub mod model;
pub mod params;
pub mod pattern;
pub mod queue;
pub mod status;
pub mod worker;

pub use model::*;
