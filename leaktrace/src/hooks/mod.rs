//! Loading the eBPF object and attaching one hook per event, chosen by probing this kernel.
//!
//! Each event has candidates in order of cost. BTF tracepoints (`tp_btf`) come first: they run
//! without building a trace record and read fields with plain loads. fentry/fexit and kprobes
//! serve what no tracepoint shows (which process accepted a connection); classic tracepoints are
//! the fallback for kernels that refuse the others. No syscall tracepoint stays attached: one
//! would put every syscall of every process on the kernel's slow path, so connect, listen,
//! shutdown and close are read off the state changes they make (see the eBPF crate's `state`).
mod btf;
mod channel;
mod present;
#[cfg(test)]
mod probe_tests;
mod tracefs;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
};

use anyhow::anyhow;
use aya::{
    programs::{BtfTracePoint, FExit, KProbe, ProgramType, TracePoint},
    sys::{is_helper_supported, BpfHelper},
    Btf, Ebpf, EbpfLoader,
};
use clap::ValueEnum;
use leaktrace_common::Config;

pub(crate) use btf::VMLINUX_BTF;
pub(crate) use channel::{Channel, Tracing};
pub(crate) use present::{record_present, PRESENT_HOOK};

/// Which hook family to use (`--hooks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HookFamily {
    /// Probe the kernel: for each event the cheapest hook it accepts.
    Auto,
    /// Tracepoints only (BTF tracepoints, else classic ones): works without kprobes or fentry.
    Tracepoint,
    /// BTF programs only: tp_btf, and fexit on inet_csk_accept.
    Fentry,
    /// Programs that read through bpf_probe_read_kernel: kretprobe on inet_csk_accept and
    /// classic tracepoints.
    Kprobe,
}

impl HookFamily {
    /// As `--hooks` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tracepoint => "tracepoint",
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
        }
    }

    /// The hooks of the family, as a kernel allows or refuses them.
    fn hooks(self) -> &'static str {
        match self {
            Self::Auto => "any hook",
            Self::Tracepoint => "tracepoints",
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobes",
        }
    }
}

/// The family of the hooks attached, and why that one: the one line the start prints of them.
#[derive(Clone, Debug)]
pub(crate) struct FamilyChoice {
    pub family: HookFamily,
    /// e.g. "as this kernel refuses fentry (Operation not permitted) and kprobes (not in this
    /// kernel)", "as --hooks tracepoint asks".
    pub why: String,
}

impl FamilyChoice {
    /// `asked` by `--hooks`, `chosen` for the events that tell families apart after refusals
    /// of `passed_over` (each candidate's family and the kernel's reason, in the order tried).
    fn new(asked: HookFamily, chosen: HookFamily, passed_over: &[(HookFamily, String)]) -> Self {
        if asked != HookFamily::Auto {
            return Self {
                family: chosen,
                why: format!("as --hooks {} asks", asked.name()),
            };
        }
        let mut families = Vec::new();
        let mut refusals = Vec::new();
        // The first reason of each family auto preferred: its best candidate's.
        for (family, reason) in passed_over {
            if *family != chosen && !families.contains(family) {
                families.push(*family);
                refusals.push(format!("{} ({reason})", family.hooks()));
            }
        }
        let why = if refusals.is_empty() {
            "the best this kernel allows".to_owned()
        } else {
            format!("as this kernel refuses {}", refusals.join(" and "))
        };
        Self {
            family: chosen,
            why,
        }
    }
}

/// What the kernel said of a refused hook, in a few words: the error at the bottom of the
/// chain (`Operation not permitted`), not the verifier's log above it, which `--verbose` shows.
fn in_short(error: &anyhow::Error) -> String {
    let cause = error.root_cause().to_string();
    match cause.split_once(" (os error ") {
        Some((said, _)) => said.to_owned(),
        None => cause,
    }
}

