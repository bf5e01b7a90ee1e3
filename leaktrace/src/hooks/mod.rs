//! Loading the eBPF object and attaching one hook per event, chosen by probing this kernel.
//!
//! Each event has candidates in order of preference. The design's hooks (fentry/fexit or
//! kprobes on `tcp_set_state`, `inet_csk_accept`, `tcp_close`) come first; tracepoints are the
//! fallback that works on kernels without kprobes or where fentry is refused. Events only a
//! syscall or a tracepoint can see have tracepoint candidates alone.
mod btf;
mod seed;
mod tracefs;

use std::{collections::BTreeSet, fmt, path::Path};

use anyhow::{anyhow, Context as _};
use aya::{
    programs::{BtfTracePoint, FEntry, FExit, KProbe, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use clap::ValueEnum;
use leaktrace_common::Config;

use crate::error::Failure;
pub use btf::VMLINUX_BTF;
pub use seed::{pidfd_getfd, pidfd_open, seed_existing};

/// Which hook family to use (`--hooks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HookFamily {
    /// Probe the kernel: fentry, then kprobes, then tracepoints.
    Auto,
    /// Tracepoints only (`tp_btf`, classic and syscall tracepoints): works without kprobes.
    Tracepoint,
    /// fentry/fexit on `tcp_set_state`, `inet_csk_accept`, `tcp_close`.
    Fentry,
    /// kprobes/kretprobes on the same functions.
    Kprobe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Fentry,
    Kprobe,
    Tracepoint,
}

#[derive(Clone, Copy)]
enum Target {
    Fentry(&'static str),
    Fexit(&'static str),
    Kprobe(&'static str),
    Kretprobe(&'static str),
    BtfTracepoint(&'static str),
    Tracepoint(&'static str, &'static str),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fentry(function) => write!(f, "fentry:{function}"),
            Self::Fexit(function) => write!(f, "fexit:{function}"),
            Self::Kprobe(function) => write!(f, "kprobe:{function}"),
            Self::Kretprobe(function) => write!(f, "kretprobe:{function}"),
            Self::BtfTracepoint(name) => write!(f, "tp_btf:{name}"),
            Self::Tracepoint(category, name) => write!(f, "tracepoint:{category}:{name}"),
        }
    }
}

struct Attachment {
    program: &'static str,
    target: Target,
}

struct Candidate {
    family: Family,
    attachments: &'static [Attachment],
    /// Shown instead of the attachments where they tell only half the story.
    note: Option<&'static str>,
}

struct EventHooks {
    event: &'static str,
    /// A kernel with none of the candidates cannot run leaktrace; otherwise the event is
    /// reported as unavailable and the detectors do without it.
    required: bool,
    candidates: &'static [Candidate],
}

use Family::{Fentry as FENTRY, Kprobe as KPROBE, Tracepoint as TRACEPOINT};

/// Which hook serves which event, in order of preference. The README's hook table mirrors this.
static EVENTS: &[EventHooks] = &[
    EventHooks {
        event: "state",
        required: true,
        candidates: &[
            Candidate {
                family: FENTRY,
                attachments: &[Attachment {
                    program: "state_fentry",
                    target: Target::Fentry("tcp_set_state"),
                }],
                note: None,
            },
            Candidate {
                family: KPROBE,
                attachments: &[Attachment {
                    program: "state_kprobe",
                    target: Target::Kprobe("tcp_set_state"),
                }],
                note: None,
            },
            Candidate {
                family: TRACEPOINT,
                attachments: &[Attachment {
                    program: "state_tp_btf",
                    target: Target::BtfTracepoint("inet_sock_set_state"),
                }],
                note: None,
            },
            Candidate {
                family: TRACEPOINT,
                attachments: &[Attachment {
                    program: "state_tp",
                    target: Target::Tracepoint("sock", "inet_sock_set_state"),
                }],
                note: None,
            },
        ],
    },
    EventHooks {
        event: "accept",
        required: true,
        candidates: &[
            Candidate {
                family: FENTRY,
                attachments: &[Attachment {
                    program: "accept_fexit",
                    target: Target::Fexit("inet_csk_accept"),
                }],
                note: None,
            },
            Candidate {
                family: KPROBE,
                attachments: &[Attachment {
                    program: "accept_kretprobe",
                    target: Target::Kretprobe("inet_csk_accept"),
                }],
                note: None,
            },
            Candidate {
                family: TRACEPOINT,
                attachments: &[],
                note: Some("fd table lookup at the accept syscall's exit"),
            },
        ],
    },
    EventHooks {
        event: "accept_fd",
        required: true,
        candidates: &[Candidate {
            family: TRACEPOINT,
            attachments: &[
                Attachment {
                    program: "accept_exit",
                    target: Target::Tracepoint("syscalls", "sys_exit_accept4"),
                },
                Attachment {
                    program: "accept_exit",
                    target: Target::Tracepoint("syscalls", "sys_exit_accept"),
                },
            ],
            note: None,
        }],
    },
    EventHooks {
        event: "connect",
        required: true,
        candidates: &[Candidate {
            family: TRACEPOINT,
            attachments: &[
                Attachment {
                    program: "connect_enter",
                    target: Target::Tracepoint("syscalls", "sys_enter_connect"),
                },
                Attachment {
                    program: "connect_exit",
                    target: Target::Tracepoint("syscalls", "sys_exit_connect"),
                },
            ],
            note: None,
        }],
    },
    EventHooks {
        event: "close",
        required: true,
        candidates: &[
            Candidate {
                family: FENTRY,
                attachments: &[Attachment {
                    program: "close_fentry",
                    target: Target::Fentry("tcp_close"),
                }],
                note: None,
            },
            Candidate {
                family: KPROBE,
                attachments: &[Attachment {
                    program: "close_kprobe",
                    target: Target::Kprobe("tcp_close"),
                }],
                note: None,
            },
            Candidate {
                family: TRACEPOINT,
                attachments: &[],
                note: Some("close(2) on a TCP fd (see close_fd)"),
            },
        ],
    },
    EventHooks {
        // Every family: tcp_close only sees the last reference go, while ownership follows
        // the fds (a close of a shared fd hands the socket to whoever else holds it).
        event: "close_fd",
        required: true,
        candidates: &[Candidate {
            family: TRACEPOINT,
            attachments: &[Attachment {
                program: "close_enter",
                target: Target::Tracepoint("syscalls", "sys_enter_close"),
            }],
            note: None,
        }],
    },
    EventHooks {
        event: "shutdown",
        required: true,
        candidates: &[Candidate {
            family: TRACEPOINT,
            attachments: &[
                Attachment {
                    program: "shutdown_enter",
                    target: Target::Tracepoint("syscalls", "sys_enter_shutdown"),
                },
                Attachment {
                    program: "shutdown_exit",
                    target: Target::Tracepoint("syscalls", "sys_exit_shutdown"),
                },
            ],
            note: None,
        }],
    },
    EventHooks {
        event: "listen",
        required: true,
        candidates: &[Candidate {
            family: TRACEPOINT,
            attachments: &[
                Attachment {
                    program: "listen_enter",
                    target: Target::Tracepoint("syscalls", "sys_enter_listen"),
                },
                Attachment {
                    program: "listen_exit",
                    target: Target::Tracepoint("syscalls", "sys_exit_listen"),
                },
            ],
            note: None,
        }],
    },
    EventHooks {
        event: "destroy",
        required: true,
        candidates: &[Candidate {
            family: TRACEPOINT,
            attachments: &[Attachment {
                program: "destroy_tp",
                target: Target::Tracepoint("tcp", "tcp_destroy_sock"),
            }],
            note: None,
        }],
    },
    EventHooks {
        event: "recv",
        required: false,
        candidates: &[
            Candidate {
                family: TRACEPOINT,
                attachments: &[Attachment {
                    program: "recv_length",
                    target: Target::Tracepoint("sock", "sock_recv_length"),
                }],
                note: None,
            },
            Candidate {
                family: TRACEPOINT,
                attachments: &[Attachment {
                    program: "recv_space_adjust",
                    target: Target::Tracepoint("tcp", "tcp_rcv_space_adjust"),
                }],
                note: Some(
                    "tracepoint:tcp:tcp_rcv_space_adjust (data reads only, not end-of-stream)",
                ),
            },
        ],
    },
    EventHooks {
        event: "present",
        required: false,
        candidates: &[Candidate {
            family: TRACEPOINT,
            attachments: &[Attachment {
                program: "seed",
                target: Target::Tracepoint("syscalls", "sys_enter_getsockname"),
            }],
            note: Some("leaktrace's own getsockname on pidfd_getfd duplicates"),
        }],
    },
    EventHooks {
        event: "fork",
        required: false,
        candidates: &[Candidate {
            family: TRACEPOINT,
            attachments: &[Attachment {
                program: "newtask",
                target: Target::Tracepoint("task", "task_newtask"),
            }],
            note: None,
        }],
    },
    EventHooks {
        event: "exit",
        required: true,
        candidates: &[Candidate {
            family: TRACEPOINT,
            attachments: &[Attachment {
                program: "process_exit",
                target: Target::Tracepoint("sched", "sched_process_exit"),
            }],
            note: None,
        }],
    },
    EventHooks {
        event: "arrival",
        required: false,
        candidates: &[Candidate {
            family: TRACEPOINT,
            attachments: &[Attachment {
                program: "data_ready",
                target: Target::Tracepoint("sock", "sk_data_ready"),
            }],
            note: None,
        }],
    },
];

/// The hook serving one event, for the startup log and the JSON header.
#[derive(Clone, Debug)]
pub struct HookChoice {
    pub event: &'static str,
    /// e.g. "tracepoint:sock:inet_sock_set_state", or "unavailable: <why>".
    pub hook: String,
}

/// The loaded programs; dropping it detaches everything.
pub struct Attached {
    pub ebpf: Ebpf,
    pub choices: Vec<HookChoice>,
    /// Candidates that were tried and refused, for the startup log.
    pub refused: Vec<String>,
}

impl Attached {
    /// Whether some hook serves `event` on this kernel.
    pub fn serves(&self, event: &str) -> bool {
        self.choices
            .iter()
            .any(|c| c.event == event && !c.hook.starts_with(UNAVAILABLE))
    }
}

const UNAVAILABLE: &str = "unavailable";

/// What the kernel side needs to know before it is loaded.
pub struct LoadOptions<'a> {
    pub object: &'a [u8],
    pub family: HookFamily,
    pub filter_targets: bool,
    pub follow_children: bool,
    pub ring_size: u32,
}

pub fn load(options: &LoadOptions<'_>) -> Result<Attached, Failure> {
    if options.object.is_empty() {
        return Err(Failure::Runtime(anyhow!(
            "this leaktrace was built without its eBPF object (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
        )));
    }
    let btf_path = Path::new(VMLINUX_BTF);
    if !btf_path.exists() {
        return Err(Failure::NoBtf);
    }
    let kernel_btf = btf::KernelBtf::load(btf_path).map_err(Failure::Btf)?;
    let tracefs = tracefs::Tracefs::open().map_err(Failure::NoTracefs)?;
    let config = Config {
        ready: 1,
        filter_targets: options.filter_targets.into(),
        seeder_tgid: std::process::id(),
        follow_children: options.follow_children.into(),
        kernel: kernel_btf.offsets().map_err(Failure::Btf)?,
        tracepoints: tracefs.offsets().map_err(Failure::NoTracefs)?,
    };
    let functions = kernel_functions(&kernel_btf);
    // Two parsed copies of the kernel's BTF at once would double leaktrace's peak memory: the
    // offsets and the functions are all that is needed of this one.
    drop(kernel_btf);
    let aya_btf = Btf::from_sys_fs().map_err(|e| Failure::Btf(e.into()))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&aya_btf))
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", options.ring_size)
        .load(options.object)
        .context("loading the eBPF object")
        .map_err(Failure::Runtime)?;

    let mut choices = Vec::new();
    let mut refused = Vec::new();
    let mut loaded = Vec::new();
    for event in EVENTS {
        let mut chosen = None;
        let mut reasons = Vec::new();
        for candidate in event
            .candidates
            .iter()
            .filter(|c| allowed(event, c, options.family))
        {
            let outcome = candidate.attachments.iter().try_for_each(|attachment| {
                let available = match attachment.target {
                    Target::Tracepoint(category, name) => tracefs.has_event(category, name),
                    Target::Fentry(f)
                    | Target::Fexit(f)
                    | Target::Kprobe(f)
                    | Target::Kretprobe(f) => functions.contains(f),
                    Target::BtfTracepoint(_) => true,
                };
                if !available {
                    return Err(anyhow!("not in this kernel"));
                }
                attach(&mut ebpf, &aya_btf, attachment, &mut loaded)
            });
            match outcome {
                Ok(()) => {
                    chosen = Some(describe(candidate));
                    break;
                }
                Err(e) => {
                    let why = format!("{}: {e:#}", describe(candidate));
                    reasons.push(why.clone());
                    refused.push(format!("{}: {why}", event.event));
                }
            }
        }
        match chosen {
            Some(hook) => choices.push(HookChoice {
                event: event.event,
                hook,
            }),
            None if event.required => {
                return Err(Failure::HookRefused {
                    event: event.event,
                    reasons: if reasons.is_empty() {
                        vec![format!(
                            "no {:?} hook exists for this event",
                            options.family
                        )]
                    } else {
                        reasons
                    },
                })
            }
            None => choices.push(HookChoice {
                event: event.event,
                hook: format!("{UNAVAILABLE} ({})", reasons.join("; ")),
            }),
        }
    }
    Ok(Attached {
        ebpf,
        choices,
        refused,
    })
}

/// The kernel functions some candidate hooks that this kernel has.
fn kernel_functions(btf: &btf::KernelBtf) -> BTreeSet<&'static str> {
    EVENTS
        .iter()
        .flat_map(|event| event.candidates)
        .flat_map(|candidate| candidate.attachments)
        .filter_map(|attachment| match attachment.target {
            Target::Fentry(f) | Target::Fexit(f) | Target::Kprobe(f) | Target::Kretprobe(f) => {
                Some(f)
            }
            Target::Tracepoint(..) | Target::BtfTracepoint(_) => None,
        })
        .filter(|f| btf.has_function(f))
        .collect()
}

