//! `leaktrace run -- CMD`: starts CMD, traces it and every process it starts from their first
//! instruction, and exits with CMD's status (or, with --fail-on-leak, 10 when a leak was
//! reported, and 11 when CMD succeeded but leaks may have been missed): a test suite wrapped in
//! it fails on leaked sockets. Its last line on stderr always says whose status it exits with,
//! as the command's codes and leaktrace's overlap.
use std::{
    ffi::CString,
    io,
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::{ExitStatus, Stdio},
};

use anyhow::{anyhow, Context as _};
use nix::unistd::{getgrouplist, setgid, setgroups, setuid, Gid, Uid, User};
use tokio::process::Command;

use leaktrace_common::ProbeFailure;

use crate::{
    error::{exit_code, Failure},
    format::ring_size_hint,
    session::{Ended, Scope, Session, SessionOptions},
    settings, stderr,
    summary::IngestCounts,
};

/// `--fail-on-leak` and a leak was reported.
pub const LEAKS_FOUND: u8 = 10;
/// `--fail-on-leak`, no leak reported and the command succeeded, but the trace may have missed
/// some: records were lost, or a kernel map had no room for a socket or a process. A CI run
/// must not pass on what it could not see.
pub const COVERAGE_INCOMPLETE: u8 = 11;
/// As shells report a command that cannot be executed / does not exist.
const CANNOT_EXECUTE: u8 = 126;
const NOT_FOUND: u8 = 127;

pub async fn run(args: settings::Run) -> Result<u8, Failure> {
    let json = args.common.json;
    // Before tracing starts: a user that cannot be found is the caller's to sort out.
    let run_as = if args.as_root {
        None
    } else {
        RunAs::sudo_user().context(
            "cannot run the command as the user who ran sudo (--as-root runs it as root)",
        )?
    };
    let options = SessionOptions {
        follow_children: true,
        report_to_stderr: true,
        ..SessionOptions::new(Scope::Added, args.common, args.leaks)
    };
    let mut session = Session::start(&options)?;
    // While leaktrace itself is traced, the kernel adds the process it starts to the traced
    // ones at fork, before the command's first instruction.
    session.trace(std::process::id())?;
    let mut command = Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some(run_as) = run_as {
        run_as.apply(&mut command);
    }
    let spawned = command.spawn();
    session.untrace(std::process::id())?;
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // After the start lines, which the report's own thread writes to stderr too.
            session.report_written();
            stderr::line(format_args!(
                "leaktrace: error: cannot run {}: {e}",
                args.command[0]
            ));
            let (status, why) = match e.kind() {
                io::ErrorKind::NotFound => (NOT_FOUND, "the command was not found"),
                _ => (CANNOT_EXECUTE, "the command could not be executed"),
            };
            say_whose(json, status, "command", why);
            return Ok(status);
        }
    };
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("the command exited before it started"))?;
    session.trace(pid)?;

    let mut status = None;
    {
        let exited = async { status = Some(child.wait().await) };
        tokio::pin!(exited);
        // Tracing goes on until the command is gone, whatever stops leaktrace: what the command
        // does while it shuts down belongs in the report.
        loop {
            match session.run_until(exited.as_mut()).await? {
                Ended::Caller => break,
                // Ctrl-C reaches the command from the terminal already (one process group):
                // passing it on would deliver it twice, and a second Ctrl-C often means "now".
                Ended::Signal(signal) if signal != libc::SIGINT => pass_on(pid, signal)?,
                Ended::Signal(_) | Ended::NothingLeft | Ended::Duration => {}
            }
        }
    }
    let status = status
        .ok_or_else(|| anyhow!("the command's status is unknown"))?
        .context("waiting for the command")?;
    let report = session.finish()?;
    let leaks_reported = !report.open.is_empty() || report.leaks_resolved > 0;
    let command = exit_status(status);
    let how = match status.signal() {
        Some(signal) => format!("was killed by signal {signal}"),
        None => format!("exited with {command}"),
    };
    let exit = Exit::of(Ran {
        fail_on_leak: args.fail_on_leak,
        leaks_reported,
        gaps: coverage_gaps(&report.ingest),
        command,
        how,
    });
    say_whose(json, exit.status, exit.whose, &exit.why);
    Ok(exit.status)
}

