//! Tests of issue 14: logs for machines. With `--log-format json` every line the node writes
//! (nats-server's forwarded lines included) is one JSON object with timestamp, level, target
//! and fields, and the lines of a request carry its app and component in their span fields.

use std::time::Duration;

use serde_json::Value;

use crate::common::{Dirs, Launch, Node};

#[test]
fn json_logs_are_one_object_a_line_and_request_lines_carry_app_and_component() {
    let dirs = Dirs::with_hello();
    let mut node = Node::launch(&Launch {
        dirs: Some((&dirs.config, &dirs.data)),
        extra: &["--log-format", "json"],
        log: Some("lattice=debug,nats_server=info"),
        ..Launch::default()
    });
    node.wait_for_status("/greet", 200, Duration::from_secs(30));
    node.wait_for_log(&["\"served\""], Duration::from_secs(10));
    let status = node.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let log = node.log();

    let lines: Vec<Value> = log
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nlog:\n{log}"));
            assert!(value.is_object(), "not one object: {line}");
            for key in ["timestamp", "level", "target", "fields"] {
                assert!(value.get(key).is_some(), "no {key}: {line}");
            }
            value
        })
        .collect();
    assert!(lines.len() > 10, "{log}");

    // nats-server's own lines, tagged as such.
    let nats: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "nats_server")
        .collect();
    assert!(
        nats.iter()
            .any(|l| l["fields"]["message"] == "Server is ready"),
        "no nats_server line saying it is ready: {nats:?}"
    );

    // The request's lines: in the ingress's `http_request` span, with its app and component.
    let served: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "served")
        .collect();
    assert!(!served.is_empty(), "{log}");
    for line in served {
        let span = &line["span"];
        assert_eq!(span["name"], "http_request", "{line}");
        assert_eq!(span["app"], "hello", "{line}");
        assert_eq!(span["component"], "hello-component", "{line}");
        assert_eq!(span["url.path"], "/greet", "{line}");
    }
}

/// A start that fails under `--log-format json` (the admin address is taken) writes only JSON
/// lines, the failure among them as a `lattice node failed` event naming the address, and exits
/// with 1.
#[test]
fn a_failed_start_under_json_writes_only_json_lines() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("up")
        .arg("--config-dir")
        .arg(tmp.path().join("config"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--admin-addr", &addr, "--http-addr", "127.0.0.1:0"])
        .args(["--log-format", "json", "--log", "info"])
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("LATTICE_CREDS")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LATTICE_ADMIN_ADDR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\noutput:\n{text}"))
        })
        .collect();
    let failed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "lattice node failed")
        .unwrap_or_else(|| panic!("no `lattice node failed` event:\n{text}"));
    assert_eq!(failed["level"], "ERROR", "{failed}");
    let error = failed["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("cannot listen on {addr}")),
        "{failed}"
    );
}

/// A config that does not resolve under `--log-format json` is reported as one JSON line too.
#[test]
fn an_invalid_config_under_json_is_one_json_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("up")
        .arg("--config-dir")
        .arg(tmp.path().join("config"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--admin-addr", "not-an-address", "--log-format", "json"])
        .env_remove("LATTICE_ADMIN_ADDR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!(
        lines[0]["fields"]["message"], "lattice node failed",
        "{stderr}"
    );
    let error = lines[0]["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("--admin-addr \"not-an-address\""),
        "{stderr}"
    );
}

/// `lattice up` (standalone, no admin endpoint) with its stderr in the file `log` and
/// `JOURNAL_STREAM` set to `journal_stream`; stopped with SIGINT once it logged that it is up.
/// Returns the log.
fn run_with_journal_stream(
    dir: &std::path::Path,
    journal_stream: impl Fn(&std::fs::File) -> String,
) -> String {
    let log = dir.join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let stream = journal_stream(&file);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
        .args(["up", "--admin-addr", "none", "--log", "info"])
        .arg("--config-dir")
        .arg(dir.join("config"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--http-addr",
            &format!("127.0.0.1:{}", crate::common::free_port()),
        ])
        .env_remove("LATTICE_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env("JOURNAL_STREAM", stream)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    crate::common::wait_until("the node is up", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("lattice node is up"))
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn on_the_journal_stream_lines_carry_a_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    // stderr is the stream JOURNAL_STREAM names (its device and inode), as under systemd.
    let log = run_with_journal_stream(dir.path(), |file| {
        let meta = file.metadata().unwrap();
        format!("{}:{}", meta.dev(), meta.ino())
    });
    assert!(!log.is_empty());
    for line in log.lines() {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .unwrap_or_else(|| panic!("no <N> priority: {line:?}\n{log}"));
        let want = match priority.1.split_whitespace().next() {
            Some("ERROR") => "3",
            Some("WARN") => "4",
            Some("INFO") => "6",
            _ => "7",
        };
        assert_eq!(priority.0, want, "{line}");
        assert!(
            !priority.1.trim_start().starts_with("20"),
            "a timestamp under the journal: {line}"
        );
    }

    // An inherited JOURNAL_STREAM that is not this stderr (a shell started from a unit):
    // ordinary lines, with their timestamps.
    let dir = tempfile::tempdir().unwrap();
    let log = run_with_journal_stream(dir.path(), |_| "1:1".to_owned());
    assert!(
        log.lines()
            .all(|l| !l.starts_with('<') && l.starts_with("20")),
        "{log}"
    );
}
