//! `cargo xtask check-deploy`: the fleet files in deploy/ against what they deploy. Each runs
//! the binary of `cargo xtask dist`: the flags they give it must be leaktrace's, the DaemonSet
//! must pass Kubernetes' schemas, the systemd unit `systemd-analyze verify`, and the Grafana
//! dashboard may query only metrics that a real `leaktrace --metrics` scrape returns.
use std::{
    collections::BTreeSet,
    env, fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use crate::{dist::DIST_DIR, test_summary::Totals, toolchain};

const CONTAINERFILE: &str = "deploy/Containerfile";
const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";
const UNIT: &str = "deploy/systemd/leaktrace.service";
const DASHBOARD: &str = "deploy/grafana/leaktrace.json";
/// Scratch space of the checks (the systemd root).
const WORK_DIR: &str = "target/check-deploy";

/// A check that could not run here, and why.
struct Skip(String);

/// A check of one file, given the workspace root and the dist binary.
type Check = fn(&Path, &Path) -> Result<Option<Skip>>;

pub fn check(root: &Path) -> Result<()> {
    let binary = crate::dist::build(root)?;
    let checks: [(&str, Check); 4] = [
        (CONTAINERFILE, containerfile),
        (DAEMONSET, daemonset),
        (UNIT, unit),
        (DASHBOARD, dashboard),
    ];
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for (file, check) in checks {
        match check(root, &binary) {
            Ok(None) => {
                println!("check-deploy: {file}: ok");
                totals.passed += 1;
            }
            Ok(Some(Skip(why))) => {
                println!("check-deploy: {file}: SKIPPED: {why}");
                totals.ignored += 1;
            }
            Err(e) => {
                println!("check-deploy: {file}: FAILED: {e:#}");
                totals.failed += 1;
                failures.push(file);
            }
        }
    }
    println!("{}", totals.line("check-deploy"));
    if !failures.is_empty() {
        bail!("check-deploy failed: {}", failures.join(", "));
    }
    Ok(())
}

/// No container engine runs here, so the image is not built: its source file must be the one
/// `dist` leaves, and its entry point leaktrace's own flags.
fn containerfile(root: &Path, binary: &Path) -> Result<Option<Skip>> {
    let text = read(root, CONTAINERFILE)?;
    let instruction = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("no {name} instruction"))
    };
    let copy: Vec<&str> = instruction("COPY")?.split_whitespace().collect();
    let [source, destination] = copy[..] else {
        bail!("COPY should copy one file, not {copy:?}");
    };
    // The build context is DIST_DIR, which holds the binary and its checksum.
    let (prefix, suffix) = source
        .split_once('*')
        .with_context(|| format!("COPY {source}: a pattern that outlives the version"))?;
    let matches: Vec<String> = fs::read_dir(root.join(DIST_DIR))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix) && name.ends_with(suffix))
        .collect();
    let built = binary.file_name().and_then(|n| n.to_str());
    ensure!(
        matches.len() == 1 && matches.first().map(String::as_str) == built,
        "COPY {source} matches {matches:?} in {DIST_DIR}, not the dist binary {built:?} alone"
    );
    let entrypoint: Vec<String> = serde_json::from_str(instruction("ENTRYPOINT")?)
        .context("ENTRYPOINT is not the exec (JSON array) form")?;
    let (program, args) = entrypoint.split_first().context("ENTRYPOINT is empty")?;
    ensure!(
        program == destination,
        "ENTRYPOINT runs {program}, COPY puts leaktrace at {destination}"
    );
    accepts(binary, args)?;
    let exposed = instruction("EXPOSE")?;
    let port = metrics_port(args)?;
    ensure!(
        exposed.split('/').next() == Some(port.as_str()),
        "EXPOSE {exposed}, but --metrics serves on port {port}"
    );
    Ok(None)
}

