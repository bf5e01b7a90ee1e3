//! Runs a libtest-based command, streaming its output, and adds up the `test result:` lines so
//! the task can end on one plain total: with several test binaries, the last line libtest
//! prints belongs to whichever binary ran last (often one with no tests at all).
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Totals {
    /// The plain closing line: "N passed, N failed", with ignored ones if any.
    pub fn line(&self, label: &str) -> String {
        let mut line = format!("{label}: {} passed, {} failed", self.passed, self.failed);
        if self.ignored > 0 {
            line.push_str(&format!(", {} skipped", self.ignored));
        }
        line
    }

    pub fn add(&mut self, other: Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Runs `command` with its stdout streamed through, returning whether it succeeded and the
/// totals of the libtest summaries it printed.
pub fn run(command: &mut Command) -> Result<(bool, Totals)> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
        if let Some(result) = parse(&line) {
            totals.add(result);
        }
    }
    let status = child.wait().context("waiting for the tests")?;
    Ok((status.success(), totals))
}

/// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`
fn parse(line: &str) -> Option<Totals> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut totals = Totals::default();
    for part in rest.split(['.', ';']).map(str::trim) {
        let mut words = part.split_whitespace();
        let (Some(count), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match what {
            "passed" => totals.passed = count,
            "failed" => totals.failed = count,
            "ignored" => totals.ignored = count,
            _ => {}
        }
    }
    Some(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        let line = "test result: FAILED. 9 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 20.95s";
        assert_eq!(
            parse(line),
            Some(Totals {
                passed: 9,
                failed: 1,
                ignored: 2
            })
        );
        assert_eq!(parse("running 11 tests"), None);
        assert_eq!(
            Totals {
                passed: 69,
                failed: 0,
                ignored: 0
            }
            .line("tests"),
            "tests: 69 passed, 0 failed"
        );
    }
}
