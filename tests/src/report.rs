//! What a `leaktrace --json` run printed, parsed: its findings, stats and summary.

use std::fmt;

use anyhow::{bail, ensure, Result};
use serde_json::Value;

/// All JSON lines of a finished leaktrace run, which began with `start` and ended with `summary`.
pub struct Report {
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl Report {
    /// Whether this kernel lets leaktrace see reads return end-of-stream
    /// (`sock:sock_recv_length`, 6.3+). Before that only data reads are seen, so a socket
    /// whose owner read the EOF still looks like its EOF is unread, and a shut-down socket
    /// drained to the end never shows as drained: tests check those claims where the kernel
    /// can back them.
    pub fn sees_end_of_stream_reads(&self) -> bool {
        // `tp_btf:sock_recv_length` or `tracepoint:sock:sock_recv_length`, by family.
        self.lines[0]["hooks"]["recv"]
            .as_str()
            .is_some_and(|hook| hook.ends_with(":sock_recv_length"))
    }

    pub(crate) fn parse(lines: &[String], stderr: String) -> Result<Report> {
        let parsed: Result<Vec<Value>, _> = lines.iter().map(|l| serde_json::from_str(l)).collect();
        let dump = || format!("stdout:\n{}\nstderr:\n{stderr}", lines.join("\n"));
        let Ok(parsed) = parsed else {
            bail!(
                "leaktrace --json printed a line that is not JSON\n{}",
                dump()
            );
        };
        ensure!(
            parsed.first().is_some_and(|v| v["type"] == "start")
                && parsed.last().is_some_and(|v| v["type"] == "summary"),
            "leaktrace output must begin with a start line and end with a summary line\n{}",
            dump()
        );
        Ok(Report {
            lines: parsed,
            stderr,
        })
    }

    pub fn leaks(&self) -> Vec<&Value> {
        self.lines.iter().filter(|v| v["type"] == "leak").collect()
    }

    pub fn summary(&self) -> &Value {
        self.lines.last().expect("parse checked the summary line")
    }

    /// The `stats` line, which must come right before the summary.
    pub fn stats(&self) -> &Value {
        let n = self.lines.len();
        match self.lines.get(n.wrapping_sub(2)) {
            Some(stats) if stats["type"] == "stats" => stats,
            _ => panic!("no stats line just before the summary\n{self}"),
        }
    }

    /// The `per_pid` row of `pid`.
    pub fn pid_stats(&self, pid: u32) -> &Value {
        let rows = self.stats()["per_pid"].as_array();
        rows.and_then(|rows| rows.iter().find(|row| row["pid"] == pid))
            .unwrap_or_else(|| panic!("no per_pid row for pid {pid}\n{self}"))
    }
}

/// The whole run, for assertion messages.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "leaktrace stdout:")?;
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        write!(f, "leaktrace stderr:\n{}", self.stderr)
    }
}