/// With an explicit family, an event that family can serve must be served by it; events only
/// tracepoints can see (syscalls, destruction) use tracepoints in every family.
fn allowed(event: &EventHooks, candidate: &Candidate, family: HookFamily) -> bool {
    let wanted = match family {
        HookFamily::Auto => return true,
        HookFamily::Fentry => Family::Fentry,
        HookFamily::Kprobe => Family::Kprobe,
        HookFamily::Tracepoint => Family::Tracepoint,
    };
    candidate.family == wanted || !event.candidates.iter().any(|c| c.family == wanted)
}

fn describe(candidate: &Candidate) -> String {
    if let Some(note) = candidate.note {
        return note.to_owned();
    }
    candidate
        .attachments
        .iter()
        .map(|a| a.target.to_string())
        .collect::<Vec<_>>()
        .join(" + ")
}

fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    attachment: &Attachment,
    loaded: &mut Vec<&'static str>,
) -> anyhow::Result<()> {
    let program = ebpf.program_mut(attachment.program).ok_or_else(|| {
        anyhow!(
            "program {} missing from the eBPF object",
            attachment.program
        )
    })?;
    let first_use = !loaded.contains(&attachment.program);
    match attachment.target {
        Target::Fentry(function) => {
            let program: &mut FEntry = program.try_into()?;
            program.load(function, btf)?;
            program.attach()?;
        }
        Target::Fexit(function) => {
            let program: &mut FExit = program.try_into()?;
            program.load(function, btf)?;
            program.attach()?;
        }
        Target::Kprobe(function) | Target::Kretprobe(function) => {
            let program: &mut KProbe = program.try_into()?;
            program.load()?;
            program.attach(function, 0)?;
        }
        Target::BtfTracepoint(name) => {
            let program: &mut BtfTracePoint = program.try_into()?;
            program.load(name, btf)?;
            program.attach()?;
        }
        Target::Tracepoint(category, name) => {
            let program: &mut TracePoint = program.try_into()?;
            if first_use {
                program.load()?;
            }
            program.attach(category, name)?;
        }
    }
    if first_use {
        loaded.push(attachment.program);
    }
    Ok(())
}