/// Why the kernel side could not be set up.
#[derive(Debug)]
pub enum LoadError {
    /// The binary was built without its eBPF object.
    NoObject,
    NoBtf,
    /// BTF exists but lacks something leaktrace reads.
    Btf(anyhow::Error),
    NoTracefs(anyhow::Error),
    HookRefused {
        event: &'static str,
        reasons: Vec<String>,
    },
    /// An option needs a helper this kernel does not let tracing programs call.
    NoHelper {
        option: &'static str,
        helper: &'static str,
        /// Since when kernels have it, and what to do instead.
        instead: &'static str,
    },
    /// Anything else the kernel or the object refused.
    Other(anyhow::Error),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoObject => write!(
                f,
                "this leaktrace was built without its eBPF object (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
            ),
            Self::NoBtf => write!(
                f,
                "this kernel has no BTF ({VMLINUX_BTF} is missing): leaktrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            ),
            Self::Btf(e) => write!(f, "cannot use this kernel's BTF: {e:#}"),
            Self::NoTracefs(e) => write!(f, "tracefs unavailable: {e:#}"),
            Self::HookRefused { event, reasons } => write!(
                f,
                "the kernel refused every hook for the {event} event: {}",
                reasons.join("; ")
            ),
            Self::NoHelper {
                option,
                helper,
                instead,
            } => write!(
                f,
                "{option} needs tracing programs to call {helper}, which this kernel does not \
                 allow: {instead}"
            ),
            Self::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for LoadError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

/// What a program is attached to.
#[derive(Clone, Copy)]
enum Hook {
    TpBtf {
        program: &'static str,
        event: &'static str,
    },
    /// `params`: the function's parameter count the program was written for (an fexit program
    /// finds the return value after them).
    Fexit {
        program: &'static str,
        function: &'static str,
        params: u32,
    },
    Kretprobe {
        program: &'static str,
        function: &'static str,
    },
    Tracepoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
}

impl Hook {
    fn program(self) -> &'static str {
        match self {
            Self::TpBtf { program, .. }
            | Self::Fexit { program, .. }
            | Self::Kretprobe { program, .. }
            | Self::Tracepoint { program, .. } => program,
        }
    }

    /// The `--hooks` family this hook belongs to.
    fn family(self) -> HookFamily {
        match self {
            Self::TpBtf { .. } | Self::Tracepoint { .. } => HookFamily::Tracepoint,
            Self::Fexit { .. } => HookFamily::Fentry,
            Self::Kretprobe { .. } => HookFamily::Kprobe,
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TpBtf { event, .. } => write!(f, "tp_btf:{event}"),
            Self::Fexit { function, .. } => write!(f, "fexit:{function}"),
            Self::Kretprobe { function, .. } => write!(f, "kretprobe:{function}"),
            Self::Tracepoint { category, name, .. } => write!(f, "tracepoint:{category}:{name}"),
        }
    }
}

/// One way to serve an event: a hook, or what another event's hook already gives.
struct Candidate {
    hook: Option<Hook>,
    /// Without a hook: what serves the event, and the programs one of which must be attached.
    derived: Option<(&'static str, &'static [&'static str])>,
    /// A fallback that sees less than the event's first candidates: what the user loses with it.
    misses: Option<&'static str>,
}

const fn tp_btf(program: &'static str, event: &'static str) -> Candidate {
    Candidate {
        hook: Some(Hook::TpBtf { program, event }),
        derived: None,
        misses: None,
    }
}

const fn tracepoint(
    program: &'static str,
    category: &'static str,
    name: &'static str,
) -> Candidate {
    Candidate {
        hook: Some(Hook::Tracepoint {
            program,
            category,
            name,
        }),
        derived: None,
        misses: None,
    }
}

const fn fexit(program: &'static str, function: &'static str, params: u32) -> Candidate {
    Candidate {
        hook: Some(Hook::Fexit {
            program,
            function,
            params,
        }),
        derived: None,
        misses: None,
    }
}

const fn kretprobe(program: &'static str, function: &'static str) -> Candidate {
    Candidate {
        hook: Some(Hook::Kretprobe { program, function }),
        derived: None,
        misses: None,
    }
}

/// No hook of its own: `what` serves the event, given one of `programs` attached.
const fn derived(what: &'static str, programs: &'static [&'static str]) -> Candidate {
    Candidate {
        hook: None,
        derived: Some((what, programs)),
        misses: None,
    }
}

impl Candidate {
    /// This candidate, a fallback that loses the user `what`.
    const fn missing(self, what: &'static str) -> Self {
        Self {
            misses: Some(what),
            ..self
        }
    }

    fn family(&self) -> HookFamily {
        // Derived candidates ride on tracepoints.
        self.hook.map_or(HookFamily::Tracepoint, Hook::family)
    }

    fn describe(&self) -> String {
        match (self.hook, self.derived) {
            (Some(hook), _) => hook.to_string(),
            (None, Some((what, _))) => what.to_owned(),
            (None, None) => String::new(),
        }
    }
}

struct EventHooks {
    event: &'static str,
    /// A kernel with none of the candidates cannot run leaktrace; otherwise the event is
    /// reported as unavailable and the detectors do without it.
    required: bool,
    candidates: &'static [Candidate],
    /// What the user loses where no candidate serves an event that is not required.
    missed_without: Option<&'static str>,
}

/// The kernel function that hands an accepted connection to its acceptor.
const ACCEPT_FUNCTION: &str = "inet_csk_accept";

/// The programs that read a socket's first read, for accepting by it.
const READ_PROGRAMS: &[&str] = &["recv_tp_btf", "recv_tp"];

/// What `tcp_rcv_space_adjust` cannot show: it runs only for reads that copied data.
const END_OF_STREAM_READS_UNSEEN: &str = "end-of-stream reads are not seen \
    (sock:sock_recv_length is 6.3+; tcp_rcv_space_adjust shows data reads only): eof_unread \
    keeps the kernel's last report, so it may stay true after the owner read to the end, and a \
    shut-down socket drained to the end is not seen as drained";

/// Which hook serves which event, in order of preference. The README's hook table mirrors this.
static HOOKS: &[EventHooks] = &[
    EventHooks {
        event: "state",
        required: true,
        missed_without: None,
        candidates: &[
            tp_btf("state_tp_btf", "inet_sock_set_state"),
            tracepoint("state_tp", "sock", "inet_sock_set_state"),
        ],
    },
    EventHooks {
        event: "destroy",
        required: true,
        missed_without: None,
        candidates: &[
            tp_btf("destroy_tp_btf", "tcp_destroy_sock"),
            tracepoint("destroy_tp", "tcp", "tcp_destroy_sock"),
        ],
    },
    EventHooks {
        event: "recv",
        required: false,
        candidates: &[
            tp_btf("recv_tp_btf", "sock_recv_length"),
            tracepoint("recv_tp", "sock", "sock_recv_length"),
            tp_btf("rcvspace_tp_btf", "tcp_rcv_space_adjust").missing(END_OF_STREAM_READS_UNSEEN),
            tracepoint("rcvspace_tp", "tcp", "tcp_rcv_space_adjust")
                .missing(END_OF_STREAM_READS_UNSEEN),
        ],
        missed_without: Some(
            "reads are not seen: eof_unread and unread_bytes keep the kernel's last report, \
             and a shut-down socket drained to the end is not seen as drained",
        ),
    },
    EventHooks {
        event: "accept",
        required: true,
        missed_without: None,
        candidates: &[
            fexit("accept_fexit_2", ACCEPT_FUNCTION, 2),
            fexit("accept_fexit_4", ACCEPT_FUNCTION, 4),
            kretprobe("accept_retprobe", ACCEPT_FUNCTION),
            derived("the connection's first read (recv)", READ_PROGRAMS),
            derived("the listening process, until a shutdown shows another", &[]),
        ],
    },
    EventHooks {
        event: "arrival",
        required: false,
        candidates: &[
            tp_btf("arrival_tp_btf", "sk_data_ready"),
            tracepoint("arrival_tp", "sock", "sk_data_ready"),
        ],
        missed_without: Some(
            "data arriving after the owner's shutdown is not seen as it comes \
             (sock:sk_data_ready is 6.4+): it shows at the socket's next state change, so \
             bytes_after_shutdown and a shut_wr_unread finding may come late",
        ),
    },
    EventHooks {
        event: "fork",
        required: false,
        candidates: &[tracepoint("newtask", "task", "task_newtask")],
        // Only following children needs it, and without it that option is refused.
        missed_without: None,
    },
    EventHooks {
        event: "exit",
        required: true,
        missed_without: None,
        candidates: &[tracepoint("process_exit", "sched", "sched_process_exit")],
    },
];

/// The hook serving one event, for the startup log and the JSON header.
#[derive(Clone, Debug)]
pub(crate) struct HookChoice {
    pub event: &'static str,
    /// e.g. "tp_btf:inet_sock_set_state", or "unavailable (<why>)".
    pub hook: String,
    /// What the user does not see because of the hook this kernel allowed (or its absence).
    pub misses: Option<&'static str>,
}

/// The loaded programs; dropping it detaches everything.
pub(crate) struct Attached {
    pub ebpf: Ebpf,
    pub choices: Vec<HookChoice>,
    pub family: FamilyChoice,
    /// Candidates that were tried and refused, for `--verbose` and the JSON start record.
    pub refused: Vec<String>,
    /// Whether the program that records present sockets can run here (its tracepoint exists).
    pub can_record_present: bool,
}

impl Attached {
    /// Whether some hook serves `event` on this kernel.
    pub(crate) fn serves(&self, event: &str) -> bool {
        self.choices
            .iter()
            .any(|c| c.event == event && !c.hook.starts_with(UNAVAILABLE))
    }
}

/// How a hook that serves nothing is spelled, ahead of the reasons.
pub(crate) const UNAVAILABLE: &str = "unavailable";

/// The object `leaktrace-ebpf` compiles to, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));

/// What the kernel side needs to know before it is loaded.
pub(crate) struct LoadOptions {
    pub family: HookFamily,
    pub filter_targets: bool,
    pub follow_children: bool,
    /// The cgroup v2 whose processes are traced, and how deep it sits: (id, level).
    pub cgroup: Option<(u64, u32)>,
    pub ring_size: u32,
    /// Entries of the traced-process map (unused without `filter_targets`).
    pub max_processes: u32,
    /// Entries of the map of followed sockets.
    pub max_kernel_sockets: u32,
    /// Programs that return at once: what the attach points cost by themselves.
    pub floor: bool,
}

pub(crate) fn load(options: &LoadOptions) -> Result<Attached, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let btf_path = Path::new(VMLINUX_BTF);
    if !btf_path.exists() {
        return Err(LoadError::NoBtf);
    }
    // The verifier refuses a helper the kernel does not offer a program type even on a path
    // pruned for this configuration: its absence is checked first, one clear line rather than
    // every hook's verifier log. A classic tracepoint may call the helpers kprobes and BTF
    // programs may (Debian's 6.1 offers this one to tracing programs, its 5.10 does not).
    if options.cgroup.is_some()
        && !is_helper_supported(
            ProgramType::TracePoint,
            BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
        )
        .unwrap_or(false)
    {
        return Err(LoadError::NoHelper {
            option: "--cgroup and --unit",
            helper: "bpf_get_current_ancestor_cgroup_id",
            instead: "6.1 does, 5.10 does not; here, trace the service's processes with --pid \
                      and --follow-children",
        });
    }
    let kernel_btf = btf::KernelBtf::load(btf_path).map_err(LoadError::Btf)?;
    let tracefs = tracefs::Tracefs::open().map_err(LoadError::NoTracefs)?;
    let config = Config {
        ready: 1,
        floor: options.floor.into(),
        filter_targets: options.filter_targets.into(),
        leaktrace_tgid: std::process::id(),
        follow_children: options.follow_children.into(),
        ring_size: options.ring_size,
        cgroup_id: options.cgroup.map_or(0, |(id, _)| id),
        cgroup_level: options.cgroup.map_or(0, |(_, level)| level),
        _pad: 0,
        kernel: kernel_btf.offsets().map_err(LoadError::Btf)?,
        tracepoints: tracefs.offsets().map_err(LoadError::NoTracefs)?,
    };
    let in_btf = btf_targets(&kernel_btf);
    let parameters = in_btf
        .iter()
        .filter_map(|&f| Some((f, kernel_btf.parameter_count(f)?)))
        .collect();
    // Two parsed copies of the kernel's BTF at once would double leaktrace's peak memory: the
    // offsets and the hook targets are all that is needed of this one.
    drop(kernel_btf);
    let aya_btf = Btf::from_sys_fs().map_err(|e| LoadError::Btf(e.into()))?;
    attach_all(
        options,
        &config,
        &Kernel {
            btf: &aya_btf,
            tracefs: &tracefs,
            in_btf: &in_btf,
            parameters: &parameters,
        },
    )
}

/// The kernel's kprobe event source, which kretprobes attach through: absent where kprobes are
/// not built in (`CONFIG_KPROBES` unset), which aya would only report as that file missing.
const KPROBE_EVENT_SOURCE: &str = "/sys/bus/event_source/devices/kprobe";

/// What the running kernel offers hooks.
struct Kernel<'a> {
    btf: &'a Btf,
    tracefs: &'a tracefs::Tracefs,
    /// The kernel functions and BTF tracepoints of the candidates that it has.
    in_btf: &'a BTreeSet<&'static str>,
    /// How many parameters each of those functions takes.
    parameters: &'a BTreeMap<&'static str, u32>,
}

impl Kernel<'_> {
    /// Whether this kernel has what `hook` attaches to, as the program expects it.
    fn offers(&self, hook: Hook) -> anyhow::Result<()> {
        let found = match hook {
            Hook::Tracepoint { category, name, .. } => self.tracefs.has_event(category, name),
            Hook::Fexit {
                function, params, ..
            } => match self.parameters.get(function) {
                Some(&n) if n != params => {
                    return Err(anyhow!(
                        "{function} takes {n} parameters here, this program expects {params}"
                    ))
                }
                found => found.is_some(),
            },
            Hook::Kretprobe { .. } if !Path::new(KPROBE_EVENT_SOURCE).exists() => {
                return Err(anyhow!("not built into this kernel")
                    .context(format!("no {KPROBE_EVENT_SOURCE}")));
            }
            Hook::Kretprobe { function, .. }
            | Hook::TpBtf {
                event: function, ..
            } => self.in_btf.contains(function),
        };
        if found {
            Ok(())
        } else {
            Err(anyhow!("not in this kernel"))
        }
    }
}

/// Loads the object with `config` and attaches, for each event, the first candidate the kernel
/// accepts.
fn attach_all(
    options: &LoadOptions,
    config: &Config,
    kernel: &Kernel<'_>,
) -> Result<Attached, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .btf(Some(kernel.btf))
        .override_global("CONFIG", config, true)
        .map_max_entries("RECORDS", options.ring_size)
        // Preallocated: a map nobody fills would hold its kernel memory for nothing.
        .map_max_entries(
            "TARGETS",
            if options.filter_targets {
                options.max_processes
            } else {
                1
            },
        )
        .map_max_entries("SOCKS", options.max_kernel_sockets)
        .load(OBJECT)
        .map_err(|e| LoadError::Other(anyhow::Error::new(e).context("loading the eBPF object")))?;
    let mut choices = Vec::new();
    let mut refused = Vec::new();
    let mut attached = Vec::new();
    let mut family = None;
    for event in HOOKS {
        let mut chosen: Option<&Candidate> = None;
        let mut reasons = Vec::new();
        let mut passed_over = Vec::new();
        for candidate in event
            .candidates
            .iter()
            .filter(|c| allowed(event, c, options.family))
        {
            let outcome = match (candidate.hook, candidate.derived) {
                (Some(hook), _) => kernel
                    .offers(hook)
                    .and_then(|()| attach(&mut ebpf, kernel.btf, hook))
                    .map(|()| attached.push(hook.program())),
                (None, Some((_, needs))) => {
                    if needs.is_empty() || needs.iter().any(|p| attached.contains(p)) {
                        Ok(())
                    } else {
                        Err(anyhow!("no {} hook", needs.join(" or ")))
                    }
                }
                (None, None) => Err(anyhow!("nothing to attach")),
            };
            match outcome {
                Ok(()) => {
                    chosen = Some(candidate);
                    break;
                }
                Err(e) => {
                    let why = format!("{}: {e:#}", candidate.describe());
                    reasons.push(why.clone());
                    refused.push(format!("{}: {why}", event.event));
                    passed_over.push((candidate.family(), in_short(&e)));
                }
            }
        }
        match chosen {
            Some(candidate) => {
                // Only events with hooks of other families than tracepoints tell them apart.
                let tells_apart =
                    (event.candidates.iter()).any(|c| c.family() != HookFamily::Tracepoint);
                if tells_apart && family.is_none() {
                    family = Some(FamilyChoice::new(
                        options.family,
                        candidate.family(),
                        &passed_over,
                    ));
                }
                choices.push(HookChoice {
                    event: event.event,
                    hook: candidate.describe(),
                    misses: candidate.misses,
                });
            }
            None if event.required => {
                return Err(LoadError::HookRefused {
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
                misses: event.missed_without,
            }),
        }
    }
    let can_record_present = kernel.tracefs.has_event(PRESENT_HOOK.0, PRESENT_HOOK.1);
    choices.push(HookChoice {
        event: "present",
        hook: if can_record_present {
            format!(
                "tracepoint:{}:{} on leaktrace's own calls, while it starts",
                PRESENT_HOOK.0, PRESENT_HOOK.1
            )
        } else {
            format!(
                "{UNAVAILABLE} (no tracepoint:{}:{})",
                PRESENT_HOOK.0, PRESENT_HOOK.1
            )
        },
        misses: None,
    });
    Ok(Attached {
        ebpf,
        choices,
        // Every family serves each event some way: one event tells them apart, accept.
        family: family
            .unwrap_or_else(|| FamilyChoice::new(options.family, HookFamily::Tracepoint, &[])),
        refused,
        can_record_present,
    })
}

/// The kernel functions and BTF tracepoints some candidate hooks that this kernel has.
fn btf_targets(btf: &btf::KernelBtf) -> BTreeSet<&'static str> {
    HOOKS
        .iter()
        .flat_map(|event| event.candidates)
        .filter_map(|candidate| match candidate.hook? {
            Hook::Fexit { function, .. } | Hook::Kretprobe { function, .. } => {
                btf.has_function(function).then_some(function)
            }
            Hook::TpBtf { event, .. } => btf.has_btf_tracepoint(event).then_some(event),
            Hook::Tracepoint { .. } => None,
        })
        .collect()
}

