//! Command line: the agent's verbs and the operator's. Parsing is pure.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Install,
    Enable,
    Disable,
    Uninstall,
    Update,
    Plan {
        json: bool,
        settings: Option<PathBuf>,
        /// Replay a recorded hardware tree (a diagnose bundle's `sysfs/`) instead of `/sys`.
        sysfs: Option<PathBuf>,
    },
    Health {
        json: bool,
    },
    Fetch {
        url: String,
        sha256: String,
        into: PathBuf,
        size: Option<u64>,
        extract: Option<bool>,
    },
    /// The whole engine in the foreground, without the agent.
    Apply {
        settings: Option<PathBuf>,
    },
    /// A support bundle with secrets redacted.
    Diagnose {
        out: PathBuf,
    },
    /// Internal: the detached worker.
    Worker {
        handler_dir: PathBuf,
        seq: u64,
    },
    /// Internal: the health monitor run by the systemd timer.
    Monitor {
        handler_dir: PathBuf,
    },
    Version,
    Help,
}

pub const USAGE: &str = "usage: ibdriver <verb> [options]
agent verbs:    install | enable | disable | uninstall | update
operator verbs: plan [--json] [--settings FILE] [--sysfs DIR]
                                                  what enable would do on this host; with
                                                  --sysfs, on the hardware recorded in DIR
                                                  (a diagnose bundle's sysfs/; no IMDS)
                health [--json]                   RDMA health; exit 0 only when usable
                fetch URL --sha256 HEX --into DIR [--size BYTES] [--extract|--no-extract]
                                                  download, verify and unpack one artifact
                apply [--settings FILE]           install, configure and verify in the
                                                  foreground (Batch start tasks, image builds)
                diagnose --out FILE               support bundle (.tar.gz), secrets redacted,
                                                  with the hardware facts under sysfs/
                version
environment:    IBDRIVER_ROOT (host root, default /), IBDRIVER_SYSFS (the directory
                hardware facts are read from, default <root>/sys), IBDRIVER_IMDS_URL,
                IBDRIVER_VERIFY_TIMEOUT_SECONDS (default 120); for apply only:
                IBDRIVER_PACKAGE_URL, IBDRIVER_PROXY (the protected settings)";

fn value(args: &[String], i: &mut usize, flag: &str) -> Result<String, String> {
    *i += 1;
    args.get(*i)
        .cloned()
        .ok_or_else(|| format!("{flag} needs a value"))
}

/// The command line as the process got it: every argument must be UTF-8 (ours are; a path
/// that is not could not be shown in a status message either).
pub fn utf8_args(args: Vec<std::ffi::OsString>) -> Result<Vec<String>, String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.into_string()
                .map_err(|_| format!("argument {} is not valid UTF-8", i + 1))
        })
        .collect()
}

pub fn parse(args: &[String]) -> Result<Command, String> {
    let Some(verb) = args.first() else {
        return Err("no verb given".into());
    };
    let rest = &args[1..];
    let simple = |c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(format!("{verb} takes no arguments"))
        }
    };
    match verb.as_str() {
        "install" => simple(Command::Install),
        "enable" => simple(Command::Enable),
        "disable" => simple(Command::Disable),
        "uninstall" => simple(Command::Uninstall),
        "update" => simple(Command::Update),
        "version" | "--version" => simple(Command::Version),
        "help" | "--help" | "-h" => Ok(Command::Help),
        "apply" => match rest {
            [] => Ok(Command::Apply { settings: None }),
            [flag, file] if flag == "--settings" => Ok(Command::Apply {
                settings: Some(PathBuf::from(file)),
            }),
            [flag] if flag == "--settings" => Err("--settings needs a value".into()),
            _ => Err("usage: apply [--settings FILE]".into()),
        },
        "diagnose" => match rest {
            [flag, file] if flag == "--out" => Ok(Command::Diagnose {
                out: PathBuf::from(file),
            }),
            _ => Err("usage: diagnose --out FILE".into()),
        },
        "plan" | "health" | "worker" | "monitor" => parse_options(verb, rest),
        "fetch" => parse_fetch(rest),
        other => Err(format!("unknown verb {other}")),
    }
}

