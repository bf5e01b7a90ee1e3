//! `--metrics ADDR`: the session's counts as Prometheus metrics, for dashboards and alerts on
//! long-running services. prometheus-client keeps the registry and writes the OpenMetrics text
//! exposition, which Prometheus scrapes natively; a small HTTP/1 handler serves it at `/metrics`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leaktrace_common::{tcp_state, ProbeFailure};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::{Batch, Output, Tick};
use crate::decoder::SockKey;
use crate::detect;
use crate::finding::{LeakKind, Outcome};
use crate::format::printable;
use crate::summary::IngestCounts;

/// What Prometheus asks for first, and what prometheus-client writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A scraper sends a few hundred bytes of request head; anything longer is not one.
const MAX_REQUEST_HEAD: usize = 8192;

/// A client that connects and sends nothing must not hold a task and a socket for ever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Each record in the ring is preceded by an 8-byte header (`BPF_RINGBUF_HDR_SZ`).
const RING_RECORD_OVERHEAD: usize = 8;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeakLabels {
    kind: &'static str,
    pid: u32,
    comm: String,
    /// Where the process runs; empty where unknown, which Prometheus reads as no label.
    cgroup: String,
    container: String,
    unit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// What a scrape reads: the registry, and the ring buffer fill, a high-water mark that each
/// GET of the metrics starts anew.
#[derive(Debug)]
struct Exposition {
    registry: Registry,
    ring_fill: Gauge<f64, AtomicU64>,
}

impl Exposition {
    /// The metrics as they stand, and the ring fill among them; reading changes nothing, so a
    /// HEAD, or a GET whose answer never arrives, leaves the next scrape what it would have read.
    fn render(&self) -> (String, f64) {
        let fill = self.ring_fill.get();
        let mut text = String::new();
        // Writing into a String cannot fail; only a label value could, and ours are plain.
        let _ = encode(&mut text, &self.registry);
        (text, fill)
    }

    /// A GET was answered with the ring fill `fill`: the high-water mark starts anew, unless it
    /// rose while the answer was being sent, which the next scrape must see.
    fn served(&self, fill: f64) {
        let _ = self.ring_fill.inner().compare_exchange(
            fill.to_bits(),
            0f64.to_bits(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// The metrics the session updates; a spawned task serves them until this is dropped.
pub(crate) struct Metrics {
    exposition: Arc<Exposition>,
    open_leaks: Family<LeakLabels, Gauge>,
    reported: Family<KindLabels, Counter>,
    resolved: Family<KindLabels, Counter>,
    transitions: Family<StateLabels, Counter>,
    sockets_tracked: Gauge,
    records: Counter,
    lost_events: Counter,
    probe_failures: Family<ReasonLabels, Counter>,
    /// The labels each open finding counts under, so its resolution, which does not name the
    /// process, takes it off the same series.
    open: HashMap<(SockKey, LeakKind), LeakLabels>,
    ring_size: u32,
    server: Option<AbortHandle>,
    local_addr: Option<SocketAddr>,
}

impl Metrics {
    fn new(ring_size: u32) -> Self {
        let mut registry = Registry::with_prefix("leaktrace");
        let open_leaks = Family::<LeakLabels, Gauge>::default();
        registry.register(
            "open_leaks",
            "Leaks reported and not resolved, by leak class, owning process and where it runs (cgroup, container, systemd unit)",
            open_leaks.clone(),
        );
        let reported = Family::<KindLabels, Counter>::default();
        registry.register(
            "leaks_reported",
            "Leaks reported, by leak class",
            reported.clone(),
        );
        let resolved = Family::<KindLabels, Counter>::default();
        registry.register(
            "leaks_resolved",
            "Reported leaks that ended (closed, drained, reset, owner exited...), by leak class",
            resolved.clone(),
        );
        // Present from the first scrape, so rates and alerts need no absent() guard.
        for kind in detect::kinds() {
            let labels = KindLabels { kind: kind.name() };
            reported.get_or_create_owned(&labels);
            resolved.get_or_create_owned(&labels);
        }
        let transitions = Family::<StateLabels, Counter>::default();
        registry.register(
            "transitions",
            "TCP state transitions of traced sockets, by the state entered",
            transitions.clone(),
        );
        let sockets_tracked = Gauge::default();
        registry.register(
            "sockets_tracked",
            "Sockets whose timeline leaktrace holds in memory",
            sockets_tracked.clone(),
        );
        let records = Counter::default();
        registry.register(
            "records",
            "Records read from the kernel's ring buffer",
            records.clone(),
        );
        let lost_events = Counter::default();
        registry.register(
            "lost_events",
            "Records the kernel dropped because the ring buffer was full (raise --ring-size)",
            lost_events.clone(),
        );
        let probe_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "probe_failures",
            "What the eBPF programs could not do, by reason (read: a kernel read failed; \
             *_map_full: a kernel map had no room; tracepoint_args: a tracepoint's record could \
             not be read; comm: a command name could not be read), counted in the kernel",
            probe_failures.clone(),
        );
        for failure in ProbeFailure::ALL {
            probe_failures.get_or_create_owned(&ReasonLabels {
                reason: failure.name(),
            });
        }
        let ring_fill = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "ring_buffer_fill_ratio",
            "Highest share of the ring buffer drained in one wake-up since the previous scrape: \
             how full the ring got before leaktrace read it, an approximation (the kernel's \
             positions are not exposed); near 1 means records are about to be lost",
            ring_fill.clone(),
        );
        Self {
            exposition: Arc::new(Exposition {
                registry,
                ring_fill,
            }),
            open_leaks,
            reported,
            resolved,
            transitions,
            sockets_tracked,
            records,
            lost_events,
            probe_failures,
            open: HashMap::new(),
            ring_size,
            server: None,
            local_addr: None,
        }
    }

    /// Binds `addr` now, so that an address in use fails before tracing starts, and serves the
    /// metrics from a task of the current tokio runtime.
    pub(crate) fn serve(addr: SocketAddr, ring_size: u32) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let mut metrics = Self::new(ring_size);
        metrics.local_addr = Some(listener.local_addr()?);
        let exposition = Arc::clone(&metrics.exposition);
        metrics.server = Some(tokio::spawn(accept(listener, exposition)).abort_handle());
        Ok(metrics)
    }

    /// Where the metrics are served (the port chosen when asked for port 0).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    pub(crate) fn outcome(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Leak(finding) => {
                let kind = finding.kind.name();
                self.reported.get_or_create(&KindLabels { kind }).inc();
                let placement = &finding.placement;
                let labels = LeakLabels {
                    kind,
                    pid: finding.pid,
                    comm: printable(&finding.comm),
                    cgroup: placement
                        .cgroup
                        .as_deref()
                        .map(printable)
                        .unwrap_or_default(),
                    container: placement.names.container.clone().unwrap_or_default(),
                    unit: placement
                        .names
                        .unit
                        .as_deref()
                        .map(printable)
                        .unwrap_or_default(),
                };
                self.open_leaks.get_or_create(&labels).inc();
                self.open.insert((finding.sock, finding.kind), labels);
            }
            Outcome::Resolved(resolved) => {
                let kind = resolved.kind.name();
                self.resolved.get_or_create(&KindLabels { kind }).inc();
                if let Some(labels) = self.open.remove(&(resolved.sock, resolved.kind)) {
                    // A process's series goes away with its last leak: pids are not reused
                    // soon, and a series per pid ever seen would grow without bound.
                    if self.open_leaks.get_or_create(&labels).dec() <= 1 {
                        self.open_leaks.remove(&labels);
                    }
                }
            }
        }
    }

    /// One wake-up took `records` records of `bytes` in all out of the ring buffer.
    pub(crate) fn drained(&self, records: usize, bytes: usize) {
        let taken = bytes + records * RING_RECORD_OVERHEAD;
        let ratio = (taken as f64 / f64::from(self.ring_size)).min(1.0);
        if ratio > self.exposition.ring_fill.get() {
            self.exposition.ring_fill.set(ratio);
        }
    }

    /// The session's running totals (`lost_events` read from the kernel just before).
    pub(crate) fn totals(&self, counts: &IngestCounts, sockets_tracked: usize) {
        // The counters only go up: add what is new since the last call.
        self.records
            .inc_by(counts.records.saturating_sub(self.records.get()));
        self.lost_events
            .inc_by(counts.lost_events.saturating_sub(self.lost_events.get()));
        for failure in ProbeFailure::ALL {
            let counter = self.probe_failures.get_or_create_owned(&ReasonLabels {
                reason: failure.name(),
            });
            let total = counts.probe_failures[failure as usize];
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.sockets_tracked
            .set(i64::try_from(sockets_tracked).unwrap_or(i64::MAX));
    }
}

