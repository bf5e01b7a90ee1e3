//! `leaktrace [--pid PID]... | --cgroup PATH | --unit NAME`: trace until stopped, or until the
//! named processes are gone.
use crate::{
    cgroup,
    error::Failure,
    session::{Scope, Session, SessionOptions},
    settings,
};

pub async fn run(args: settings::Trace) -> Result<(), Failure> {
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
    session.finish()?;
    Ok(())
}
