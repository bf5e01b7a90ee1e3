//! `leaktrace [--pid PID]... | --cgroup PATH | --unit NAME`: trace until stopped, or until the
//! named processes are gone.
use crate::{
    cgroup,
    error::Failure,
    session::{Scope, Session, SessionOptions},
    settings,
};

/// Returns leaktrace's status once the final report is out (see [`FinalReport::exit_status`]).
///
/// [`FinalReport::exit_status`]: crate::summary::FinalReport::exit_status
pub async fn run(args: settings::Trace) -> Result<u8, Failure> {
    let scope = if let Some(path) = &args.cgroup {
        Scope::Cgroup(cgroup::resolve(path).map_err(Failure::NoSuchService)?)
    } else if let Some(name) = &args.unit {
        Scope::Cgroup(cgroup::unit(name).map_err(Failure::NoSuchService)?)
    } else if args.pids.is_empty() {
        Scope::All
    } else {
        Scope::Pids(args.pids)
    };
    let options = SessionOptions {
        follow_children: args.follow_children,
        duration: args.duration,
        ..SessionOptions::new(scope, args.common, args.leaks)
    };
    let mut session = Session::start(&options)?;
    session.run_until(std::future::pending()).await?;
    Ok(session.finish()?.exit_status())
}
