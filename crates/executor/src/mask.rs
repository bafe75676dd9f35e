//! Masking secret values in a step's output before it reaches its log file. Only a step
//! of a DAG with secrets (or with a `stdout:`/`stderr:` file) pays for it: its output goes
//! through a pipe and this copier instead of straight into the file.

use std::fs::File;
use std::io::Write;

use tokio::io::AsyncReadExt;

/// What a masked value is replaced with.
pub const MASKED: &[u8] = b"*****";

/// The values to hide (empty ones are ignored: they would match everywhere).
#[derive(Clone, Debug, Default)]
pub struct Mask {
    values: Vec<Vec<u8>>,
}

impl Mask {
    pub fn new(values: impl IntoIterator<Item = String>) -> Mask {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(String::into_bytes)
            .collect();
        // Longest first, so a value containing another is hidden whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Mask { values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every value replaced by [`MASKED`].
    pub fn apply(&self, text: &str) -> String {
        let (out, _) = self.redact(text.as_bytes(), true);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Masks `data` up to where a value could still be cut off by the next read (all of
    /// it when `last`); returns the output and how many input bytes it covers.
    pub(crate) fn redact(&self, data: &[u8], last: bool) -> (Vec<u8>, usize) {
        if self.values.is_empty() {
            return (data.to_vec(), data.len());
        }
        let longest = self.values.first().map_or(0, Vec::len);
        let limit = if last {
            data.len()
        } else {
            data.len().saturating_sub(longest.saturating_sub(1))
        };
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < limit {
            match self.values.iter().find(|v| data[i..].starts_with(v)) {
                Some(v) => {
                    out.extend_from_slice(MASKED);
                    i += v.len();
                }
                None => {
                    out.push(data[i]);
                    i += 1;
                }
            }
        }
        (out, i)
    }

    /// Copies `from` into each file of `to` (a log, and the step's own `stdout:` file),
    /// masked, until every writer of the pipe has closed it.
    pub(crate) async fn copy(
        &self,
        mut from: tokio::net::unix::pipe::Receiver,
        mut to: Vec<File>,
    ) -> std::io::Result<()> {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            pending.extend_from_slice(&buf[..n]);
            let (out, used) = self.redact(&pending, n == 0);
            for file in &mut to {
                file.write_all(&out)?;
            }
            pending.drain(..used);
            if n == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_hidden_even_when_split_across_reads() {
        let mask = Mask::new(["hunter2".to_string(), "hun".to_string(), String::new()]);
        assert_eq!(mask.apply("a hunter2 b hun c"), "a ***** b ***** c");
        let data = b"xx hunte";
        let (out, used) = mask.redact(data, false);
        assert_eq!(
            (out.as_slice(), used),
            (&b"xx"[..], 2),
            "a possible start is held back"
        );
        let (out, _) = mask.redact(b" hunter2", true);
        assert_eq!(out, b" *****");
    }
}
