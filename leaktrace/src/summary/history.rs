//! Open leaks over time: a series of samples of bounded length, however long the session runs,
//! so that a trend (a leak that grows by the hour, incident 4) shows in the final report.

use std::time::Duration;

/// Samples kept; past it, every other one is dropped and the step doubles.
const MAX_POINTS: usize = 120;
/// The first step between samples; a long session ends up with a coarser one.
const FIRST_STEP_NS: u64 = 10_000_000_000;

#[derive(Debug)]
pub(crate) struct History {
    step_ns: u64,
    /// (time since the session started, open leaks then), oldest first.
    points: Vec<(u64, u64)>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            step_ns: FIRST_STEP_NS,
            points: Vec::new(),
        }
    }
}

impl History {
    /// Takes a sample if a step has passed since the last one.
    pub(crate) fn record(&mut self, elapsed_ns: u64, open: u64) {
        if self
            .points
            .last()
            .is_some_and(|&(at, _)| elapsed_ns < at + self.step_ns)
        {
            return;
        }
        self.points.push((elapsed_ns, open));
        if self.points.len() > MAX_POINTS {
            let mut index = 0;
            self.points.retain(|_| {
                index += 1;
                index % 2 == 1
            });
            self.step_ns *= 2;
        }
    }

    /// The samples with the final count at `elapsed_ns` appended, so the series ends at the end.
    pub(crate) fn series(&self, elapsed_ns: u64, open: u64) -> Vec<(Duration, u64)> {
        let mut series: Vec<(Duration, u64)> = self
            .points
            .iter()
            .map(|&(at, n)| (Duration::from_nanos(at), n))
            .collect();
        if self.points.last().is_none_or(|&(at, _)| at < elapsed_ns) {
            series.push((Duration::from_nanos(elapsed_ns), open));
        }
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sample_a_step_and_the_end_appended() {
        let mut history = History::default();
        history.record(0, 0);
        history.record(FIRST_STEP_NS / 2, 5);
        history.record(FIRST_STEP_NS, 2);
        let series = history.series(FIRST_STEP_NS + 1, 3);
        let counts: Vec<u64> = series.iter().map(|&(_, n)| n).collect();
        assert_eq!(counts, [0, 2, 3]);
        assert_eq!(series[1].0, Duration::from_nanos(FIRST_STEP_NS));
    }

    #[test]
    fn a_long_session_keeps_a_bounded_coarser_series() {
        let mut history = History::default();
        let steps = 10 * MAX_POINTS as u64;
        for step in 0..steps {
            history.record(step * FIRST_STEP_NS, step);
        }
        let series = history.series(steps * FIRST_STEP_NS, steps);
        assert!(series.len() <= MAX_POINTS + 1, "{} points", series.len());
        assert!(series.len() > MAX_POINTS / 4);
        assert_eq!(series.first().unwrap().1, 0);
        assert_eq!(series.last().unwrap().1, steps);
        assert!(series.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
