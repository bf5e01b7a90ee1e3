//! `leaktrace demo`: the two leak classes reproduced in this very process (incidents 1 and 3 of
//! the field reports), traced by a normal session, so a new user sees real findings with no
//! target of their own.
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::Mutex,
    thread,
    time::Duration,
};

use crate::{
    error::Failure,
    session::{Scope, Session, SessionOptions},
    settings::{Common, Leaks},
    stderr,
};

const CLOSE_WAIT_CONNECTIONS: usize = 3;
const LEAK_AFTER: Duration = Duration::from_secs(1);
const DURATION: Duration = Duration::from_secs(3);

/// Connections the leaky servers "forgot": held, never closed, until the process exits.
static FORGOTTEN: Mutex<Vec<TcpStream>> = Mutex::new(Vec::new());

pub async fn run(common: Common) -> Result<u8, Failure> {
    if !common.json {
        stderr::line(format_args!(
            "leaktrace demo: tracing this process (pid {}) while it runs a report service that never \
             closes after a parse error (CLOSE_WAIT leak), an SMTP server that shuts down its side \
             and never reads the client's last command (SHUT_WR leak), and a well-behaved echo \
             server (no finding). Leaks are reported after {}, the final report after {}.",
            std::process::id(),
            humantime::format_duration(LEAK_AFTER),
            humantime::format_duration(DURATION),
        ));
    }
    let leaks = Leaks {
        leak_after: LEAK_AFTER,
        // The demo has no proxy: nothing of it is ever idle_half_closed.
        idle_after: LEAK_AFTER,
    };
    let options = SessionOptions {
        duration: Some(DURATION),
        ..SessionOptions::new(Scope::Pids(vec![std::process::id()]), common, leaks)
    };
    let mut session = Session::start(&options)?;
    // Only now: nothing the servers do may happen before tracing starts.
    thread::spawn(|| {
        if let Err(e) = workload() {
            stderr::line(format_args!("leaktrace demo: the demo servers failed: {e}"));
        }
    });
    session.run_until(std::future::pending()).await?;
    Ok(session.finish()?.exit_status())
}

fn workload() -> std::io::Result<()> {
    let report_service = TcpListener::bind("127.0.0.1:0")?;
    let smtp = TcpListener::bind("127.0.0.1:0")?;
    let echo = TcpListener::bind("127.0.0.1:0")?;
    let (report_addr, smtp_addr, echo_addr) = (
        report_service.local_addr()?,
        smtp.local_addr()?,
        echo.local_addr()?,
    );

    thread::spawn(move || serve_report_service(report_service));
    thread::spawn(move || serve_smtp(smtp));
    thread::spawn(move || serve_echo(echo));

    for _ in 0..CLOSE_WAIT_CONNECTIONS {
        let mut client = TcpStream::connect(report_addr)?;
        client.write_all(b"GET /report?queryJSON=%7B HTTP/1.1\r\nHost: mailer\r\n\r\n")?;
        // The scanner gives up on the silent server and closes: its FIN puts the server side
        // in CLOSE_WAIT.
    }

    let mut client = TcpStream::connect(smtp_addr)?;
    client.write_all(b"MAIL FROM:<scanner@example.com>\r\n")?;
    let mut reply = Vec::new();
    client.read_to_end(&mut reply)?;
    client.write_all(b"RSET\r\n")?;
    drop(client);

    let mut client = TcpStream::connect(echo_addr)?;
    client.write_all(b"ping")?;
    client.shutdown(Shutdown::Write)?;
    client.read_to_end(&mut Vec::new())?;
    Ok(())
}

/// Incident 1: the handler throws on `queryJSON=%7B` and returns without closing.
fn serve_report_service(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        let mut request = [0u8; 512];
        let _ = stream.read(&mut request);
        remember(stream);
    }
}

/// Incident 3: reject the message, end our side with SHUT_WR, pause reading for good.
fn serve_smtp(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        let mut command = [0u8; 512];
        let _ = stream.read(&mut command);
        let _ = stream.write_all(b"554 5.7.1 message rejected\r\n");
        let _ = stream.shutdown(Shutdown::Write);
        remember(stream);
    }
}

fn serve_echo(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        let mut buf = Vec::new();
        if stream.read_to_end(&mut buf).is_ok() {
            let _ = stream.write_all(&buf);
        }
    }
}

fn remember(stream: TcpStream) {
    if let Ok(mut forgotten) = FORGOTTEN.lock() {
        forgotten.push(stream);
    }
}
