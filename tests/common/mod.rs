//! Test harness: runs the real `lattice` binary (which starts a real nats-server) on loopback,
//! builds the example components once, and reads the node's log.
#![allow(dead_code)]

pub mod certs;
pub mod hub;
pub mod lattice;
pub mod observe;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Path of an example component's wasm, building all examples first (once per test process;
/// cargo's own lock serializes concurrent test processes).
pub fn example_wasm(crate_name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(examples.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(examples.join("target"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("running cargo to build the examples");
        assert!(status.success(), "building the example components failed");
    });
    let path = examples
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(path.is_file(), "{} missing after the build", path.display());
    path
}

/// A wadm manifest for one component answering `path` on the shared ingress.
pub fn manifest(app: &str, wasm: &Path, path: &str) -> String {
    manifest_with(app, &format!("{app}-component"), wasm, path, "instances: 1")
}

/// A wadm manifest of app `app` whose component `component` (`wasm`) answers `path` on the
/// shared ingress; `scaler` is the spreadscaler's properties, lines after the first indented
/// by 12 spaces.
pub fn manifest_with(app: &str, component: &str, wasm: &Path, path: &str, scaler: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
  annotations:
    version: v1
spec:
  components:
    - name: {component}
      type: component
      properties:
        image: file://{wasm}
      traits:
        - type: spreadscaler
          properties:
            {scaler}
{link}"#,
        wasm = wasm.display(),
        link = http_server_link(component, path),
    )
}

/// The manifest lines (the end of a manifest's `components`) of the http-server capability
/// linking component `component` to `path` on the shared ingress.
pub fn http_server_link(component: &str, path: &str) -> String {
    format!(
        r#"    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.2
      traits:
        - type: link
          properties:
            target:
              name: {component}
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            source:
              config:
                - name: default-http
                  properties:
                    path: {path}
"#
    )
}

/// Polls `done` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Temp config and data dirs for a node started with [`Node::start_in`] or
/// [`Node::start_with`]; removed on drop.
pub struct Dirs {
    /// The config dir (created).
    pub config: PathBuf,
    /// The data dir (not created: the node makes it).
    pub data: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Dirs {
    /// Fresh dirs whose config dir holds `file` with `manifest`.
    pub fn with_manifest(file: &str, manifest: &str) -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let (config, data) = (tmp.path().join("config"), tmp.path().join("data"));
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join(file), manifest).unwrap();
        Dirs {
            config,
            data,
            _tmp: tmp,
        }
    }

    /// Fresh dirs with the hello example routed at `/`.
    pub fn with_hello() -> Dirs {
        Dirs::with_manifest(
            "hello.yaml",
            &manifest("hello", &example_wasm("http-hello"), "/"),
        )
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `--log` filter of test nodes unless [`Launch::log`] says otherwise.
pub const DEFAULT_LOG: &str = "info,lattice=debug,nats_server=info";

/// How [`Node::launch`] starts `lattice up`.
#[derive(Clone, Copy, Default)]
pub struct Launch<'a> {
    /// `--config-dir` and `--data-dir`; `None`: neither flag, the node finds them from
    /// `$CONFIGURATION_DIRECTORY` and `$STATE_DIRECTORY`, which `env` must then set.
    pub dirs: Option<(&'a Path, &'a Path)>,
    /// More flags.
    pub extra: &'a [&'a str],
    /// Env vars to set (systemd's, `LATTICE_*`, …), after the harness removed the inherited
    /// systemd ones.
    pub env: &'a [(&'a str, &'a str)],
    /// RLIMIT_AS of the node and its nats-server, if any.
    pub address_space_bytes: Option<u64>,
    /// `--log` [default: [`DEFAULT_LOG`]].
    pub log: Option<&'a str>,
}

/// A running `lattice up` with its own config and data dirs.
pub struct Node {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// The shared ingress.
    pub http: SocketAddr,
    /// The admin endpoint (`/healthz`, `/readyz`, `/metrics`), on a free loopback port unless
    /// `--admin-addr` or `LATTICE_ADMIN_ADDR` was given.
    pub admin: SocketAddr,
    /// Its config dir (manifests go here).
    pub config_dir: PathBuf,
    /// Its data dir.
    pub data_dir: PathBuf,
    _dirs: Option<tempfile::TempDir>,
}

