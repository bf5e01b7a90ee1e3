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
    sync::{
        mpsc::{self, RecvTimeoutError},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

mod apt;

use crate::{
    test_summary::Totals,
    toolchain::{self, MUSL_TARGET},
};

struct Kernel {
    /// How the command line and the report name it.
    name: &'static str,
    /// The Debian package whose kernel the guest boots; `None` is the host's own kernel.
    package: Option<&'static str>,
    /// The Debian suite that has the package, where it is not the machine's own release
    /// (fetched through an apt configuration of vm-test's own: see `vm/apt.rs`).
    suite: Option<&'static str>,
    /// The family `--hooks auto` must pick. `None`: the hosts here refuse fentry and lack
    /// kprobes, a developer's may not, so what auto picks is reported rather than required.
    auto_family: Option<&'static str>,
    /// `--hooks` of each suite run: the kernel's own choice, the fallback family forced, and on
    /// one kernel with kprobes the family auto would skip there, so each family runs somewhere.
    families: &'static [&'static str],
}

/// The matrix, in the order it runs. A new kernel is a new entry (see the README).
const KERNELS: [Kernel; 4] = [
    Kernel {
        name: "5.10",
        // Debian 11's last point release has it, so it stays where the security suite's
        // newer ABIs come and go.
        package: Some("linux-image-5.10.0-32-cloud-amd64"),
        suite: Some("bullseye"),
        auto_family: Some("fentry"),
        families: &["auto", "tracepoint", "kprobe"],
    },
    Kernel {
        name: "6.1",
        package: Some("linux-image-6.1.0-50-cloud-amd64"),
        suite: None,
        auto_family: Some("fentry"),
        families: &["auto", "tracepoint"],
    },
    Kernel {
        name: "6.12",
        package: Some("linux-image-6.12.117+deb12-cloud-amd64"),
        suite: None,
        auto_family: Some("fentry"),
        families: &["auto", "tracepoint", "kprobe"],
    },
    Kernel {
        name: "host",
        package: None,
        suite: None,
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

/// Test files whose checks do not depend on the hooks attached: usage errors (`cli`), and
/// what a closed, full or unread stdout or stderr does (`outputs`, whose leaktrace runs ignore
/// `--hooks`). They run once per kernel, with its first family; the rest with every family.
const ONCE_PER_KERNEL: [&str; 2] = ["cli", "outputs"];

/// One run of the suite: a kernel with one hook family, in a guest of its own or on the host.
struct Job {
    kernel: &'static Kernel,
    family: &'static str,
    /// The test files it runs.
    tests: Vec<String>,
}

impl Job {
    /// How its output lines and failures are prefixed: `6.12 kprobe`.
    fn label(&self) -> String {
        format!("{} {}", self.kernel.name, self.family)
    }
}

pub fn run(root: &Path, names: &[String], tests: &[String]) -> Result<()> {
    let begun = Instant::now();
    let kernels = select(names)?;
    toolchain::ensure_vm()?;
    toolchain::ensure_test_servers()?;
    let guest_root = build_guest_root(root)?;
    let jobs = plan(&kernels, &test_files(&guest_root, tests)?);
    let initramfs = pack_initramfs(&guest_root)?;
    // Fetched before any guest starts: a download that fails stops the run at once.
    let images = kernels
        .iter()
        .filter_map(|k| Some((k.name, kernel_image(root, k.package?, k.suite))))
        .map(|(name, image)| Ok((name, image?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let accel = images
        .values()
        .next()
        .map(|image| choose_accel(image, &initramfs));
    let (on_host, in_guests): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|job| job.kernel.package.is_none());
    let mut outcomes = Vec::new();
    // The host suite times its servers closely: it runs with no guest beside it.
    for job in &on_host {
        eprintln!("xtask: vm-test: {} (on the host)", job.label());
        let started = Instant::now();
        let transcript = run_on_host(job, &guest_root.join("suite"));
        outcomes.push((job, judge(job, transcript, started.elapsed())));
    }
    if let Some(accel) = accel {
        outcomes.extend(run_guests(&in_guests, &images, &initramfs, accel));
    }
    // In the matrix's order, whichever guest finished first.
    let order = |job: &Job| {
        let kernel = KERNELS.iter().position(|k| k.name == job.kernel.name);
        let family = job.kernel.families.iter().position(|f| *f == job.family);
        (kernel, family)
    };
    outcomes.sort_by_key(|(job, _)| order(job));
    let (table, failures) = summarize(&outcomes, begun.elapsed());
    println!("{table}");
    if !failures.is_empty() {
        bail!("vm-test failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Boots the guests, as many side by side as the machine has cores: under TCG each guest is one
/// host thread (see [`choose_accel`]), so two cores halve the time. The longest go first.
fn run_guests<'a>(
    jobs: &'a [Job],
    images: &BTreeMap<&str, PathBuf>,
    initramfs: &Path,
    accel: &'static str,
) -> Vec<(&'a Job, Outcome)> {
    let side_by_side = thread::available_parallelism()
        .map_or(1, usize::from)
        .min(jobs.len());
    if side_by_side > 1 {
        eprintln!(
            "xtask: vm-test: {} guests, {side_by_side} at a time; each line starts with its kernel and family",
            jobs.len()
        );
    }
    let queue = Mutex::new(jobs.iter());
    let outcomes = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..side_by_side {
            scope.spawn(|| {
                // The lock is released before the guest runs: the next worker takes the next job.
                while let Some(job) = queue.lock().map_or(None, |mut jobs| jobs.next()) {
                    eprintln!("xtask: vm-test: {} starts", job.label());
                    let started = Instant::now();
                    let transcript = boot(job, &images[job.kernel.name], initramfs, accel);
                    let outcome = judge(job, transcript, started.elapsed());
                    eprintln!(
                        "xtask: vm-test: {} {} in {}",
                        job.label(),
                        outcome.rows[0].result,
                        minutes(started.elapsed())
                    );
                    if let Ok(mut outcomes) = outcomes.lock() {
                        outcomes.push((job, outcome));
                    }
                }
            });
        }
    });
    outcomes.into_inner().unwrap_or_default()
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

/// The test files of the suite built into `guest_root`, or those of them `--test` chose.
fn test_files(guest_root: &Path, chosen: &[String]) -> Result<Vec<String>> {
    let dir = guest_root.join("suite/tests");
    let mut built: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    built.sort();
    if chosen.is_empty() {
        return Ok(built);
    }
    for test in chosen {
        ensure!(
            built.contains(test),
            "no test file {test:?} in the suite (known: {})",
            built.join(", ")
        );
    }
    Ok(chosen.to_vec())
}

/// Every kernel's families, each with the test files it runs. The families' runs are the
/// guests vm-test boots: one per family keeps each row's time its own and lets two guests
/// share the work evenly. Those with every test file first, as they take longest.
fn plan(kernels: &[&'static Kernel], tests: &[String]) -> Vec<Job> {
    let mut jobs: Vec<Job> = kernels
        .iter()
        .flat_map(|&kernel| {
            kernel
                .families
                .iter()
                .enumerate()
                .map(move |(n, &family)| Job {
                    kernel,
                    family,
                    tests: tests
                        .iter()
                        .filter(|t| n == 0 || !ONCE_PER_KERNEL.contains(&t.as_str()))
                        .cloned()
                        .collect(),
                })
        })
        // A `--test` of once-per-kernel files leaves the other families nothing to run.
        .filter(|job| !job.tests.is_empty())
        .collect();
    jobs.sort_by_key(|job| std::cmp::Reverse(job.tests.len()));
    jobs
}

/// Settings for suite.sh, which reads them from its environment. A guest gets them on the
/// kernel command line: the kernel hands such words to PID 1 as environment variables (so
/// they may contain neither spaces nor dots).
fn suite_settings(job: &Job) -> Vec<(&'static str, String)> {
    vec![
        ("SUITE_TESTS", job.tests.join(",")),
        ("SUITE_FAMILIES", job.family.to_owned()),
        (
            "SUITE_EXPECT_AUTO",
            job.kernel.auto_family.unwrap_or_default().to_owned(),
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

/// The kernel image of a Debian package, downloaded on first use with apt-get into the cache
/// (from `suite` where it is not the machine's release).
fn kernel_image(root: &Path, package: &str, suite: Option<&str>) -> Result<PathBuf> {
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
    let private = suite
        .map(|suite| {
            apt::Private::new(&root.join(KERNEL_CACHE).join(format!("apt-{suite}")), suite)
        })
        .transpose()?;
    let download = || {
        let mut apt_get = private
            .as_ref()
            .map_or_else(|| Command::new("apt-get"), apt::Private::apt_get);
        // As root, apt would fetch as the _apt user, who may not be able to write here.
        apt_get
            .args(["-o", "APT::Sandbox::User=root", "download", package])
            .current_dir(&dir)
            .status()
            .context("starting apt-get")
    };
    let downloaded = match &private {
        // Its package lists serve this download alone: fetched for it.
        Some(private) => {
            private.update()?;
            download()?.success()
        }
        None => {
            download()?.success() || {
                toolchain::apt_update()?;
                download()?.success()
            }
        }
    };
    ensure!(
        downloaded,
        "apt-get download {package} failed: is it in {}?",
        suite.map_or("the machine's Debian suites".to_owned(), |s| format!(
            "Debian's {s} suite"
        ))
    );
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

fn boot(job: &Job, image: &Path, initramfs: &Path, accel: &str) -> Result<Transcript> {
    let mut append = String::from("console=ttyS0 panic=-1 quiet");
    for (key, value) in suite_settings(job) {
        write!(append, " {key}={value}")?;
    }
    let child = qemu(accel, image, initramfs, &append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    stream(&job.label(), child, GUEST_LIMIT)
}

fn run_on_host(job: &Job, suite: &Path) -> Result<Transcript> {
    // Through `env`: sudo, when it is needed, does not pass the environment on.
    let settings = suite_settings(job).into_iter();
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
    stream(&job.label(), child, HOST_LIMIT)
}

/// What a suite run printed that decides its verdict.
#[derive(Default)]
struct Transcript {
    /// Each family's `start` record (empty if leaktrace did not start), by family.
    starts: BTreeMap<String, String>,
    /// Where leaktrace did not start, the first line of its error, by family.
    start_errors: BTreeMap<String, String>,
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
        } else if let Some(error) = rest.strip_prefix("error=") {
            self.start_errors
                .insert(family.to_owned(), error.to_owned());
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
    /// The job's row, and on a kernel without the design's families a row saying so.
    rows: Vec<Row>,
    failures: Vec<String>,
}

fn judge(job: &Job, transcript: Result<Transcript>, time: Duration) -> Outcome {
    let (kernel, family, label) = (job.kernel, job.family, job.label());
    let mut failures = Vec::new();
    let mut fail = |why: String| failures.push(format!("{label}: {why}"));
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
                "the suite stopped before its final line ({exit}): see the [{label}] lines above"
            ));
        }
    } else if let Some(exit) = transcript.exit.filter(|e| !e.success()) {
        fail(format!("the suite finished but exited with {exit}"));
    }
    let attached = transcript
        .starts
        .get(family)
        .map(|start| attached_family(start, transcript.start_errors.get(family)));
    let result = match transcript.results.get(family) {
        Some(true) => "PASS",
        Some(false) => {
            let failed = transcript.failed_tests.get(family);
            fail(format!(
                "{} failed (see the [{label}] lines above)",
                failed.map_or("tests".to_owned(), |tests| tests.join(", "))
            ));
            "FAIL"
        }
        None if transcript.starts.contains_key(family) => {
            fail("the suite did not finish this run".to_owned());
            "UNFINISHED"
        }
        None => {
            fail("the suite never started this run".to_owned());
            "NOT RUN"
        }
    };
    let hooks = match &attached {
        Some(Ok(attached)) => attached.hooks.clone(),
        Some(Err(e)) => {
            fail(format!("{e:#}"));
            format!("{e:#}")
        }
        None => String::new(),
    };
    let mut rows = vec![Row {
        kernel: kernel.name,
        family: family.to_owned(),
        result,
        hooks,
        time: Some(time),
    }];
    if let Some(Ok(attached)) = attached.filter(|_| family == "auto") {
        match kernel.auto_family {
            Some(expected) if expected != attached.family => fail(format!(
                "--hooks auto picked the {} family, this kernel must give {expected}; refused: {}",
                attached.family,
                attached.refused.join("; ")
            )),
            None if !DESIGN_FAMILIES.contains(&attached.family) => rows.push(Row {
                kernel: kernel.name,
                family: DESIGN_FAMILIES.join("/"),
                result: "SKIP",
                hooks: format!(
                    "this kernel has neither (auto picked {}; leaktrace's `hook not used` lines say why)",
                    attached.family
                ),
                time: None,
            }),
            _ => {}
        }
    }
    Outcome { rows, failures }
}

/// What a suite run's `start` record says was attached.
struct Attached {
    family: &'static str,
    /// The family and its hooks, for the report.
    hooks: String,
    /// The hooks tried and refused, with the kernel's reasons.
    refused: Vec<String>,
}

/// The family a `start` record's hooks belong to, those hooks and the refused ones; where
/// leaktrace did not start, its error.
fn attached_family(start: &str, error: Option<&String>) -> Result<Attached> {
    ensure!(
        !start.is_empty(),
        "leaktrace did not start: {}",
        error.map_or("(its error is in the lines above)", String::as_str)
    );
    let start: Value =
        serde_json::from_str(start).with_context(|| format!("not a start record: {start}"))?;
    let family = leaktrace_tests::hook_family(&start)?;
    let hooks: Vec<&str> = leaktrace_tests::FAMILY_EVENTS
        .iter()
        .filter_map(|event| start["hooks"][event].as_str())
        .collect();
    let refused = start["refused"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|why| Some(why.as_str()?.to_owned()))
        .collect();
    Ok(Attached {
        family,
        hooks: format!("{family}: {}", hooks.join(", ")),
        refused,
    })
}

/// The matrix, one row per kernel and family, and the failures; `total` is the whole run's time.
fn summarize(outcomes: &[(&Job, Outcome)], total: Duration) -> (String, Vec<String>) {
    let outcomes: Vec<&Outcome> = outcomes.iter().map(|(_, o)| o).collect();
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
        "\nvm-test matrix\n{:k$}  {:f$}  {:r$}  {:>6}  hooks (family: accept)\n",
        "kernel", "--hooks", "result", "time"
    );
    for row in rows {
        let time = row.time.map(minutes).unwrap_or_default();
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
    let _ = writeln!(
        table,
        "total time {} (build, downloads and every run)",
        minutes(total)
    );
    table.push_str(&totals.line("vm-test"));
    let failures = outcomes.iter().flat_map(|o| o.failures.clone()).collect();
    (table, failures)
}

fn minutes(time: Duration) -> String {
    format!("{}m{:02}s", time.as_secs() / 60, time.as_secs() % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(name: &str) -> &'static Kernel {
        KERNELS.iter().find(|k| k.name == name).unwrap()
    }

    fn judged(job: &Job, lines: &[&str]) -> Outcome {
        let mut transcript = Transcript::default();
        for line in lines {
            transcript.read(line);
        }
        judge(job, Ok(transcript), Duration::from_secs(61))
    }

    /// A hook this kernel alone refuses fails its line, and the line says which and why.
    #[test]
    fn a_family_that_cannot_start_fails_its_line_with_leaktrace_s_error() {
        let error = "leaktrace: error: the kernel refused every hook for the accept event: \
                     kretprobe:inet_csk_accept: not in this kernel";
        let job = Job {
            kernel: kernel("5.10"),
            family: "kprobe",
            tests: vec!["kernel".into()],
        };
        let outcome = judged(
            &job,
            &[
                "LEAKTRACE-SUITE family=kprobe start=",
                &format!("LEAKTRACE-SUITE family=kprobe error={error}"),
                "test close_wait_ipv4 ... FAILED",
                "LEAKTRACE-SUITE family=kprobe test=kernel result=FAIL",
                "LEAKTRACE-SUITE family=kprobe result=FAIL",
                "LEAKTRACE-SUITE finished result=FAIL",
            ],
        );
        let row = &outcome.rows[0];
        assert_eq!(
            (row.kernel, row.family.as_str(), row.result),
            ("5.10", "kprobe", "FAIL")
        );
        assert_eq!(row.hooks, format!("leaktrace did not start: {error}"));
        assert!(
            outcome
                .failures
                .contains(&format!("5.10 kprobe: leaktrace did not start: {error}")),
            "{:?}",
            outcome.failures
        );
        assert!(outcome
            .failures
            .iter()
            .any(|f| f.contains("close_wait_ipv4 failed")));
    }

    #[test]
    fn auto_picking_another_family_than_the_kernel_must_give_says_what_was_refused() {
        let job = Job {
            kernel: kernel("5.10"),
            family: "auto",
            tests: vec!["kernel".into()],
        };
        let start = r#"{"type":"start","hooks":{"accept":"kretprobe:inet_csk_accept"},"refused":["accept: fexit:inet_csk_accept: verifier says no"]}"#;
        let outcome = judged(
            &job,
            &[
                &format!("LEAKTRACE-SUITE family=auto start={start}"),
                "LEAKTRACE-SUITE family=auto test=kernel result=PASS",
                "LEAKTRACE-SUITE family=auto result=PASS",
                "LEAKTRACE-SUITE finished result=PASS",
            ],
        );
        assert_eq!(
            outcome.failures,
            [
                "5.10 auto: --hooks auto picked the kprobe family, this kernel must give fentry; \
              refused: accept: fexit:inet_csk_accept: verifier says no"
            ]
        );
        assert_eq!(outcome.rows[0].hooks, "kprobe: kretprobe:inet_csk_accept");
    }

    #[test]
    fn once_per_kernel_tests_run_with_the_first_family_only() {
        let tests: Vec<String> = ["cli", "kernel", "outputs"].map(String::from).into();
        let jobs = plan(&[kernel("5.10")], &tests);
        let planned: Vec<(&str, Vec<&str>)> = jobs
            .iter()
            .map(|j| (j.family, j.tests.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            planned,
            [
                ("auto", vec!["cli", "kernel", "outputs"]),
                ("tracepoint", vec!["kernel"]),
                ("kprobe", vec!["kernel"]),
            ]
        );
        // Nothing left to run with the other families: they boot no guest.
        assert_eq!(plan(&[kernel("6.1")], &["cli".to_owned()]).len(), 1);
    }
}