/// With an explicit family, an event that family can serve must be served by it; events only
/// tracepoints can see use tracepoints in every family. Within the tracepoint family, and in
/// the kprobe family, each keeps to its way of reading kernel memory: BTF tracepoints read
/// fields directly, classic ones through `bpf_probe_read_kernel`.
fn allowed(event: &EventHooks, candidate: &Candidate, family: HookFamily) -> bool {
    let fits = |c: &Candidate| match (family, c.hook) {
        (HookFamily::Auto, _) => true,
        (HookFamily::Fentry, Some(Hook::TpBtf { .. } | Hook::Fexit { .. })) => true,
        (HookFamily::Kprobe, Some(Hook::Tracepoint { .. } | Hook::Kretprobe { .. })) => true,
        (HookFamily::Fentry | HookFamily::Kprobe, _) => false,
        (HookFamily::Tracepoint, _) => c.family() == HookFamily::Tracepoint,
    };
    fits(candidate) || !event.candidates.iter().any(fits)
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, hook: Hook) -> anyhow::Result<()> {
    let program = ebpf
        .program_mut(hook.program())
        .ok_or_else(|| anyhow!("program {} missing from the eBPF object", hook.program()))?;
    match hook {
        Hook::TpBtf { event, .. } => {
            let program: &mut BtfTracePoint = program.try_into()?;
            program.load(event, btf)?;
            program.attach()?;
        }
        Hook::Fexit { function, .. } => {
            let program: &mut FExit = program.try_into()?;
            program.load(function, btf)?;
            program.attach()?;
        }
        Hook::Kretprobe { function, .. } => {
            let program: &mut KProbe = program.try_into()?;
            program.load()?;
            program.attach(function, 0)?;
        }
        Hook::Tracepoint { category, name, .. } => {
            let program: &mut TracePoint = program.try_into()?;
            program.load()?;
            program.attach(category, name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aya_obj::{generated::bpf_insn, Object, ProgramSection};

    use super::*;

    // include/uapi/linux/bpf.h: BPF_JMP | BPF_CALL, and the helpers that read kernel memory
    // (bpf_probe_read, bpf_probe_read_kernel, bpf_probe_read_kernel_str).
    const CALL: u8 = 0x85;
    const PROBE_READS: [i32; 3] = [4, 113, 115];

    fn probe_reads(object: &Object, program: &str) -> usize {
        let program = &object.programs[program];
        object.functions[&program.function_key()]
            .instructions
            .iter()
            .filter(|insn: &&bpf_insn| {
                insn.code == CALL && insn.src_reg() == 0 && PROBE_READS.contains(&insn.imm)
            })
            .count()
    }

    #[test]
    fn the_family_says_why_it_was_chosen() {
        use HookFamily::{Auto, Fentry, Kprobe, Tracepoint};
        let fentry_refused = (Fentry, "Operation not permitted".to_owned());
        let wrong_parameters = (Fentry, "inet_csk_accept takes 4 parameters here".to_owned());
        let no_kprobes = (Kprobe, "not in this kernel".to_owned());
        let why = |asked, chosen, passed_over: &[(HookFamily, String)]| {
            FamilyChoice::new(asked, chosen, passed_over).why
        };
        assert_eq!(
            why(
                Auto,
                Tracepoint,
                &[fentry_refused.clone(), wrong_parameters.clone(), no_kprobes]
            ),
            "as this kernel refuses fentry (Operation not permitted) and kprobes (not in this \
             kernel)"
        );
        assert_eq!(
            why(Auto, Kprobe, &[fentry_refused]),
            "as this kernel refuses fentry (Operation not permitted)"
        );
        // One fentry program refused for another that fits this kernel: no refusal of fentry.
        assert_eq!(
            why(Auto, Fentry, &[wrong_parameters]),
            "the best this kernel allows"
        );
        assert_eq!(
            why(Tracepoint, Tracepoint, &[]),
            "as --hooks tracepoint asks"
        );
    }

    #[test]
    fn a_refusal_in_short_is_what_the_kernel_said() {
        let refused = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EPERM))
            .context("the BPF_PROG_LOAD syscall failed. Verifier output: 0: (79) r6 = *(u64 *)");
        assert_eq!(in_short(&refused), "Operation not permitted");
        assert_eq!(
            in_short(&anyhow!("not in this kernel")),
            "not in this kernel"
        );
    }

    /// BTF programs get typed pointers and load fields directly; a helper call per field is what
    /// made leaktrace's programs slow. Classic tracepoints and kprobes must use the helper.
    #[test]
    fn btf_programs_read_kernel_memory_without_the_helper() {
        assert!(
            !OBJECT.is_empty(),
            "leaktrace was built without its eBPF object (AYA_BUILD_SKIP)"
        );
        let object = Object::parse(OBJECT).expect("the eBPF object parses");
        let mut btf_programs = 0;
        for (name, program) in &object.programs {
            if matches!(
                program.section,
                ProgramSection::BtfTracePoint
                    | ProgramSection::FEntry { .. }
                    | ProgramSection::FExit { .. }
            ) {
                btf_programs += 1;
                assert_eq!(probe_reads(&object, name), 0, "{name} calls bpf_probe_read");
            }
        }
        assert!(btf_programs >= 5, "only {btf_programs} BTF programs");
        // The same handlers, read through the helper: the check above can see the calls.
        for name in ["state_tp", "destroy_tp", "accept_retprobe", "present"] {
            assert!(
                probe_reads(&object, name) > 0,
                "{name} reads without the helper?"
            );
        }
    }
}