/// `plan`, `health`, `worker` and `monitor`: flags, each allowed only where it means something.
fn parse_options(verb: &str, rest: &[String]) -> Result<Command, String> {
    let mut json = false;
    let mut settings = None;
    let mut sysfs = None;
    let mut handler_dir = None;
    let mut seq = None;
    let mut i = 0;
    while i < rest.len() {
        match rest[i].as_str() {
            "--json" if verb != "worker" && verb != "monitor" => json = true,
            "--settings" if verb == "plan" => {
                settings = Some(PathBuf::from(value(rest, &mut i, "--settings")?))
            }
            "--sysfs" if verb == "plan" => {
                sysfs = Some(PathBuf::from(value(rest, &mut i, "--sysfs")?))
            }
            "--handler-dir" if verb == "worker" || verb == "monitor" => {
                handler_dir = Some(PathBuf::from(value(rest, &mut i, "--handler-dir")?))
            }
            "--seq" if verb == "worker" => {
                seq = Some(
                    crate::agent::environment::parse_seq(&value(rest, &mut i, "--seq")?)
                        .ok_or("--seq needs a sequence number (decimal digits)")?,
                )
            }
            other => return Err(format!("{verb}: unknown option {other}")),
        }
        i += 1;
    }
    match verb {
        "plan" => Ok(Command::Plan {
            json,
            settings,
            sysfs,
        }),
        "health" => Ok(Command::Health { json }),
        "worker" => Ok(Command::Worker {
            handler_dir: handler_dir.ok_or("worker needs --handler-dir")?,
            seq: seq.ok_or("worker needs --seq")?,
        }),
        _ => Ok(Command::Monitor {
            handler_dir: handler_dir.ok_or("monitor needs --handler-dir")?,
        }),
    }
}

/// `fetch URL --sha256 HEX --into DIR [--size BYTES] [--extract|--no-extract]`.
fn parse_fetch(rest: &[String]) -> Result<Command, String> {
    let mut url = None;
    let mut sha256 = None;
    let mut into = None;
    let mut size = None;
    let mut extract = None;
    let mut i = 0;
    while i < rest.len() {
        match rest[i].as_str() {
            "--sha256" => sha256 = Some(value(rest, &mut i, "--sha256")?),
            "--into" => into = Some(PathBuf::from(value(rest, &mut i, "--into")?)),
            "--size" => {
                size = Some(
                    value(rest, &mut i, "--size")?
                        .parse::<u64>()
                        .map_err(|_| "--size needs a number")?,
                )
            }
            "--extract" => extract = Some(true),
            "--no-extract" => extract = Some(false),
            o if o.starts_with("--") => return Err(format!("fetch: unknown option {o}")),
            u if url.is_none() => url = Some(u.to_string()),
            _ => return Err("fetch takes one URL".into()),
        }
        i += 1;
    }
    let sha256: String = sha256.ok_or("fetch needs --sha256")?;
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("--sha256 needs 64 hexadecimal digits".into());
    }
    Ok(Command::Fetch {
        url: url.ok_or("fetch needs a URL")?,
        sha256,
        into: into.ok_or("fetch needs --into")?,
        size,
        extract,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn verbs() {
        assert_eq!(p("enable"), Ok(Command::Enable));
        assert_eq!(
            p("plan --json"),
            Ok(Command::Plan {
                json: true,
                settings: None,
                sysfs: None
            })
        );
        assert_eq!(
            p("plan --sysfs /b/sysfs --json"),
            Ok(Command::Plan {
                json: true,
                settings: None,
                sysfs: Some("/b/sysfs".into())
            })
        );
        assert_eq!(
            p("worker --handler-dir /h --seq 4"),
            Ok(Command::Worker {
                handler_dir: "/h".into(),
                seq: 4
            })
        );
        assert_eq!(
            p("monitor --handler-dir /h"),
            Ok(Command::Monitor {
                handler_dir: "/h".into()
            })
        );
        for bad in [
            "",
            "enable now",
            "plan --bogus",
            "worker --seq x --handler-dir /h",
            "worker --seq 1",
            "worker --handler-dir /h --seq +1",
            "worker --handler-dir /h --seq 01",
            "frobnicate",
            "health --settings f",
            "plan --sysfs",
            "health --sysfs /s",
            "apply --sysfs /s",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn non_utf8_arguments_are_a_usage_error() {
        use std::os::unix::ffi::OsStringExt;
        let args = vec![
            "enable".into(),
            std::ffi::OsString::from_vec(vec![b'a', 0xff]),
        ];
        assert_eq!(
            utf8_args(args),
            Err("argument 2 is not valid UTF-8".to_string())
        );
        assert_eq!(
            utf8_args(vec!["enable".into()]),
            Ok(vec!["enable".to_string()])
        );
    }
}