impl Output for Metrics {
    fn batch(&mut self, batch: &Batch) {
        for (state, n) in batch.entered() {
            let state = tcp_state::name(state);
            self.transitions
                .get_or_create(&StateLabels { state })
                .inc_by(n);
        }
        self.drained(batch.records, batch.bytes);
    }

    fn tick(&mut self, tick: &Tick<'_>) -> io::Result<()> {
        for outcome in tick.outcomes {
            self.outcome(outcome);
        }
        self.totals(tick.ingest, tick.sockets_tracked);
        Ok(())
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

async fn accept(listener: TcpListener, exposition: Arc<Exposition>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let exposition = Arc::clone(&exposition);
                tokio::spawn(async move {
                    // A client that fails or stalls loses only its own connection.
                    let _ =
                        tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &exposition)).await;
                });
            }
            // Out of fds, most likely: wait for some to be freed rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Reads one request and answers it, then closes the connection: scrapers open one per scrape
/// or cope with `Connection: close`, and it keeps the handler free of keep-alive state.
async fn answer(mut stream: TcpStream, exposition: &Exposition) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let (response, scraped) = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                break respond(request.method, request.path, exposition)
            }
            Ok(httparse::Status::Partial) if head.len() <= MAX_REQUEST_HEAD => {}
            _ => {
                break (
                    response("400 Bad Request", "text/plain", "bad request\n", true),
                    None,
                )
            }
        }
    };
    stream.write_all(&response).await?;
    stream.shutdown().await?;
    if let Some(fill) = scraped {
        exposition.served(fill);
    }
    Ok(())
}

