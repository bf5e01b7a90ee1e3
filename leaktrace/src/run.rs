//! `leaktrace run -- CMD`: starts CMD, traces it and every process it starts from their first
//! instruction, and exits with CMD's status (or 10 with --fail-on-leak when a leak was
//! reported): a test suite wrapped in it fails on leaked sockets. Its last line on stderr
//! always says whose status it exits with, as the command's codes and leaktrace's overlap.
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

use crate::{
    error::{exit_code, Failure},
    session::{Ended, Scope, Session, SessionOptions},
    settings, stderr,
};

/// `--fail-on-leak` and a leak was reported.
pub const LEAKS_FOUND: u8 = 10;
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
    Ok(if args.fail_on_leak && leaks_reported {
        say_whose(
            json,
            LEAKS_FOUND,
            "leaktrace",
            &format!("leaks were reported (--fail-on-leak); the command {how}"),
        );
        LEAKS_FOUND
    } else {
        say_whose(json, command, "command", &format!("the command {how}"));
        command
    })
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