impl Node {
    /// Runs `lattice ARGS --data-dir <its data dir> -o json` (through this node's NATS).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let data = self.data_dir.to_string_lossy().into_owned();
        let mut all = args.to_vec();
        all.extend_from_slice(&["--data-dir", &data, "-o", "json"]);
        lattice_cli(&all)
    }

    /// As [`Node::cli`]: the parsed JSON of a successful run, else what went wrong (with the
    /// CLI's stderr, or its stdout when that is not JSON).
    pub fn try_json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = self.cli(args);
        if !out.status.success() {
            return Err(format!(
                "`lattice {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "`lattice {}`: not JSON ({e}): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Starts a node with fresh temp dirs and `extra` flags.
    pub fn start(extra: &[&str]) -> Node {
        let dirs = tempfile::tempdir().unwrap();
        let config_dir = dirs.path().join("config");
        let data_dir = dirs.path().join("data");
        std::fs::create_dir_all(&config_dir).unwrap();
        let mut node = Node::start_in(&config_dir, &data_dir, extra);
        node._dirs = Some(dirs);
        node
    }

    /// Starts a node on the given dirs (kept by the caller).
    pub fn start_in(config_dir: &Path, data_dir: &Path, extra: &[&str]) -> Node {
        Node::start_with(config_dir, data_dir, extra, &[], None)
    }

    /// Starts a node with `extra` flags, `env` vars set, and, if given, its address space
    /// (RLIMIT_AS, inherited by its nats-server) limited to `address_space_bytes`, like a small
    /// VM with `ulimit -v`.
    pub fn start_with(
        config_dir: &Path,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        address_space_bytes: Option<u64>,
    ) -> Node {
        Node::launch(&Launch {
            dirs: Some((config_dir, data_dir)),
            extra,
            env,
            address_space_bytes,
            ..Launch::default()
        })
    }

    /// Starts a node as `launch` says.
    pub fn launch(launch: &Launch<'_>) -> Node {
        let Launch {
            dirs,
            extra,
            env,
            address_space_bytes,
            log,
        } = *launch;
        let (config_dir, data_dir) = match dirs {
            Some((config, data)) => (config.to_path_buf(), data.to_path_buf()),
            // Where the node finds them: systemd's variables, as the test set them.
            None => {
                let var = |name: &str| {
                    env.iter()
                        .find(|(key, _)| *key == name)
                        .map(|(_, value)| PathBuf::from(value))
                        .unwrap_or_else(|| panic!("Launch without dirs needs env {name}"))
                };
                (var("CONFIGURATION_DIRECTORY"), var("STATE_DIRECTORY"))
            }
        };
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_lattice"));
        if let Some(limit) = address_space_bytes {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_AS,
                        limit,
                        limit,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        command.arg("up");
        if dirs.is_some() {
            command
                .arg("--config-dir")
                .arg(&config_dir)
                .arg("--data-dir")
                .arg(&data_dir);
        }
        let mut child = command
            .arg("--http-addr")
            .arg(http.to_string())
            .args(if extra.contains(&"--name") {
                &[][..]
            } else {
                &["--name", "test-node"][..]
            })
            .args(["--log", log.unwrap_or(DEFAULT_LOG)])
            .args(extra)
            .env_remove("LATTICE_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("CONFIGURATION_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .env_remove("JOURNAL_STREAM")
            .env_remove("LATTICE_REGISTRY_CREDS")
            .env_remove("LATTICE_INSECURE_REGISTRY")
            .env_remove("LATTICE_CA_FILE")
            .env("DOCKER_CONFIG", empty_docker_config())
            .env("LATTICE_ADMIN_ADDR", admin.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning lattice");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[node] {line}");
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Node {
            child: Some(child),
            log,
            http,
            admin,
            config_dir,
            data_dir,
            _dirs: None,
        }
    }

    /// `GET path` on the admin endpoint (`/healthz`, `/readyz`, `/metrics`): status and body;
    /// `None` if the connection failed.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path, None)
    }

    /// Writes `file` into the config dir: a manifest of app `app` routing `path` to the example
    /// component `example` (crate name). Returns the file's path.
    pub fn write_manifest(&self, file: &str, app: &str, example: &str, path: &str) -> PathBuf {
        let file = self.config_dir.join(file);
        std::fs::write(&file, manifest(app, &example_wasm(example), path)).unwrap();
        file
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log has a line containing every one of `needles`; panics after `timeout`
    /// with the log.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .log()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// How many log lines contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// The pid of the current nats-server child, from the node's log.
    pub fn nats_pid(&self) -> i32 {
        let log = self.log();
        let line = log
            .lines()
            .rfind(|l| {
                l.contains("nats-server is ready") || l.contains("nats-server restarted and ready")
            })
            .unwrap_or_else(|| panic!("no nats-server pid in log:\n{log}"));
        let pid = line
            .split("pid=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        pid.parse().unwrap()
    }

    /// The node's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// `GET path` on the ingress: status and body; `None` if the connection failed.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path, None)
    }

    /// Polls `GET path` until the status is `status`; returns the body. Panics after `timeout`.
    pub fn wait_for_status(&self, path: &str, status: u16, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.get(path);
            if let Some((_, body)) = got.as_ref().filter(|(s, _)| *s == status) {
                return body.clone();
            }
            assert!(
                Instant::now() < deadline,
                "GET {path}: wanted {status} within {timeout:?}, last {got:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A no-op for a node that already exited. The node's nats-server dies with it
            // (parent-death signal), so only processes this test started are killed.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// A minimal blocking HTTP/1.1 GET with a 10 s timeout, returning status and body.
pub fn http_get(addr: SocketAddr, path: &str, host: Option<&str>) -> Option<(u16, String)> {
    let (status, _headers, body) = http_request(addr, "GET", path, host, &[])?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Status, headers and body of an HTTP answer.
pub type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), via hyper's client in a
/// small runtime: status, headers, body. `None` when the connection fails or times out.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: Option<&str>,
    body: &[u8],
) -> Option<Answer> {
    let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
    http_request_with(addr, method, path, &headers, body)
}

/// As [`http_request`], with any request headers.
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Answer> {
    http_request_within(Duration::from_secs(10), addr, method, path, headers, body)
}

/// As [`http_request_with`], giving up after `timeout` instead of 10 s.
pub fn http_request_within(
    timeout: Duration,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Answer> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fut = async {
            // reqwest 0.13 without a TLS provider of its own: the process's (ring).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest_otlp::Client::builder().no_proxy().build().ok()?;
            let mut request = client
                .request(
                    reqwest_otlp::Method::from_bytes(method.as_bytes()).ok()?,
                    format!("http://{addr}{path}"),
                )
                .body(body.to_vec());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.ok()?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let body = response.bytes().await.ok()?.to_vec();
            Some((status, headers, body))
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    })
}

/// Runs the `lattice` binary with `args` (a client command), with a 30 s limit.
pub fn lattice_cli(args: &[&str]) -> std::process::Output {
    lattice_cli_with(args, &[], Duration::from_secs(30))
}

/// An empty dir for `DOCKER_CONFIG`, so that no node or command of a test reads this
/// machine's `~/.docker/config.json` (a test's `env` may set another).
pub fn empty_docker_config() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("lattice-tests-empty-docker-config");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// As [`lattice_cli`], with `env` set and a limit of `timeout`; registry settings of the
/// environment (`LATTICE_REGISTRY_CREDS`, `LATTICE_INSECURE_REGISTRY`, `LATTICE_CA_FILE`,
/// `DOCKER_CONFIG`) are not used.
pub fn lattice_cli_with(
    args: &[&str],
    env: &[(&str, &Path)],
    timeout: Duration,
) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lattice"));
    command
        .args(args)
        .env_remove("LATTICE_NATS_URL")
        .env_remove("LATTICE_LATTICE")
        .env_remove("LATTICE_DATA_DIR")
        .env_remove("LATTICE_REGISTRY_CREDS")
        .env_remove("LATTICE_INSECURE_REGISTRY")
        .env_remove("LATTICE_CA_FILE")
        .env("DOCKER_CONFIG", empty_docker_config())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawning lattice");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Who a test's own NATS client connects as.
#[derive(Debug, Clone)]
pub enum NatsLogin {
    /// Nobody: the node's own NATS refuses it (`Authorization Violation`).
    Anonymous,
    /// A NATS user credentials file (a hub's user).
    Creds(PathBuf),
    /// The local user of the node whose data dir this is: the nkey seed it keeps in `local.nk`,
    /// as the `lattice` CLI presents it.
    Node(PathBuf),
}

/// The URL of the node's own NATS (as recorded in its data dir's `nats.url`) and the login its
/// nats-server admits.
pub fn node_nats(data_dir: &Path) -> (String, NatsLogin) {
    let url = std::fs::read_to_string(data_dir.join("nats.url"))
        .unwrap_or_else(|e| panic!("reading {}/nats.url: {e}", data_dir.display()));
    (
        url.trim().to_owned(),
        NatsLogin::Node(data_dir.to_path_buf()),
    )
}

/// Connects a plain async-nats client to `url` as `login` says.
pub async fn nats_connect(
    url: &str,
    login: &NatsLogin,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = match login {
        NatsLogin::Anonymous => async_nats::ConnectOptions::new(),
        NatsLogin::Creds(creds) => async_nats::ConnectOptions::with_credentials_file(creds)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", creds.display())),
        NatsLogin::Node(data_dir) => {
            let file = data_dir.join("local.nk");
            let seed = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        }
    };
    options.connect(url).await
}

/// A plain async-nats client of the node's own NATS, as its local user.
pub async fn node_client(data_dir: &Path) -> async_nats::Client {
    let (url, login) = node_nats(data_dir);
    nats_connect(&url, &login)
        .await
        .unwrap_or_else(|e| panic!("connecting to the node's NATS at {url}: {e}"))
}

/// The reply to control API request `api` (e.g. `app.deploy`, `get.config`) of lattice
/// `default` with `payload`, sent straight to the node's NATS as a client that is not the CLI
/// (no checks of its own first): the reply's JSON (`{"success", "message", "response"}`).
pub fn control_request(data_dir: &Path, api: &str, payload: Vec<u8>) -> serde_json::Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = node_client(data_dir).await;
        let reply = client
            .request(format!("lattice.default.ctl.v1.{api}"), payload.into())
            .await
            .unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    })
}

/// As [`lattice_cli`], run as user id `uid` (group id `gid`): another Unix user of the machine.
pub fn lattice_cli_as(uid: u32, gid: u32, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt as _;
    Command::new(env!("CARGO_BIN_EXE_lattice"))
        .args(args)
        .env_remove("LATTICE_NATS_URL")
        .env_remove("LATTICE_LATTICE")
        .env_remove("LATTICE_DATA_DIR")
        .env_remove("LATTICE_CREDS")
        .env("HOME", "/nonexistent")
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("spawning lattice as another user")
}
