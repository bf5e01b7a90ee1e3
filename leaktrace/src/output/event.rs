//! What each kind of timeline event is called and what it says: one description per kind, which
//! the text report's timelines and the JSON's entries (and with them the trace file's) render.

use leaktrace_common::tcp_state;
use serde_json::{json, Map, Value};

use crate::decoder::{shutdown_how_name, Event, EventKind};

pub(super) struct Description {
    /// The JSON entry's `event`, and the trace file's instant.
    pub name: &'static str,
    /// The JSON entry's fields past those every event has, in their order.
    pub fields: Map<String, Value>,
    /// The line of the text report's timeline, before the receive state and who ran it.
    pub text: String,
    /// The kernel did it on its own (a packet's state change, an arrival, a destruction), in
    /// softirq, in whatever process the CPU was running: that process did not cause it.
    pub by_kernel: bool,
}

/// `event`; `fd`: the fd by which the event's process holds the socket, where known, for the
/// calls it made on it.
pub(super) fn describe(event: &Event, fd: Option<i32>) -> Description {
    let call = |name: &str, rest: &str| match fd {
        Some(fd) => format!("{name}(fd {fd}{rest})"),
        None if rest.is_empty() => format!("{name}()"),
        None => format!("{name}({})", rest.trim_start_matches(", ")),
    };
    let (name, fields, text) = match event.kind {
        EventKind::State { old, new } => (
            "state",
            json!({"old": tcp_state::name(old), "new": tcp_state::name(new)}),
            format!("{} -> {}", tcp_state::name(old), tcp_state::name(new)),
        ),
        EventKind::Accept { traced } => (
            "accept",
            json!({"fd": fd, "traced": traced}),
            match (traced, fd) {
                (false, _) => "accepted by a process not traced".to_owned(),
                (true, Some(fd)) => format!("accepted (fd {fd})"),
                (true, None) => "accepted".to_owned(),
            },
        ),
        // Only a shutdown that changed the state is seen: one that succeeded.
        EventKind::Shutdown { how } => (
            "shutdown",
            json!({"fd": fd, "how": shutdown_how_name(how), "ret": 0}),
            format!(
                "{} = 0",
                call("shutdown", &format!(", {}", shutdown_how_name(how)))
            ),
        ),
        EventKind::Close { time_wait } => (
            "close",
            json!({"fd": fd, "time_wait": time_wait}),
            call("close", ""),
        ),
        EventKind::Destroy => ("destroy", json!({}), "destroyed".to_owned()),
        EventKind::Recv { ret } => (
            "recv",
            json!({"ret": ret}),
            match ret {
                Some(ret) => format!("read() = {ret}"),
                None => "read()".to_owned(),
            },
        ),
        EventKind::Arrival => ("arrival", json!({}), "peer data or FIN arrived".to_owned()),
        EventKind::Connect => ("connect", json!({"fd": fd}), call("connect", "")),
        EventKind::HandedOver { fd } => (
            "held",
            json!({"fd": fd, "found_in": "/proc"}),
            format!(
                "held by pid {} as fd {fd} (found in /proc)",
                event.task.tgid
            ),
        ),
        EventKind::Fork { child } => (
            "fork",
            json!({"child": child}),
            format!("started process {child}"),
        ),
        EventKind::Exit => ("exit", json!({}), "process exited".to_owned()),
        EventKind::Present {
            fd,
            state,
            send_shutdown,
        } => (
            "present",
            json!({"fd": fd, "state": tcp_state::name(state), "send_shutdown": send_shutdown}),
            format!(
                "already open when tracing started: fd {fd}, {}{}",
                tcp_state::name(state),
                if send_shutdown {
                    ", sending side shut down"
                } else {
                    ""
                }
            ),
        ),
    };
    Description {
        name,
        fields: match fields {
            Value::Object(fields) => fields,
            _ => Map::new(),
        },
        text,
        by_kernel: matches!(
            event.kind,
            EventKind::State { .. } | EventKind::Arrival | EventKind::Destroy
        ),
    }
}
