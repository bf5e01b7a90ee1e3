//! What the session does at each tick, records aside: the host makes the store current, the
//! detectors read it, the store lets go of what nobody needs any more. The detectors never
//! touch the host: what a finding names of the running system (the fd, the process's name,
//! where it runs) is asked between their verdicts and the findings they make of them.
use std::time::Duration;

use crate::detect::Detectors;
use crate::enrich::{self, Enricher};
use crate::finding::Outcome;
use crate::host::Host;
use crate::summary::{FinalReport, IngestCounts, Progress};
use crate::timeline::Store;

pub(crate) struct Evaluator {
    detectors: Detectors,
    enricher: Enricher,
    host: Box<dyn Host + Send>,
}

impl Evaluator {
    pub(crate) fn new(
        leak_after: Duration,
        idle_after: Duration,
        host: Box<dyn Host + Send>,
    ) -> Self {
        Self {
            detectors: Detectors::new(leak_after, idle_after),
            enricher: Enricher::default(),
            host,
        }
    }

    /// Runs every detector over every socket. `now_ns` is CLOCK_MONOTONIC, the records' clock.
    /// A finding on a socket whose records may be incomplete is made only once /proc confirmed
    /// its owner still holds it: the owners of this tick's maturing findings are looked up
    /// together, and nothing else. Also drops timelines nothing needs any more.
    pub(crate) fn evaluate(&mut self, store: &mut Store, now_ns: u64) -> Vec<Outcome> {
        let host = &mut *self.host;
        self.enricher.before_detection(store, host, now_ns);
        let mut verdicts = self.detectors.check(store, now_ns);
        let unconfirmed = enrich::resolve_fds(store, host, &verdicts.sockets(store), now_ns);
        verdicts.hold_back(&unconfirmed);
        enrich::name_owners(store, host, &verdicts.to_report(store));
        let outcomes = self.detectors.evaluate(verdicts, store, now_ns);
        store.sweep(|key| self.detectors.keeps(key));
        outcomes
    }

    /// Where the session stands, for the periodic summaries.
    pub(crate) fn progress(&self, store: &Store, now_ns: u64, ingest: IngestCounts) -> Progress {
        self.detectors.progress(store, now_ns, ingest)
    }

    /// The final report, the open findings' owners made current first.
    pub(crate) fn summary(
        &mut self,
        store: &mut Store,
        now_ns: u64,
        ingest: IngestCounts,
    ) -> FinalReport {
        let host = &mut *self.host;
        let reported = self.detectors.reported();
        // Reported already: what /proc cannot confirm now, the final re-check after a loss did.
        enrich::resolve_fds(store, host, &reported, now_ns);
        enrich::name_owners(store, host, &reported);
        enrich::names(store, host, self.detectors.processes(store));
        self.detectors.summary(store, now_ns, ingest)
    }

    /// After records were lost: see [`enrich::recheck_owners`].
    pub(crate) fn recheck_owners(&mut self, store: &mut Store, now_ns: u64) -> bool {
        enrich::recheck_owners(store, &mut *self.host, now_ns)
    }

    /// Whether `pid` is gone, although no exit record may have said so.
    pub(crate) fn gone(&mut self, pid: u32) -> bool {
        self.host.gone(pid)
    }

    /// Names the processes `tgids` where no record of theirs did, for an output that names
    /// them (see [`enrich::names`]).
    pub(crate) fn name(&mut self, store: &mut Store, tgids: Vec<u32>) {
        enrich::names(store, &mut *self.host, tgids);
    }
}
