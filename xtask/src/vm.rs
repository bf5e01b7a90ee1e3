//! `cargo xtask vm-test`: the kernel test matrix. The privileged integration suite runs on each
//! kernel once per hook family: Debian kernels boot under qemu from an initramfs that holds
//! static builds of leaktrace and the test binaries, and the host runs the same binaries
//! directly. Both run `vm/suite.sh`; a kernel passes only if that script's lines say so.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use crate::{
    test_summary::Totals,
    toolchain::{self, MUSL_TARGET},
};

struct Kernel {
    /// How the command line and the report name it.
    name: &'static str,
    /// The Debian package whose kernel the guest boots; `None` is the host's own kernel.
    package: Option<&'static str>,
    /// The family `--hooks auto` must pick. `None`: the hosts here refuse fentry and lack
    /// kprobes, a developer's may not, so what auto picks is reported rather than required.
    auto_family: Option<&'static str>,
    /// `--hooks` of each suite run: the kernel's own choice, the fallback family forced, and on
    /// one kernel with kprobes the family auto would skip there, so each family runs somewhere.
    families: &'static [&'static str],
}

/// The matrix, in the order it runs. A new kernel is a new entry (see the README).
const KERNELS: [Kernel; 3] = [
    Kernel {
        name: "6.1",
        package: Some("linux-image-6.1.0-50-cloud-amd64"),
        auto_family: Some("fentry"),
        families: &["auto", "tracepoint"],
    },
    Kernel {
        name: "6.12",
        package: Some("linux-image-6.12.117+deb12-cloud-amd64"),
        auto_family: Some("fentry"),
        families: &["auto", "tracepoint", "kprobe"],
    },
    Kernel {
        name: "host",
        package: None,
        auto_family: None,
        families: &["auto", "tracepoint"],
    },
];

/// The design's hook families, which auto prefers; a kernel without them gets a printed skip.
const DESIGN_FAMILIES: [&str; 2] = ["fentry", "kprobe"];

/// Where downloaded kernels are kept between runs (ignored by git).
const KERNEL_CACHE: &str = ".cache/vm-kernels";
/// The initramfs tree; its `suite/` folder is also what the host runs.
const GUEST_ROOT: &str = "target/vm/root";

const SUITE_SCRIPT: &str = include_str!("vm/suite.sh");
const GUEST_INIT: &str = include_str!("vm/init.sh");
/// The lines of suite.sh that vm-test reads.
const MARKER: &str = "LEAKTRACE-SUITE ";

/// A guest that has not powered off by then is hung: a run of the suite under TCG takes 2 to 3
/// minutes per hook family.
const GUEST_LIMIT: Duration = Duration::from_secs(900);
/// The host runs the same suite natively, in about a minute.
const HOST_LIMIT: Duration = Duration::from_secs(300);
/// A working KVM boots and powers off in about a second; a broken one may hang.
const KVM_PROBE_LIMIT: Duration = Duration::from_secs(30);