fn daemonset(root: &Path, binary: &Path) -> Result<Option<Skip>> {
    let bin = toolchain::ensure_manifest_validator(root)?;
    let manifest = root.join(DAEMONSET);
    let out = Command::new(bin.join("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .arg(&manifest)
        .output()
        .context("running kubernetes-validate")?;
    ensure!(
        out.status.success(),
        "kubernetes-validate --strict: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // PyYAML comes with the validator: the documents as JSON, for the checks below.
    let out = Command::new(bin.join("python3"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(&manifest)
        .output()
        .context("reading the manifest with PyYAML")?;
    ensure!(
        out.status.success(),
        "PyYAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let documents: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let pod = documents
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .map(|d| &d["spec"]["template"])
        .context("no DaemonSet")?;
    ensure!(
        pod["spec"]["hostPID"] == true,
        "hostPID must be true: leaktrace traces the node's processes"
    );
    let container = &pod["spec"]["containers"][0];
    let command: Vec<String> = serde_json::from_value(container["command"].clone())
        .context("the container gives no command: spell out leaktrace's flags")?;
    let args = command.get(1..).unwrap_or_default();
    accepts(binary, args)?;
    let port = metrics_port(args)?;
    let named = container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "metrics"))
        .map(|p| p["containerPort"].to_string());
    ensure!(
        named.as_deref() == Some(port.as_str()),
        "the container port named metrics is {named:?}, --metrics serves on {port}"
    );
    let annotations = &pod["metadata"]["annotations"];
    for (key, want) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", port.as_str()),
        ("prometheus.io/path", "/metrics"),
    ] {
        ensure!(
            annotations[key] == want,
            "annotation {key} is {}, not {want:?}",
            annotations[key]
        );
    }
    Ok(None)
}

/// `systemd-analyze verify` in a root of its own: it wants the unit's executable where
/// ExecStart names it, and the units the unit's default dependencies name, which the host's
/// systemd package has even where systemd is not PID 1 (as here).
fn unit(root: &Path, binary: &Path) -> Result<Option<Skip>> {
    let text = read(root, UNIT)?;
    let exec: Vec<&str> = text
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .context("no ExecStart=")?
        .split_whitespace()
        .collect();
    let (program, args) = exec.split_first().context("ExecStart= is empty")?;
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    accepts(binary, &args)?;

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        return Ok(Some(Skip(
            "systemd-analyze is not installed (Debian's systemd package has it)".into(),
        )));
    }
    let Some(system_units) = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|dir| dir.join("sysinit.target").is_file())
    else {
        return Ok(Some(Skip(
            "no systemd units on this host to verify the unit's dependencies against".into(),
        )));
    };
    let verify_root = root.join(WORK_DIR).join("systemd-root");
    if verify_root.exists() {
        fs::remove_dir_all(&verify_root)?;
    }
    let units = verify_root.join("usr/lib/systemd");
    let installed = verify_root.join("etc/systemd/system/leaktrace.service");
    let executable = verify_root.join(program.trim_start_matches('/'));
    for dir in [&units, &verify_root.join("etc/systemd/system")] {
        fs::create_dir_all(dir)?;
    }
    fs::create_dir_all(executable.parent().unwrap_or(&verify_root))?;
    let status = Command::new("cp")
        .arg("-a")
        .arg(system_units)
        .arg(&units)
        .status()
        .context("running cp")?;
    ensure!(
        status.success(),
        "copying {} failed",
        system_units.display()
    );
    fs::copy(root.join(UNIT), &installed)?;
    fs::copy(binary, &executable)?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", verify_root.display()))
        .arg("/etc/systemd/system/leaktrace.service")
        .output()
        .context("running systemd-analyze verify")?;
    // It exits 0 after warnings about unknown settings, which would be silently ignored.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}): {said}",
        out.status
    );
    Ok(None)
}

fn dashboard(root: &Path, binary: &Path) -> Result<Option<Skip>> {
    let dashboard: Value = serde_json::from_str(&read(root, DASHBOARD)?)
        .with_context(|| format!("{DASHBOARD} is not JSON"))?;
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    ensure!(!queries.is_empty(), "no query in the dashboard");
    let mut named = BTreeSet::new();
    for query in &queries {
        let found = metric_names(query);
        ensure!(!found.is_empty(), "the query {query:?} names no metric");
        named.extend(found);
    }
    let exported = match scrape(binary)? {
        Ok(exported) => exported,
        Err(skip) => return Ok(Some(skip)),
    };
    let unknown: Vec<&String> = named.difference(&exported).collect();
    ensure!(
        unknown.is_empty(),
        "the dashboard queries {unknown:?}, which leaktrace does not export (it exports {exported:?})"
    );
    Ok(None)
}

