//! What this crate's checks outside file loading fail with: a Daggy generator's output that
//! cannot become steps, and a one-off schedule's `at` that is not an RFC 3339 time. Loading
//! a file reports [`crate::diag::Problem`]s instead, all of them at once.

use crate::diag::Problem;
use crate::yaml::SyntaxError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The generator's stdout does not parse.
    #[error("generator output is not JSON: {}", .0.message)]
    GeneratorNotJson(SyntaxError),
    #[error("generator output must be a JSON object of task id → task")]
    GeneratorNotObject,
    /// A task in the generator's output is invalid: the first problem found.
    #[error("generator output: {}", .0.message)]
    GeneratorTask(Box<Problem>),
    // The time variants carry no value: the caller's message already names it.
    #[error("expected YYYY-MM-DDTHH:MM:SS followed by Z or an offset")]
    TimeShape,
    #[error("missing or malformed timezone (Z or ±HH:MM)")]
    TimeZone,
    #[error("a date or time field is out of range")]
    TimeOutOfRange,
}