/// How a run went, as far as its exit status goes.
struct Ran {
    fail_on_leak: bool,
    leaks_reported: bool,
    /// See [`coverage_gaps`].
    gaps: Vec<String>,
    /// The command's status, and how it ended in words.
    command: u8,
    how: String,
}

/// The status a run exits with, whose it is ("command" or "leaktrace"), and why.
#[derive(Debug, PartialEq, Eq)]
struct Exit {
    status: u8,
    whose: &'static str,
    why: String,
}

impl Exit {
    /// With `--fail-on-leak`, a leak reported wins over the command's status, and the
    /// command's failure over what the trace may have missed: a failed command fails the run
    /// already, and its own status says more.
    fn of(ran: Ran) -> Exit {
        let how = &ran.how;
        if ran.fail_on_leak && ran.leaks_reported {
            Exit {
                status: LEAKS_FOUND,
                whose: "leaktrace",
                why: format!("leaks were reported (--fail-on-leak); the command {how}"),
            }
        } else if ran.fail_on_leak && ran.command == 0 && !ran.gaps.is_empty() {
            Exit {
                status: COVERAGE_INCOMPLETE,
                whose: "leaktrace",
                why: format!(
                    "no leak was reported, but some may have been missed (--fail-on-leak): \
                     {}; the command {how}",
                    ran.gaps.join("; ")
                ),
            }
        } else {
            Exit {
                status: ran.command,
                whose: "command",
                why: format!("the command {how}"),
            }
        }
    }
}

/// What the trace may have missed leaks through: records lost, and sockets or processes a
/// kernel map had no room for (their warnings say which flag raises it). Empty when it saw all.
fn coverage_gaps(ingest: &IngestCounts) -> Vec<String> {
    let lost = (ingest.lost_events > 0).then(|| {
        format!(
            "{} events lost, {}",
            ingest.lost_events,
            ring_size_hint(ingest.ring_size)
        )
    });
    let unfollowed = ingest
        .failures()
        .filter(|(failure, _)| {
            matches!(
                failure,
                ProbeFailure::SocketMapFull | ProbeFailure::TargetMapFull
            )
        })
        .map(|(failure, n)| format!("{} {n}", failure.name()));
    lost.into_iter().chain(unfollowed).collect()
}

/// Who runs the command instead of root: started through sudo, the user who ran sudo, as sudo
/// would have run the command without leaktrace. Root is what the tracing needs, not the command.
struct RunAs {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    name: String,
    home: PathBuf,
}

impl RunAs {
    /// The user who ran sudo (`SUDO_UID`, and `SUDO_GID` when set), with their supplementary
    /// groups from the user database; `None` when leaktrace was not started through sudo, or
    /// by root.
    fn sudo_user() -> anyhow::Result<Option<RunAs>> {
        let Some(uid) = id_from_env("SUDO_UID")? else {
            return Ok(None);
        };
        if uid == 0 {
            return Ok(None);
        }
        let user = User::from_uid(Uid::from_raw(uid))
            .with_context(|| format!("looking up uid {uid}"))?
            .ok_or_else(|| anyhow!("uid {uid} (SUDO_UID) is not in the user database"))?;
        let gid = id_from_env("SUDO_GID")?.map_or(user.gid, Gid::from_raw);
        let name = CString::new(user.name.as_str())?;
        let groups = getgrouplist(&name, gid)
            .with_context(|| format!("listing the groups of {}", user.name))?;
        Ok(Some(RunAs {
            uid: user.uid,
            gid,
            groups,
            name: user.name,
            home: user.dir,
        }))
    }

    /// Makes `command` start as this user, with their HOME, USER and LOGNAME.
    fn apply(self, command: &mut Command) {
        command
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
        let RunAs {
            uid, gid, groups, ..
        } = self;
        // SAFETY: between fork and exec, the closure makes three system calls on data allocated
        // before the fork, all async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                // The uid last: as root it sets the saved set-user-ID too, so nothing after it
                // could change groups, and the command can never get root back.
                setgroups(&groups)?;
                setgid(gid)?;
                setuid(uid)?;
                Ok(())
            });
        }
    }
}

/// A uid or gid from the environment (`SUDO_UID`), `None` when unset.
fn id_from_env(name: &str) -> anyhow::Result<Option<u32>> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .map(Some)
            .with_context(|| format!("{name}={text:?} is not a number")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(anyhow!("{name}: {e}")),
    }
}

