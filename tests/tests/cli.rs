//! The command line as a user meets it before anything is traced: errors and help. These run
//! everywhere, root or not, and never skip.

use anyhow::Result;
use leaktrace_tests::{is_root, run_leaktrace};

/// pid_max is at most 2^22, so this pid cannot exist.
const NO_SUCH_PID: &str = "999999999";

#[test]
fn nonexistent_pid_is_refused() -> Result<()> {
    let run = run_leaktrace(&["--json", "--pid", NO_SUCH_PID, "--duration", "1s"])?;
    let code = run.status.code();
    if is_root() {
        assert_eq!(code, Some(4), "stderr: {}", run.stderr);
        assert!(
            run.stderr.contains(NO_SUCH_PID),
            "the message should name the pid: {}",
            run.stderr
        );
    } else {
        assert!(
            matches!(code, Some(3 | 4)),
            "exit {code:?}, stderr: {}",
            run.stderr
        );
    }
    assert_eq!(
        run.stderr.lines().count(),
        1,
        "errors are one line: {:?}",
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "nothing may be traced: {:?}",
        run.stdout
    );
    Ok(())
}

#[test]
fn invalid_duration_is_a_usage_error() -> Result<()> {
    let run = run_leaktrace(&["--leak-after", "5parsecs"])?;
    assert_eq!(run.status.code(), Some(2), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("5parsecs"),
        "the message should quote the bad value: {}",
        run.stderr
    );
    Ok(())
}

/// `--interval` prints a line every period: 0 would panic, 1ns printed some 300,000 lines a
/// second. Below its floor of one second it is refused before anything starts.
#[test]
fn interval_below_a_second_is_a_usage_error() -> Result<()> {
    for interval in ["0", "1ns", "999ms"] {
        let run = run_leaktrace(&["--interval", interval, "--duration", "1s"])?;
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert!(
            run.status.code() == Some(2)
                && run.stdout.is_empty()
                && matches!(&lines[..], [line] if line.contains("'--interval <DURATION>'")
                    && line.contains("at least 1s")),
            "--interval {interval}: expected exit 2 and one line saying it must be at least 1s, \
             got {}; stdout: {} lines; stderr:\n{}",
            run.status,
            run.stdout.len(),
            run.stderr
        );
    }
    Ok(())
}

/// Every usage error is one line, as the README promises for every error, with what is wrong
/// (the value, the argument, what is missing or possible) and where to read more.
#[test]
fn usage_errors_are_one_line() -> Result<()> {
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--leak-after", "5parsecs"],
            &["'5parsecs'", "--leak-after", "500ms"],
        ),
        (&["--pdi", "3"], &["'--pdi'"]),
        (
            &["--hooks", "foo"],
            &["'foo'", "possible values: auto, tracepoint"],
        ),
        (&["--follow-children"], &["not provided: --pid <PID>"]),
        (&["run"], &["<CMD>", "leaktrace run --help"]),
        (
            &["run", "--bogus", "--", "true"],
            &["'--bogus'", "use '-- --bogus'"],
        ),
    ];
    for (args, expected) in cases {
        let run = run_leaktrace(args)?;
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert!(
            run.status.code() == Some(2)
                && matches!(&lines[..], [line] if line.starts_with("leaktrace: error: ")
                    && line.contains("--help")
                    && expected.iter().all(|e| line.contains(e))),
            "leaktrace {args:?}: expected exit 2 and one line `leaktrace: error: ...` with \
             {expected:?} and a pointer to --help, got {}:\n{}",
            run.status,
            run.stderr
        );
    }
    Ok(())
}

#[test]
fn help_names_the_main_options() -> Result<()> {
    let run = run_leaktrace(&["--help"])?;
    assert!(run.status.success(), "stderr: {}", run.stderr);
    let help = run.stdout.join("\n");
    let words = [
        "--pid",
        "--leak-after",
        "--idle-after",
        "--json",
        "--metrics",
        "--trace-out",
        "demo",
        "close_wait",
        "shut_wr_unread",
        "fd_after_close",
        "idle_half_closed",
        // What tells a pooled keep-alive connection's close_wait from sockets piling up.
        "close_waits_to_remote",
    ];
    for word in words {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    Ok(())
}

/// More `--pid` than the kernel's map of traced processes holds is refused before anything is
/// loaded (it failed after loading, with "Argument list too long").
#[test]
fn more_pids_than_max_processes_is_a_usage_error() -> Result<()> {
    let run = run_leaktrace(&[
        "--max-processes",
        "2",
        "--pid",
        "1",
        "--pid",
        "2",
        "--pid",
        "3",
    ])?;
    assert_eq!(run.status.code(), Some(2), "stderr: {}", run.stderr);
    assert!(
        run.stderr.starts_with("leaktrace: error: ") && run.stderr.contains("--max-processes"),
        "one error line naming the flag: {:?}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{:?}", run.stderr);
    Ok(())
}

/// A service that does not exist is refused as a pid that does not exist is, whoever runs it:
/// the cgroup is looked up before anything else.
#[test]
fn nonexistent_cgroup_or_unit_is_refused() -> Result<()> {
    for args in [
        ["--cgroup", "leaktrace-no-such-cgroup/x"],
        ["--unit", "leaktrace-no-such-unit"],
    ] {
        let run = run_leaktrace(&[&args[..], &["--duration", "1s"]].concat())?;
        assert_eq!(run.status.code(), Some(4), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {:?}", run.stderr);
        assert!(
            run.stderr.contains(args[1]),
            "the message should name it: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{args:?}: {:?}", run.stdout);
    }
    let run = run_leaktrace(&["--cgroup", "x", "--pid", "1"])?;
    assert_eq!(
        run.status.code(),
        Some(2),
        "--cgroup with --pid: {}",
        run.stderr
    );
    Ok(())
}