/// The response to a request, and for a GET of the metrics the ring fill it carries.
fn respond(
    method: Option<&str>,
    path: Option<&str>,
    exposition: &Exposition,
) -> (Vec<u8>, Option<f64>) {
    let path = path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    let with_body = method != Some("HEAD");
    match (method, path) {
        (Some("GET" | "HEAD"), "/metrics") => {
            let (text, fill) = exposition.render();
            let response = response("200 OK", CONTENT_TYPE, &text, with_body);
            (response, with_body.then_some(fill))
        }
        (Some("GET" | "HEAD"), _) => (
            response(
                "404 Not Found",
                "text/plain",
                "leaktrace serves its metrics at /metrics\n",
                with_body,
            ),
            None,
        ),
        _ => (
            response(
                "405 Method Not Allowed",
                "text/plain",
                "only GET and HEAD\n",
                true,
            ),
            None,
        ),
    }
}

fn response(status: &str, content_type: &str, body: &str, with_body: bool) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if with_body {
        response.push_str(body);
    }
    response.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fill_kernel_maps, finding, resolved, SOCK};
    use super::*;
    use crate::decoder::EventKind;
    use crate::detect::shut_wr_unread;
    use crate::timeline::tests::{event, state};

    fn exposition(metrics: &Metrics) -> String {
        metrics.exposition.render().0
    }

    /// Sends `request` to the metrics server at `addr` and reads the whole response.
    async fn request(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// The sample lines (no comments) of a scrape.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn open_leaks_follow_findings_and_resolutions() {
        let mut metrics = Metrics::new(1 << 20);
        let mut other = finding();
        other.sock.addr += 1;
        metrics.outcome(&Outcome::Leak(Box::new(finding())));
        metrics.outcome(&Outcome::Leak(Box::new(other.clone())));
        let text = exposition(&metrics);
        assert!(
            text.contains(
                "# HELP leaktrace_open_leaks Leaks reported and not resolved, by leak class, owning process and where it runs (cgroup, container, systemd unit).\n\
                 # TYPE leaktrace_open_leaks gauge\n\
                 leaktrace_open_leaks{kind=\"shut_wr_unread\",pid=\"4242\",comm=\"mailer\",cgroup=\"\",container=\"\",unit=\"\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            samples(&text).contains(&"leaktrace_leaks_reported_total{kind=\"shut_wr_unread\"} 2"),
            "{text}"
        );
        assert!(
            samples(&text).contains(&"leaktrace_leaks_reported_total{kind=\"close_wait\"} 0"),
            "every class is there from the start: {text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");

        let mut first = resolved();
        first.kind = shut_wr_unread::KIND;
        first.sock = SOCK;
        metrics.outcome(&Outcome::Resolved(first.clone()));
        let text = exposition(&metrics);
        assert!(
            samples(&text).contains(
                &"leaktrace_open_leaks{kind=\"shut_wr_unread\",pid=\"4242\",comm=\"mailer\",cgroup=\"\",container=\"\",unit=\"\"} 1"
            ),
            "{text}"
        );
        assert!(
            samples(&text).contains(&"leaktrace_leaks_resolved_total{kind=\"shut_wr_unread\"} 1"),
            "{text}"
        );
        first.sock = other.sock;
        metrics.outcome(&Outcome::Resolved(first));
        let text = exposition(&metrics);
        assert!(
            !text.contains("leaktrace_open_leaks{"),
            "the process's series goes with its last leak: {text}"
        );
    }

    #[test]
    fn process_names_in_labels_cannot_drive_a_terminal() {
        let mut metrics = Metrics::new(1 << 20);
        let mut leak = finding();
        leak.comm = "\x1b]0;x\x07\nLEAK x".into();
        metrics.outcome(&Outcome::Leak(Box::new(leak)));
        let text = exposition(&metrics);
        assert!(
            !text.contains(|c: char| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            samples(&text).contains(
                &r#"leaktrace_open_leaks{kind="shut_wr_unread",pid="4242",comm="\\u{1b}]0;x\\u{7}\\nLEAK x",cgroup="",container="",unit=""} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn transitions_totals_and_ring_fill() {
        let mut metrics = Metrics::new(4096);
        let sock = SOCK;
        let mut batch = Batch::default();
        batch.count(&event(
            sock,
            1,
            state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED),
        ));
        batch.count(&event(
            sock,
            2,
            state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
        ));
        batch.count(&event(sock, 3, EventKind::Accept { traced: true }));
        metrics.batch(&batch);
        metrics.totals(
            &IngestCounts {
                records: 3,
                decode_errors: 0,
                lost_events: 2,
                ring_size: 4096,
                probe_failures: [0; ProbeFailure::COUNT as usize],
            },
            1,
        );
        metrics.totals(
            &IngestCounts {
                records: 5,
                decode_errors: 0,
                lost_events: 2,
                ring_size: 4096,
                probe_failures: [1, 0, 0, 0, 0],
            },
            4,
        );
        // 8 records of 120 bytes, each with its 8-byte header: a quarter of a 4 KiB ring.
        metrics.drained(8, 8 * 120);
        metrics.drained(1, 120);
        let text = exposition(&metrics);
        for expected in [
            "leaktrace_transitions_total{state=\"ESTABLISHED\"} 1",
            "leaktrace_transitions_total{state=\"CLOSE_WAIT\"} 1",
            "leaktrace_records_total 5",
            "leaktrace_lost_events_total 2",
            "leaktrace_sockets_tracked 4",
            "leaktrace_ring_buffer_fill_ratio 0.25",
        ] {
            assert!(
                samples(&text).contains(&expected),
                "no {expected:?} in\n{text}"
            );
        }
        metrics.exposition.served(0.25);
        assert!(
            samples(&exposition(&metrics)).contains(&"leaktrace_ring_buffer_fill_ratio 0.0"),
            "the high-water mark starts anew after each GET"
        );
        // A GET read 0.25, then the mark rose before it was sent: the next scrape sees the rise.
        metrics.drained(8, 8 * 120);
        metrics.drained(16, 16 * 120);
        metrics.exposition.served(0.25);
        assert!(
            samples(&exposition(&metrics)).contains(&"leaktrace_ring_buffer_fill_ratio 0.5"),
            "a rise while a GET is answered is kept"
        );
    }

    /// Crossing a kernel map's limit is counted by reason, each reason its own series from the
    /// first scrape, so an alert can watch the map-full ones.
    #[test]
    fn full_kernel_maps_are_counted_by_reason() {
        let metrics = Metrics::new(4096);
        let reason = |reason: &str, n: u64| {
            format!("leaktrace_probe_failures_total{{reason=\"{reason}\"}} {n}")
        };
        let text = exposition(&metrics);
        for failure in ProbeFailure::ALL {
            let zero = reason(failure.name(), 0);
            assert!(
                samples(&text).contains(&zero.as_str()),
                "no {zero:?} in\n{text}"
            );
        }
        let mut counts = IngestCounts::default();
        fill_kernel_maps(&mut counts);
        metrics.totals(&counts, 0);
        let text = exposition(&metrics);
        for expected in [
            reason("socket_map_full", 12),
            reason("target_map_full", 3),
            reason("read", 0),
        ] {
            assert!(
                samples(&text).contains(&expected.as_str()),
                "no {expected:?} in\n{text}"
            );
        }
        // The kernel's counters are totals: reading the same again counts nothing twice.
        metrics.totals(&counts, 0);
        assert!(samples(&exposition(&metrics)).contains(&reason("socket_map_full", 12).as_str()));
    }

    #[tokio::test]
    async fn served_over_http() {
        let metrics = Metrics::serve(([127, 0, 0, 1], 0).into(), 4096).unwrap();
        let addr = metrics.local_addr().unwrap();
        let get = |text| request(addr, text);
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        let (_, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(
            ok.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{ok}"
        );
        assert!(body.contains("leaktrace_records_total 0\n"), "{body}");
        let missing = get("GET / HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = get("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let garbage = get("\x01\x02 nonsense\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    }

    /// A HEAD (a health check, `curl -I`) once reset the ring fill, so Prometheus's next GET
    /// read 0 however full the ring had been.
    #[tokio::test]
    async fn only_a_get_of_the_metrics_starts_the_ring_fill_anew() {
        let metrics = Metrics::serve(([127, 0, 0, 1], 0).into(), 4096).unwrap();
        let addr = metrics.local_addr().unwrap();
        // A quarter of the ring in one wake-up.
        metrics.drained(8, 8 * 120);
        let fill = |response: &str| {
            response
                .lines()
                .find_map(|l| l.strip_prefix("leaktrace_ring_buffer_fill_ratio "))
                .map(str::to_owned)
        };
        let head = request(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(fill(&head), None, "a HEAD has no body: {head}");
        for other in [
            "GET / HTTP/1.1\r\n\r\n",
            "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "\x01 nonsense\r\n\r\n",
        ] {
            request(addr, other).await;
        }
        let scrape = request(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(fill(&scrape).as_deref(), Some("0.25"), "{scrape}");
        let next = request(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(fill(&next).as_deref(), Some("0.0"), "{next}");
    }

    #[test]
    fn an_address_in_use_fails_at_once() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let first = Metrics::serve(([127, 0, 0, 1], 0).into(), 4096).unwrap();
        let taken = first.local_addr().unwrap();
        let err = Metrics::serve(taken, 4096).err().expect("bound twice");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