/// The PromQL of every panel target (`expr`, the panels of collapsed rows included) and of every
/// template variable that queries Prometheus.
fn collect_queries(dashboard: &Value, queries: &mut Vec<String>) {
    collect_exprs(&dashboard["panels"], queries);
    let variables = dashboard["templating"]["list"].as_array();
    for variable in variables.into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        // A string, or in newer dashboards an object holding it.
        let query = &variable["query"];
        if let Some(query) = query.as_str().or_else(|| query["query"].as_str()) {
            queries.push(label_values(query));
        }
    }
}

fn collect_exprs(value: &Value, exprs: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, value) in object {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => exprs.push(expr.clone()),
                    _ => collect_exprs(value, exprs),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|v| collect_exprs(v, exprs)),
        _ => {}
    }
}

/// Grafana's `label_values(SELECTOR, LABEL)` is no PromQL: its selector is.
fn label_values(query: &str) -> String {
    query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|inner| inner.strip_suffix(')'))
        .map_or(query, |inner| {
            inner
                .rsplit_once(',')
                .map_or(inner, |(selector, _)| selector)
        })
        .to_owned()
}

/// The metric names a PromQL expression selects: its identifiers, less functions (followed by
/// `(`), aggregations and other keywords, the label lists of `by`, `without`, `on`,
/// `ignoring` and `group_*`, and what stands in label matchers, ranges, strings and Grafana
/// variables (`$__rate_interval`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregations among them: `sum by (kind) (...)` puts no `(` right after `sum`.
    const KEYWORDS: [&str; 22] = [
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut at = 0;
    let skip_to = |from: usize, close: char| {
        chars[from..]
            .iter()
            .position(|&c| c == close)
            .map_or(chars.len(), |n| from + n + 1)
    };
    let next_significant = |from: usize| chars[from..].iter().find(|c| !c.is_whitespace());
    while at < chars.len() {
        let c = chars[at];
        match c {
            '"' | '\'' | '`' => at = skip_to(at + 1, c),
            '{' => at = skip_to(at + 1, '}'),
            '[' => at = skip_to(at + 1, ']'),
            '$' | '0'..='9' | '.' => {
                // A variable's name, or a number or duration (`1e3`, `5m`).
                at += 1;
                while at < chars.len() && (chars[at].is_alphanumeric() || "_.".contains(chars[at]))
                {
                    at += 1;
                }
            }
            c if c.is_alphabetic() || c == '_' || c == ':' => {
                let start = at;
                while at < chars.len()
                    && (chars[at].is_alphanumeric() || chars[at] == '_' || chars[at] == ':')
                {
                    at += 1;
                }
                let word: String = chars[start..at].iter().collect();
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if next_significant(at) == Some(&'(') {
                        at = skip_to(at, ')');
                    }
                } else if !KEYWORDS.contains(&lower.as_str()) && next_significant(at) != Some(&'(')
                {
                    names.insert(word);
                }
            }
            _ => at += 1,
        }
    }
    names
}

