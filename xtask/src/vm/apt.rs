//! An apt configuration of vm-test's own for a Debian release other than the machine's (5.10
//! is Debian 11's kernel, the machines run Debian 12): the machine's Debian sources with its
//! release's codename replaced, so the kernel comes from the mirrors the machine already uses,
//! and the machine's own sources and package lists stay as they are.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};

/// Where the machine's apt reads its sources: one-line `.list` files and deb822 `.sources`.
const SOURCES: &str = "/etc/apt/sources.list";
const SOURCE_PARTS: &str = "/etc/apt/sources.list.d";

/// apt's options for `suite` (`bullseye`), its files kept in `dir`: written on first use, its
/// package lists fetched by [`Private::update`].
pub struct Private {
    options: Vec<String>,
}

impl Private {
    pub fn new(dir: &Path, suite: &str) -> Result<Self> {
        let codename = machine_codename()?;
        let parts = dir.join("sources.list.d");
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for sub in [
            &parts,
            &lists.join("partial"),
            &cache.join("archives/partial"),
        ] {
            fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        let mut written = false;
        for (source, text) in machine_sources()? {
            let name = source.file_name().unwrap_or_default().to_string_lossy();
            let renamed = if name.ends_with(".sources") {
                deb822_for(&text, &codename, suite)
            } else {
                one_line_for(&text, &codename, suite)
            };
            let Some(renamed) = renamed else { continue };
            let target = parts.join(if name.ends_with(".sources") {
                format!("{suite}-{name}")
            } else {
                format!("{suite}-{}", name.trim_end_matches(".list")) + ".list"
            });
            fs::write(&target, renamed).with_context(|| format!("writing {}", target.display()))?;
            written = true;
        }
        ensure!(
            written,
            "the machine's apt sources ({SOURCES}, {SOURCE_PARTS}) name no Debian {codename} suite \
             to fetch {suite}'s packages from the same mirrors"
        );
        let option =
            |key: &str, value: &Path| vec!["-o".to_owned(), format!("{key}={}", value.display())];
        let options = [
            option("Dir::Etc::SourceList", Path::new("/dev/null")),
            option("Dir::Etc::SourceParts", &parts),
            option("Dir::State::Lists", &lists),
            option("Dir::Cache", &cache),
        ]
        .concat();
        Ok(Self { options })
    }

    /// `apt-get` with this configuration.
    pub fn apt_get(&self) -> Command {
        let mut command = Command::new("apt-get");
        command.args(&self.options);
        command
    }

    pub fn update(&self) -> Result<()> {
        let status = self
            .apt_get()
            .args(["update", "-q"])
            .status()
            .context("starting apt-get update")?;
        ensure!(
            status.success(),
            "apt-get update of the private apt configuration failed"
        );
        Ok(())
    }
}

/// The machine's Debian release (`bookworm`), from os-release.
fn machine_codename() -> Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|name| name.trim_matches('"').to_owned())
        .filter(|name| !name.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: is this Debian?")
}

/// The machine's source files and their text; those apt ignores (`*.disabled`) are left out.
fn machine_sources() -> Result<Vec<(PathBuf, String)>> {
    let mut files = vec![PathBuf::from(SOURCES)];
    if let Ok(entries) = fs::read_dir(SOURCE_PARTS) {
        let mut parts: Vec<PathBuf> = entries
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| {
                path.extension()
                    .is_some_and(|e| e == "list" || e == "sources")
            })
            .collect();
        parts.sort();
        files.extend(parts);
    }
    Ok(files
        .into_iter()
        .filter_map(|path| Some((fs::read_to_string(&path).ok()?, path)))
        .map(|(text, path)| (path, text))
        .collect())
}

/// `codename` or `codename-updates`, ... as `suite` or `suite-updates`; other suites (a
/// vendor's) are not Debian's.
fn renamed(word: &str, codename: &str, suite: &str) -> Option<String> {
    let rest = word.strip_prefix(codename)?;
    (rest.is_empty() || rest.starts_with('-')).then(|| format!("{suite}{rest}"))
}

/// The deb822 paragraphs of binary packages for `codename`'s suites, renamed to `suite`'s.
fn deb822_for(text: &str, codename: &str, suite: &str) -> Option<String> {
    let mut kept = Vec::new();
    for paragraph in text.split("\n\n") {
        let field = |name: &str| {
            paragraph.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
            })
        };
        if !field("Types").is_some_and(|types| types.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        let Some(suites) = field("Suites") else {
            continue;
        };
        let suites: Vec<String> = suites
            .split_whitespace()
            .filter_map(|s| renamed(s, codename, suite))
            .collect();
        if suites.is_empty() {
            continue;
        }
        let lines: Vec<String> = paragraph
            .lines()
            .map(|line| match line.split_once(':') {
                Some((key, _)) if key.trim().eq_ignore_ascii_case("Suites") => {
                    format!("Suites: {}", suites.join(" "))
                }
                Some((key, _)) if key.trim().eq_ignore_ascii_case("Types") => {
                    "Types: deb".to_owned()
                }
                _ => line.to_owned(),
            })
            .collect();
        kept.push(lines.join("\n"));
    }
    (!kept.is_empty()).then(|| kept.join("\n\n") + "\n")
}

/// The one-line `deb [options] URI SUITE COMPONENTS...` entries for `codename`'s suites,
/// renamed to `suite`'s.
fn one_line_for(text: &str, codename: &str, suite: &str) -> Option<String> {
    let kept: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("deb ")?.trim_start();
            // Options in brackets may hold spaces: `[arch=amd64 signed-by=...]`.
            let (options, rest) = match rest.strip_prefix('[') {
                Some(inner) => {
                    let (options, rest) = inner.split_once(']')?;
                    (format!("[{options}] "), rest.trim_start())
                }
                None => (String::new(), rest),
            };
            let mut words = rest.split_whitespace();
            let uri = words.next()?;
            let renamed = renamed(words.next()?, codename, suite)?;
            let components: Vec<&str> = words.collect();
            Some(format!(
                "deb {options}{uri} {renamed} {}",
                components.join(" ")
            ))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_keeps_the_release_suites_renamed() {
        let machine = "Types: deb\n# a mirror\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://vendor.example/apt\nSuites: nodistro\nComponents: main\n\nTypes: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n";
        assert_eq!(
            deb822_for(machine, "bookworm", "bullseye").unwrap(),
            "Types: deb\n# a mirror\nURIs: http://mirror.example/debian\nSuites: bullseye bullseye-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        assert_eq!(
            deb822_for("Types: deb\nSuites: bookwormish\n", "bookworm", "bullseye"),
            None
        );
    }

    #[test]
    fn one_line_keeps_the_release_suites_renamed() {
        let machine = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian-security bookworm-security main\ndeb https://vendor.example/apt cloud-sdk-bookworm main\ndeb-src http://mirror.example/debian bookworm main\n";
        assert_eq!(
            one_line_for(machine, "bookworm", "bullseye").unwrap(),
            "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian-security bullseye-security main\n"
        );
    }
}