/// The last line of a run: the status leaktrace exits with, and whose it is (`whose`: "command"
/// or "leaktrace"), as a JSON record with `--json`.
pub fn say_whose(json: bool, status: u8, whose: &str, why: &str) {
    let line = if json {
        serde_json::json!({"type": "exit", "status": status, "whose": whose, "why": why})
            .to_string()
    } else {
        let whose = if whose == "command" {
            "the command's"
        } else {
            "leaktrace's own"
        };
        format!("leaktrace: exit status {status} is {whose}: {why}")
    };
    stderr::line(line);
}

/// SIGTERM and SIGHUP are usually sent to leaktrace alone (a supervisor, `timeout`, a closed
/// ssh session): the command must stop too, or leaktrace would wait for it forever.
fn pass_on(pid: u32, signal: libc::c_int) -> Result<(), Failure> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions. The command is not reaped until its wait
    // completes, which ends the loop, so the pid is still the command's.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let e = io::Error::last_os_error();
        // ESRCH: the command exited meanwhile, which is what the signal asked for.
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(anyhow!("passing signal {signal} on to the command: {e}").into());
        }
    }
    Ok(())
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
fn exit_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => exit_code::signalled(signal),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A successful command under `--fail-on-leak`, no leak reported, `gaps` as given.
    fn clean(gaps: &[&str]) -> Ran {
        Ran {
            fail_on_leak: true,
            leaks_reported: false,
            gaps: gaps.iter().map(|gap| (*gap).to_owned()).collect(),
            command: 0,
            how: "exited with 0".into(),
        }
    }

    #[test]
    fn a_run_that_may_have_missed_leaks_does_not_pass() {
        let exit = Exit::of(clean(&[
            "3 events lost, raise --ring-size (now 8192 bytes)",
            "socket_map_full 2",
        ]));
        assert_eq!(
            exit,
            Exit {
                status: COVERAGE_INCOMPLETE,
                whose: "leaktrace",
                why: "no leak was reported, but some may have been missed (--fail-on-leak): 3 \
                      events lost, raise --ring-size (now 8192 bytes); socket_map_full 2; the \
                      command exited with 0"
                    .into(),
            }
        );
        // Without --fail-on-leak, the command's status as ever.
        let asked_nothing = Exit::of(Ran {
            fail_on_leak: false,
            ..clean(&["socket_map_full 2"])
        });
        assert_eq!((asked_nothing.status, asked_nothing.whose), (0, "command"));
        assert_eq!(Exit::of(clean(&[])).status, 0);
    }

    #[test]
    fn a_leak_then_the_command_s_failure_come_before_what_may_have_been_missed() {
        let leaked = Exit::of(Ran {
            leaks_reported: true,
            command: 3,
            how: "exited with 3".into(),
            ..clean(&["socket_map_full 2"])
        });
        assert_eq!((leaked.status, leaked.whose), (LEAKS_FOUND, "leaktrace"));
        let failed = Exit::of(Ran {
            command: 3,
            how: "exited with 3".into(),
            ..clean(&["socket_map_full 2"])
        });
        assert_eq!(
            failed,
            Exit {
                status: 3,
                whose: "command",
                why: "the command exited with 3".into(),
            }
        );
    }

    #[test]
    fn lost_records_and_full_maps_are_gaps_other_failures_not() {
        let mut ingest = IngestCounts {
            ring_size: 8192,
            ..IngestCounts::default()
        };
        assert!(coverage_gaps(&ingest).is_empty());
        ingest.probe_failures[ProbeFailure::Read as usize] = 4;
        ingest.probe_failures[ProbeFailure::Comm as usize] = 1;
        assert!(coverage_gaps(&ingest).is_empty());
        ingest.lost_events = 120;
        ingest.probe_failures[ProbeFailure::SocketMapFull as usize] = 7;
        ingest.probe_failures[ProbeFailure::TargetMapFull as usize] = 2;
        assert_eq!(
            coverage_gaps(&ingest),
            [
                "120 events lost, raise --ring-size (now 8192 bytes)",
                "socket_map_full 7",
                "target_map_full 2",
            ]
        );
    }
}