/// The metric names a real `leaktrace --metrics` serves, as samples are named: counters with
/// `_total`. Read from the dist binary's `demo` while its leaks are open, as a family shows in
/// the exposition only once it has a series (open leaks, transitions). The demo needs root.
fn scrape(binary: &Path) -> Result<Result<BTreeSet<String>, Skip>> {
    if !crate::is_root() && !crate::has_sudo() {
        let why = "not root and no sudo: leaktrace loads eBPF before it serves metrics";
        ensure!(env::var_os("CI").is_none(), "{why}");
        return Ok(Err(Skip(why.into())));
    }
    let mut child = crate::as_root(binary)?
        .args(["demo", "--json", "--metrics", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting leaktrace demo")?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let scraped = (|| -> Result<String> {
        let start = lines.next().context("leaktrace demo printed nothing")??;
        let start: Value = serde_json::from_str(&start)
            .with_context(|| format!("leaktrace printed no start record: {start:?}"))?;
        let addr: SocketAddr = start["metrics"]
            .as_str()
            .with_context(|| format!("the start record names no metrics address: {start}"))?
            .parse()?;
        // The demo's first finding; its final report comes two seconds later.
        lines
            .by_ref()
            .map_while(Result::ok)
            .find(|line| line.starts_with(r#"{"type":"leak""#))
            .context("leaktrace demo reported no leak")?;
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    // The rest of the report, so that the demo ends on its own rather than on a closed pipe.
    lines.for_each(drop);
    let status = child.wait()?;
    let response = scraped?;
    ensure!(status.success(), "leaktrace demo exited with {status}");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200 "),
        "the scrape failed: {head}"
    );
    Ok(Ok(exported_names(body)))
}

/// Sample names from an OpenMetrics exposition's `# TYPE` lines, so that families without a
/// series yet (no open leak) count too.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            let (name, kind) = (words.next()?, words.next()?);
            Some(match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            })
        })
        .collect()
}

fn read(root: &Path, file: &str) -> Result<String> {
    fs::read_to_string(root.join(file)).with_context(|| format!("reading {file}"))
}

/// leaktrace parses `args` as it would at start: `--help` after them exits 0 only when every
/// flag and value before it is valid (a usage error exits 2 with its one line).
fn accepts(binary: &Path, args: &[String]) -> Result<()> {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    ensure!(
        out.status.success(),
        "leaktrace refuses {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The port of `--metrics [ADDR:]PORT`.
fn metrics_port(args: &[String]) -> Result<String> {
    let value = args
        .iter()
        .skip_while(|a| *a != "--metrics")
        .nth(1)
        .context("no --metrics: the fleet files serve metrics")?;
    let port = value.rsplit_once(':').map_or(value.as_str(), |(_, p)| p);
    Ok(port.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn metric_names_leave_out_functions_labels_and_ranges() {
        assert_eq!(
            names(
                r#"sum by (kind) (rate(leaktrace_leaks_reported_total{kind=~"close.*", instance="$instance"}[$__rate_interval])) * 60"#
            ),
            ["leaktrace_leaks_reported_total"]
        );
        assert_eq!(
            names("max without(pid) (leaktrace_ring_buffer_fill_ratio) > bool 0.8 or on(instance) up offset 5m"),
            ["leaktrace_ring_buffer_fill_ratio", "up"]
        );
        assert_eq!(
            names("topk(10, sum(leaktrace_open_leaks) by (comm, pid)) / ignoring(kind) group_left leaktrace_sockets_tracked"),
            ["leaktrace_open_leaks", "leaktrace_sockets_tracked"]
        );
        assert!(names("vector(1)").is_empty());
    }

    #[test]
    fn grafana_label_values_is_its_selector() {
        assert_eq!(
            label_values("label_values(leaktrace_sockets_tracked, instance)"),
            "leaktrace_sockets_tracked"
        );
        assert_eq!(
            label_values("leaktrace_records_total"),
            "leaktrace_records_total"
        );
    }

    #[test]
    fn counters_are_sampled_with_total() {
        let exposition = "# HELP leaktrace_records Records.\n# TYPE leaktrace_records counter\n\
            leaktrace_records_total 3\n# TYPE leaktrace_open_leaks gauge\n# EOF\n";
        assert_eq!(
            exported_names(exposition).into_iter().collect::<Vec<_>>(),
            ["leaktrace_open_leaks", "leaktrace_records_total"]
        );
    }

    #[test]
    fn the_metrics_port_is_after_the_last_colon() -> Result<()> {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(metrics_port(&args("--json --metrics [::]:9464"))?, "9464");
        assert_eq!(metrics_port(&args("--metrics 9464"))?, "9464");
        assert!(metrics_port(&args("--json")).is_err());
        Ok(())
    }
}