pub fn run(root: &Path, names: &[String], tests: &[String]) -> Result<()> {
    let kernels = select(names)?;
    toolchain::ensure_vm()?;
    toolchain::ensure_test_servers()?;
    let guest_root = build_guest_root(root)?;
    let initramfs = pack_initramfs(&guest_root)?;
    let mut accel = None;
    let mut outcomes = Vec::new();
    for kernel in kernels {
        eprintln!("xtask: vm-test: kernel {}", kernel.name);
        let started = Instant::now();
        let transcript = match kernel.package {
            Some(package) => boot(root, kernel, tests, package, &initramfs, &mut accel),
            None => run_on_host(kernel, tests, &guest_root.join("suite")),
        };
        outcomes.push(judge(kernel, transcript, started.elapsed()));
    }
    let (table, failures) = summarize(&outcomes);
    println!("{table}");
    if !failures.is_empty() {
        bail!("vm-test failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

fn select(names: &[String]) -> Result<Vec<&'static Kernel>> {
    if names.is_empty() {
        return Ok(KERNELS.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            KERNELS.iter().find(|k| k.name == name).with_context(|| {
                let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
                format!(
                    "no kernel {name:?} in the matrix (known: {})",
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// Settings for suite.sh, which reads them from its environment. A guest gets them on the
/// kernel command line: the kernel hands such words to PID 1 as environment variables (so
/// they may contain neither spaces nor dots).
fn suite_settings(kernel: &Kernel, tests: &[String]) -> Vec<(&'static str, String)> {
    vec![
        ("SUITE_TESTS", tests.join(",")),
        ("SUITE_FAMILIES", kernel.families.join(",")),
        (
            "SUITE_EXPECT_AUTO",
            kernel.auto_family.unwrap_or_default().to_owned(),
        ),
    ]
}

/// Builds leaktrace and the test binaries for musl (static: a bare initramfs has no libc) and
/// lays out the initramfs tree: `/init`, busybox, `/suite` with leaktrace, the test executables
/// and suite.sh, and the fixture.
fn build_guest_root(root: &Path) -> Result<PathBuf> {
    // The file `cargo xtask dist` ships, so the matrix tests what users copy. Optimized, which
    // matters here too: under TCG a debug build takes twice as long (5 s) to load, and the
    // suite starts leaktrace some fifty times per kernel.
    let leaktrace = crate::dist::build(root)?;
    let tests = build(root, &["test", "--no-run", "--package", "leaktrace-tests"])?;
    // The test binaries run the fixture at the absolute path compiled into them (some pass it
    // on to `leaktrace run`), so the guest has it at that path too; the host already does.
    let fixture = tests
        .iter()
        .find(|e| e.kind == "bin" && e.name == "leaktrace-fixture" && !e.test)
        .context("cargo test did not list the leaktrace-fixture executable")?;

    let guest_root = root.join(GUEST_ROOT);
    if guest_root.exists() {
        fs::remove_dir_all(&guest_root)
            .with_context(|| format!("removing {}", guest_root.display()))?;
    }
    let suite = guest_root.join("suite");
    let fixture_in_guest = guest_root.join(fixture.path.strip_prefix("/")?);
    for dir in ["bin", "dev", "proc", "sys", "tmp", "suite/tests"] {
        fs::create_dir_all(guest_root.join(dir))?;
    }
    fs::create_dir_all(fixture_in_guest.parent().unwrap_or(&guest_root))?;
    copy(Path::new("/bin/busybox"), &guest_root.join("bin/busybox"))?;
    write_script(&guest_root.join("init"), GUEST_INIT)?;
    write_script(&suite.join("suite.sh"), SUITE_SCRIPT)?;
    copy(&leaktrace, &suite.join("leaktrace"))?;
    copy(&fixture.path, &fixture_in_guest)?;
    for test in tests.iter().filter(|e| e.kind == "test") {
        copy(&test.path, &suite.join("tests").join(&test.name))?;
    }
    copy_test_servers(&guest_root)?;
    Ok(guest_root)
}

/// A user database as Debian's, of the users the tests need: nginx, started as root, runs its
/// workers as `nobody`; `leaktrace run` under sudo runs the command as the user who ran sudo,
/// looked up by uid. And how glibc finds them without a distribution's nsswitch.conf.
const GUEST_ACCOUNTS: [(&str, &str); 3] = [
    (
        "etc/passwd",
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ("etc/nsswitch.conf", "passwd: files\ngroup: files\n"),
];

/// The real servers the kernel tests trace (`leaktrace_tests::nginx`): the host's executables
/// and the shared libraries they load, at the host's paths, since a guest has no distribution
/// of its own.
fn copy_test_servers(guest_root: &Path) -> Result<()> {
    let nginx = leaktrace_tests::nginx::executable().context("nginx is not installed")?;
    let out = Command::new("ldd")
        .arg(&nginx)
        .output()
        .context("running ldd")?;
    ensure!(out.status.success(), "ldd {} failed", nginx.display());
    // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)`, the loader as
    // `/lib64/ld-linux-x86-64.so.2 (0x...)`, and the vDSO, which has no file.
    let libraries = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.split_once("=>").map_or(line, |(_, path)| path);
            path.split_whitespace()
                .next()
                .filter(|path| path.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect::<Vec<_>>();
    for file in libraries.iter().chain([&nginx]) {
        let in_guest = guest_root.join(file.strip_prefix("/")?);
        fs::create_dir_all(in_guest.parent().unwrap_or(guest_root))?;
        copy(file, &in_guest)?;
    }
    for (file, text) in GUEST_ACCOUNTS {
        let in_guest = guest_root.join(file);
        fs::create_dir_all(in_guest.parent().unwrap_or(guest_root))?;
        fs::write(&in_guest, text).with_context(|| format!("writing {}", in_guest.display()))?;
    }
    // Where Debian's nginx keeps its temporary files; it makes the folders inside at start.
    fs::create_dir_all(guest_root.join("var/lib/nginx"))?;
    Ok(())
}

/// An executable cargo built.
struct Executable {
    /// The target's kind: `bin`, `test`, ...
    kind: String,
    name: String,
    /// Built as a test harness.
    test: bool,
    path: PathBuf,
}

/// Runs a cargo build command for musl and returns the executables it built.
fn build(root: &Path, args: &[&str]) -> Result<Vec<Executable>> {
    let out = Command::new("cargo")
        .current_dir(root)
        .args(args)
        .args([
            "--target",
            MUSL_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "cargo {} --target {MUSL_TARGET} failed",
        args.join(" ")
    );
    let mut executables = Vec::new();
    for line in out.stdout.lines() {
        let message: Value = serde_json::from_str(&line?)?;
        let target = &message["target"];
        if let (Some(kind), Some(name), Some(path)) = (
            target["kind"][0].as_str(),
            target["name"].as_str(),
            message["executable"].as_str(),
        ) {
            executables.push(Executable {
                kind: kind.to_owned(),
                name: name.to_owned(),
                test: message["profile"]["test"] == true,
                path: PathBuf::from(path),
            });
        }
    }
    Ok(executables)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// An uncompressed newc archive: the kernel unpacks it as is, and compressing tens of
/// megabytes would cost more time than it saves.
fn pack_initramfs(guest_root: &Path) -> Result<PathBuf> {
    let archive = guest_root.with_extension("cpio");
    let mut find = Command::new("find")
        .arg(".")
        .current_dir(guest_root)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting find")?;
    let status = Command::new("cpio")
        .args(["--create", "--format=newc", "--quiet"])
        .current_dir(guest_root)
        .stdin(find.stdout.take().expect("stdout is piped"))
        .stdout(fs::File::create(&archive)?)
        .status()
        .context("starting cpio")?;
    ensure!(
        find.wait()?.success() && status.success(),
        "packing {} into {} failed",
        guest_root.display(),
        archive.display()
    );
    Ok(archive)
}

/// The kernel image of a Debian package, downloaded on first use with apt-get into the cache.
fn kernel_image(root: &Path, package: &str) -> Result<PathBuf> {
    let dir = root.join(KERNEL_CACHE).join(package);
    let image = dir.join("vmlinuz");
    if image.is_file() {
        return Ok(image);
    }
    eprintln!("xtask: downloading {package} into {} (once)", dir.display());
    // Leftovers of an interrupted download would be mistaken for this one's .deb.
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let download = || {
        // As root, apt would fetch as the _apt user, who may not be able to write here.
        Command::new("apt-get")
            .args(["-o", "APT::Sandbox::User=root", "download", package])
            .current_dir(&dir)
            .status()
            .context("starting apt-get")
    };
    if !download()?.success() {
        toolchain::apt_update()?;
        ensure!(
            download()?.success(),
            "apt-get download {package} failed: is it in the configured Debian suites?"
        );
    }
    let deb = fs::read_dir(&dir)?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))?;
    let mut unpack = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let status = Command::new("tar")
        .args(["--extract", "--wildcards", "--strip-components=2"])
        .arg("--directory")
        .arg(&dir)
        .arg("./boot/vmlinuz-*")
        .stdin(unpack.stdout.take().expect("stdout is piped"))
        .status()
        .context("starting tar")?;
    ensure!(
        unpack.wait()?.success() && status.success(),
        "no boot/vmlinuz-* in {}",
        deb.display()
    );
    let unpacked = fs::read_dir(&dir)?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* unpacked into {}", dir.display()))?;
    // Renamed last: the cache holds a vmlinuz only once it is complete.
    fs::rename(&unpacked, &image)?;
    fs::remove_file(&deb)?;
    Ok(image)
}

/// The qemu command for a guest; only the accelerator varies between the probe and the run.
fn qemu(accel: &str, image: &Path, initramfs: &Path, append: &str) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-accel", accel, "-cpu", "max", "-m", "1024", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(image)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", append]);
    command
}

/// KVM when it can boot a guest here, else TCG: `/dev/kvm` exists on our machines but their
/// KVM guests abort or hang. The probe boots straight into `poweroff`.
fn choose_accel(image: &Path, initramfs: &Path) -> &'static str {
    let probe = || -> Result<bool> {
        let mut child = qemu(
            "kvm",
            image,
            initramfs,
            "console=ttyS0 panic=-1 quiet rdinit=/bin/busybox -- poweroff -f",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
        let deadline = Instant::now() + KVM_PROBE_LIMIT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            thread::sleep(Duration::from_millis(100));
        }
        child.kill()?;
        child.wait()?;
        Ok(false)
    };
    if Path::new("/dev/kvm").exists() && probe().unwrap_or(false) {
        eprintln!("xtask: guests run under KVM");
        "kvm"
    } else {
        eprintln!("xtask: KVM cannot run a guest here: guests run under TCG (emulated, slower)");
        // One host thread for both vCPUs: with a thread each, a vCPU can still run code another
        // has just patched back (the kernel patches its static branches through int3 when
        // leaktrace attaches or detaches a tracepoint), and a 6.12 guest died of such a stray
        // int3 in syscall_trace_enter.
        "tcg,thread=single"
    }
}

fn boot(
    root: &Path,
    kernel: &Kernel,
    tests: &[String],
    package: &str,
    initramfs: &Path,
    accel: &mut Option<&'static str>,
) -> Result<Transcript> {
    let image = kernel_image(root, package)?;
    let accel = *accel.get_or_insert_with(|| choose_accel(&image, initramfs));
    let mut append = String::from("console=ttyS0 panic=-1 quiet");
    for (key, value) in suite_settings(kernel, tests) {
        write!(append, " {key}={value}")?;
    }
    let child = qemu(accel, &image, initramfs, &append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    stream(kernel.name, child, GUEST_LIMIT)
}

fn run_on_host(kernel: &Kernel, tests: &[String], suite: &Path) -> Result<Transcript> {
    // Through `env`: sudo, when it is needed, does not pass the environment on.
    let settings = suite_settings(kernel, tests).into_iter();
    let child = crate::as_root(Path::new("env"))?
        .args(settings.map(|(key, value)| format!("{key}={value}")))
        .arg("sh")
        .arg(suite.join("suite.sh"))
        .arg(suite)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the suite on the host")?;
    stream(kernel.name, child, HOST_LIMIT)
}

/// What a suite run printed that decides its verdict.
#[derive(Default)]
struct Transcript {
    /// Each family's `start` record (empty if leaktrace did not start), by family.
    starts: BTreeMap<String, String>,
    /// Each family's result line, by family: true for PASS.
    results: BTreeMap<String, bool>,
    /// The tests libtest reported FAILED, by family.
    failed_tests: BTreeMap<String, Vec<String>>,
    /// The family whose run printed the latest lines.
    running: Option<String>,
    finished: bool,
    panic: Option<String>,
    /// Set when the run was killed at its time limit.
    timed_out: Option<Duration>,
    exit: Option<ExitStatus>,
}

impl Transcript {
    fn read(&mut self, line: &str) {
        if line.contains("Kernel panic") {
            self.panic.get_or_insert_with(|| line.to_owned());
        }
        let failed_test = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"));
        if let (Some(test), Some(family)) = (failed_test, &self.running) {
            let failed = self.failed_tests.entry(family.clone()).or_default();
            failed.push(test.to_owned());
        }
        let Some(at) = line.find(MARKER) else {
            return;
        };
        let words = &line[at + MARKER.len()..];
        if words.starts_with("finished") {
            self.finished = true;
            return;
        }
        let Some((family, rest)) = words
            .strip_prefix("family=")
            .and_then(|w| w.split_once(' '))
        else {
            return;
        };
        if let Some(start) = rest.strip_prefix("start=") {
            self.running = Some(family.to_owned());
            self.starts.insert(family.to_owned(), start.to_owned());
        } else if let Some(result) = rest.strip_prefix("result=") {
            self.results.insert(family.to_owned(), result == "PASS");
        }
    }
}

/// Streams a suite run's output, each line after the kernel's name, until it ends or its time
/// runs out (then it is killed).
fn stream(kernel: &str, mut child: Child, limit: Duration) -> Result<Transcript> {
    let (tx, rx) = mpsc::channel();
    let sources: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("stdout is piped")),
        Box::new(child.stderr.take().expect("stderr is piped")),
    ];
    for source in sources {
        let tx = tx.clone();
        thread::spawn(move || {
            // A serial console is bytes, not UTF-8: read raw lines and convert lossily.
            let mut source = BufReader::new(source);
            let mut line = Vec::new();
            while source.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                if tx.send(printable(&line)).is_err() {
                    break;
                }
                line.clear();
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + limit;
    let mut transcript = Transcript::default();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                println!("[{kernel}] {line}");
                transcript.read(&line);
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                // Already exited is the only way kill fails; wait reaps either way.
                let _ = child.kill();
                transcript.timed_out = Some(limit);
                break;
            }
        }
    }
    transcript.exit = Some(child.wait()?);
    Ok(transcript)
}

/// A console line without its line end, control characters and the escape sequences firmware
/// sends to the terminal (one of them would reset the terminal showing this log).
fn printable(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut chars = text.chars();
    let mut line = String::new();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte; other escapes are ESC and one character.
            if chars.next() == Some('[') {
                chars.find(|c| ('@'..='~').contains(c));
            }
        } else if !c.is_control() || c == '\t' {
            line.push(c);
        }
    }
    line
}

/// One row of the matrix: a kernel run with one family.
struct Row {
    kernel: &'static str,
    family: String,
    result: &'static str,
    hooks: String,
    time: Option<Duration>,
}

struct Outcome {
    rows: Vec<Row>,
    failures: Vec<String>,
}

fn judge(kernel: &Kernel, transcript: Result<Transcript>, time: Duration) -> Outcome {
    let mut outcome = Outcome {
        rows: Vec::new(),
        failures: Vec::new(),
    };
    let mut fail = |why: String| outcome.failures.push(format!("{}: {why}", kernel.name));
    let transcript = match transcript {
        Ok(transcript) => transcript,
        Err(e) => {
            fail(format!("{e:#}"));
            Transcript::default()
        }
    };
    if let Some(panic) = &transcript.panic {
        fail(format!("the kernel panicked: {panic}"));
    }
    if let Some(limit) = transcript.timed_out {
        fail(format!(
            "hung: the suite did not finish within {}s and was killed",
            limit.as_secs()
        ));
    } else if !transcript.finished {
        if let Some(exit) = transcript.exit {
            fail(format!(
                "the suite stopped before its final line ({exit}): see the [{}] lines above",
                kernel.name
            ));
        }
    } else if let Some(exit) = transcript.exit.filter(|e| !e.success()) {
        fail(format!("the suite finished but exited with {exit}"));
    }
    let mut rows = Vec::new();
    for &family in kernel.families {
        let attached = transcript.starts.get(family).map(|s| attached_family(s));
        let result = match transcript.results.get(family) {
            Some(true) => "PASS",
            Some(false) => {
                let failed = transcript.failed_tests.get(family);
                fail(format!(
                    "--hooks {family}: {} failed (see the [{}] lines above)",
                    failed.map_or("tests".to_owned(), |tests| tests.join(", ")),
                    kernel.name
                ));
                "FAIL"
            }
            None if transcript.starts.contains_key(family) => {
                fail(format!(
                    "--hooks {family}: the suite did not finish this run"
                ));
                "UNFINISHED"
            }
            None => {
                fail(format!(
                    "--hooks {family}: the suite never started this run"
                ));
                "NOT RUN"
            }
        };
        let hooks = match &attached {
            Some(Ok((_, hooks))) => hooks.clone(),
            Some(Err(e)) => {
                fail(format!("--hooks {family}: {e:#}"));
                format!("{e:#}")
            }
            None => String::new(),
        };
        rows.push(Row {
            kernel: kernel.name,
            family: family.to_owned(),
            result,
            hooks,
            time: None,
        });
        let Some(Ok((picked, _))) = attached.filter(|_| family == "auto") else {
            continue;
        };
        match kernel.auto_family {
            Some(expected) if expected != picked => fail(format!(
                "--hooks auto picked the {picked} family, this kernel must give {expected}"
            )),
            None if !DESIGN_FAMILIES.contains(&picked) => rows.push(Row {
                kernel: kernel.name,
                family: DESIGN_FAMILIES.join("/"),
                result: "SKIP",
                hooks: format!(
                    "this kernel has neither (auto picked {picked}; leaktrace's `hook not used` lines say why)"
                ),
                time: None,
            }),
            _ => {}
        }
    }
    if let Some(first) = rows.first_mut() {
        first.time = Some(time);
    }
    outcome.rows = rows;
    outcome
}

/// The family a `start` record's hooks belong to, and those hooks for the report.
fn attached_family(start: &str) -> Result<(&'static str, String)> {
    ensure!(
        !start.is_empty(),
        "leaktrace did not start (its error is in the lines above)"
    );
    let start: Value =
        serde_json::from_str(start).with_context(|| format!("not a start record: {start}"))?;
    let family = leaktrace_tests::hook_family(&start)?;
    let hooks: Vec<&str> = leaktrace_tests::FAMILY_EVENTS
        .iter()
        .filter_map(|event| start["hooks"][event].as_str())
        .collect();
    Ok((family, format!("{family}: {}", hooks.join(", "))))
}

fn summarize(outcomes: &[Outcome]) -> (String, Vec<String>) {
    let rows: Vec<&Row> = outcomes.iter().flat_map(|o| &o.rows).collect();
    let width = |f: fn(&Row) -> usize, title: &str| {
        rows.iter()
            .map(|r| f(r))
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let (k, f, r) = (
        width(|r| r.kernel.len(), "kernel"),
        width(|r| r.family.len(), "--hooks"),
        width(|r| r.result.len(), "result"),
    );
    let mut table = format!(
        "\nvm-test matrix\n{:k$}  {:f$}  {:r$}  {:>6}  hooks (state, accept, close)\n",
        "kernel", "--hooks", "result", "time"
    );
    for row in rows {
        let time = row
            .time
            .map(|t| format!("{}m{:02}s", t.as_secs() / 60, t.as_secs() % 60))
            .unwrap_or_default();
        let _ = writeln!(
            table,
            "{:k$}  {:f$}  {:r$}  {time:>6}  {}",
            row.kernel, row.family, row.result, row.hooks
        );
    }
    // One kernel x family run is one test here: the run's closing line counts them.
    let mut totals = Totals::default();
    for row in outcomes.iter().flat_map(|o| &o.rows) {
        match row.result {
            "PASS" => totals.passed += 1,
            "FAIL" => totals.failed += 1,
            _ => totals.ignored += 1,
        }
    }
    table.push_str(&totals.line("vm-test"));
    let failures = outcomes.iter().flat_map(|o| o.failures.clone()).collect();
    (table, failures)
}
