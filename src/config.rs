//! Flags, env vars and `lattice.toml`, resolved once into a checked [`NodeConfig`].
//!
//! Precedence: flag > env var `LATTICE_*` (both via clap) > key in `<config-dir>/lattice.toml` >
//! built-in default. Every error names the flag or the file and key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

use crate::cli::UpArgs;
use crate::name::Name;
use crate::nats::redact::{SecretUrl, redact_url, url_credentials};
use crate::providers::http::{ListenPolicy, ListenRule};
use crate::providers::keyvalue::BucketPolicy;

/// Name of the optional node config file inside the config dir.
pub const CONFIG_FILE_NAME: &str = "lattice.toml";

/// Default address of the shared HTTP ingress.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8000";

/// The public NGS endpoint, the default leaf remote with an explicit `--creds` (as in wasmCloud's
/// guide); never with the implicit default credential alone.
pub const DEFAULT_LEAF_URL: &str = "tls://connect.ngs.global";

/// Default interval between heartbeats: 1 s, so that with the probes of silent hosts
/// ([`crate::lattice::probe`]) a killed node is forgotten 0.75 s to 1.95 s after its death
/// (silent 1.25 intervals, then two no-responders half an interval apart) and its replicas
/// run elsewhere within 3 s; a node that cannot be probed, a dead machine or a partition (no
/// TCP FIN: the servers keep its interest until their ping timeout) after 3 s at most.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Largest `--max-instances`: each pool slot reserves address space for its memories.
pub const MAX_POOL_INSTANCES: u32 = 10_000;

/// How the node reaches NATS (DESIGN.md §2 "NATS modes"). `Debug` and `Display` show the URL
/// with its password or token redacted ([`redact_url`]).
#[derive(Clone, PartialEq, Eq)]
pub enum NatsMode {
    /// Own nats-server with JetStream, loopback only (no `--creds`, `--leaf-url`, `--nats-url`).
    Standalone,
    /// Own nats-server, without JetStream, as a leaf node of `url`, authenticated by `creds`.
    Leaf {
        /// Remote URL (`--leaf-url`).
        url: String,
        /// Credentials file, checked (exists, parses, mode 0600 or stricter).
        creds: Option<PathBuf>,
    },
    /// No nats-server of our own: connect to `url`.
    External {
        /// Server URL (`--nats-url`).
        url: String,
        /// Credentials file for the node's connection, checked as for leaf mode.
        creds: Option<PathBuf>,
    },
}

impl std::fmt::Debug for NatsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsMode::Standalone => f.write_str("Standalone"),
            NatsMode::Leaf { url, creds } => f
                .debug_struct("Leaf")
                .field("url", &redact_url(url))
                .field("creds", creds)
                .finish(),
            NatsMode::External { url, creds } => f
                .debug_struct("External")
                .field("url", &redact_url(url))
                .field("creds", creds)
                .finish(),
        }
    }
}

/// `standalone`, `leaf node of URL` or `external NATS at URL`, the URL redacted, then
/// ` with creds FILE` when there is one.
impl std::fmt::Display for NatsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let creds = match self {
            NatsMode::Standalone => return f.write_str("standalone"),
            NatsMode::Leaf { url, creds } => {
                write!(f, "leaf node of {}", redact_url(url))?;
                creds
            }
            NatsMode::External { url, creds } => {
                write!(f, "external NATS at {}", redact_url(url))?;
                creds
            }
        };
        match creds {
            Some(creds) => write!(f, " with creds {}", creds.display()),
            None => Ok(()),
        }
    }
}

/// Everything `lattice up` needs, checked: paths absolute, names valid, units explicit.
/// `Debug` shows URLs redacted (through [`NatsMode`]'s).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Directory holding `lattice.toml` and application manifests.
    pub config_dir: PathBuf,
    /// Directory of the node's state (nats-server files, compiled-code cache).
    pub data_dir: PathBuf,
    /// Address of the shared HTTP ingress.
    pub http_addr: SocketAddr,
    /// Lattice name: `[A-Za-z0-9_-]+`, used in NATS subjects and bucket names.
    pub lattice: String,
    /// Explicit `nats-server` executable, if given.
    pub nats_server: Option<PathBuf>,
    /// Client port of the supervised nats-server; `None` picks a free port at start.
    pub nats_port: Option<u16>,
    /// Standalone, leaf or external.
    pub nats_mode: NatsMode,
    /// `--js-domain`: the JetStream domain to use instead of discovering one
    /// ([`crate::nats::discovery`]).
    pub js_domain: Option<String>,
    /// Interval between heartbeats.
    pub heartbeat_interval: Duration,
    /// Friendly node name.
    pub name: String,
    /// Node labels: the user's plus `os`, `arch`, `hostname`.
    pub labels: BTreeMap<String, String>,
    /// Deadline of one HTTP request to a component.
    pub request_timeout: Duration,
    /// Linear-memory cap of one component instance, in bytes.
    pub max_instance_memory_bytes: u64,
    /// Component instances the node's pool holds at once (`--max-instances`).
    pub max_instances: u32,
    /// Concurrent requests admitted per replica of a component.
    pub replica_concurrency: u32,
    /// Deadline of fetching and compiling one component before it starts.
    pub start_timeout: Duration,
    /// Replicas (1..=5, JetStream's range) of the apps bucket and artifact store this node
    /// creates.
    pub store_replicas: usize,
    /// tracing EnvFilter directive.
    pub log_filter: String,
    /// `--ca-file`s (absolute): PEM CA certificates outgoing HTTPS trusts besides the system's
    /// roots; checked when the node starts ([`crate::providers::http_client::Egress::new`]).
    pub ca_files: Vec<PathBuf>,
    /// How this node pulls components from OCI registries: `--registry-creds`,
    /// `--insecure-registry`, the `--ca-file`s and `--allowed-registry`.
    pub registry: crate::reconciler::oci::RegistrySettings,
    /// `--allowed-listen`: where apps may open listeners of their own.
    pub allowed_listen: ListenPolicy,
    /// Which keyvalue buckets links may name here and which keyvalue-sled ones are shared
    /// (`--shared-bucket`, `--allowed-buckets`).
    pub buckets: BucketPolicy,
    /// Warnings about where secrets were given (a password in a URL on the command line or in
    /// a `lattice.toml` others can read), for the node to log once its log is set up.
    pub warnings: Vec<String>,
    /// `--log-format`.
    pub log_format: crate::admin::telemetry::LogFormat,
    /// `--otlp-endpoint`: where traces go, if set (else the standard `OTEL_*` variables).
    pub otlp_endpoint: Option<String>,
    /// `--admin-addr`: where the admin endpoint listens; `None`: `none`, no endpoint and no
    /// metrics.
    pub admin_addr: Option<SocketAddr>,
}

/// The keys of `lattice.toml`: the flags of `lattice up`, by their long names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    lattice: Option<String>,
    nats_server: Option<PathBuf>,
    nats_port: Option<u16>,
    creds: Option<PathBuf>,
    leaf_url: Option<String>,
    js_domain: Option<String>,
    nats_url: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    heartbeat_interval: Option<Duration>,
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default, with = "humantime_serde_opt")]
    request_timeout: Option<Duration>,
    max_instance_memory_mib: Option<u64>,
    max_instances: Option<u32>,
    replica_concurrency: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    start_timeout: Option<Duration>,
    store_replicas: Option<usize>,
    log: Option<String>,
    /// One file or a list; relative to the config dir.
    #[serde(default)]
    ca_file: OneOrMany,
    /// Relative to the config dir.
    registry_creds: Option<PathBuf>,
    insecure_registry: Option<Vec<String>>,
    allowed_registry: Option<Vec<String>>,
    allowed_listen: Option<Vec<String>>,
    shared_bucket: Option<Vec<String>>,
    allowed_buckets: Option<Vec<String>>,
    log_format: Option<crate::admin::telemetry::LogFormat>,
    otlp_endpoint: Option<String>,
    admin_addr: Option<String>,
}

/// `ca-file = "a.pem"` or `ca-file = ["a.pem", "b.pem"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<PathBuf> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(path) => vec![path],
            OneOrMany::Many(paths) => paths,
        }
    }
}

/// `request-timeout = "30s"` in TOML, parsed with humantime.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl NodeConfig {
    /// Resolves flags and env (already merged by clap) with `lattice.toml` and defaults.
    ///
    /// # Errors
    /// An unreadable or invalid `lattice.toml` (named, with the key), a bad label, lattice name
    /// or size, or no way to find a config/data dir.
    pub fn resolve(args: UpArgs) -> anyhow::Result<NodeConfig> {
        let config_dir = absolute(match args.config_dir {
            Some(dir) => dir,
            None => default_dir(
                "CONFIGURATION_DIRECTORY",
                "/etc/lattice",
                "XDG_CONFIG_HOME",
                ".config",
            )?,
        })?;
        let file = read_file_config(&config_dir.join(CONFIG_FILE_NAME))?;

        let data_dir = match args.data_dir.or(file.data_dir) {
            Some(dir) => absolute(dir)?,
            None => default_data_dir()?,
        };
        let http_addr = match args.http_addr.or(file.http_addr) {
            Some(addr) => addr,
            None => DEFAULT_HTTP_ADDR.parse()?,
        };
        let lattice = args
            .lattice
            .or(file.lattice)
            .unwrap_or_else(|| "default".to_owned());
        check_lattice_name(&lattice)?;

        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned());
        let name = args.name.or(file.name).unwrap_or_else(|| hostname.clone());
        ensure!(!name.trim().is_empty(), "--name: must not be empty");

        let mut labels = file.labels;
        for label in &args.labels {
            let (key, value) = parse_label(label)?;
            labels.insert(key, value);
        }
        for (key, value) in &labels {
            check_label_key(key).with_context(|| format!("label {key}={value}"))?;
        }
        labels.insert("os".to_owned(), std::env::consts::OS.to_owned());
        labels.insert("arch".to_owned(), std::env::consts::ARCH.to_owned());
        labels.insert("hostname".to_owned(), hostname);

        let request_timeout = args
            .request_timeout
            .or(file.request_timeout)
            .unwrap_or(Duration::from_secs(30));
        ensure!(
            !request_timeout.is_zero(),
            "--request-timeout: must be more than 0"
        );
        let memory_mib = args
            .max_instance_memory_mib
            .or(file.max_instance_memory_mib)
            .unwrap_or(128);
        ensure!(
            (1..=4096).contains(&memory_mib),
            "--max-instance-memory-mib: {memory_mib} is outside 1..=4096 MiB"
        );
        let max_instances = args
            .max_instances
            .or(file.max_instances)
            .unwrap_or(crate::host::DEFAULT_POOL_INSTANCES);
        ensure!(
            (1..=MAX_POOL_INSTANCES).contains(&max_instances),
            "--max-instances: {max_instances} is outside 1..={MAX_POOL_INSTANCES}"
        );
        let replica_concurrency = args
            .replica_concurrency
            .or(file.replica_concurrency)
            .unwrap_or(64);
        ensure!(
            replica_concurrency > 0,
            "--replica-concurrency: must be at least 1"
        );

        let start_timeout = args
            .start_timeout
            .or(file.start_timeout)
            .unwrap_or(Duration::from_secs(60));
        ensure!(
            !start_timeout.is_zero(),
            "--start-timeout: must be more than 0"
        );
        let store_replicas = args.store_replicas.or(file.store_replicas).unwrap_or(1);
        ensure!(
            (1..=5).contains(&store_replicas),
            "--store-replicas: {store_replicas} is outside 1..=5 (JetStream's replica range)"
        );

        // `credential:NAME` names a systemd credential (crate::admin::credentials), checked as one.
        // Whether the creds are systemd's default credential, taken without being named.
        let mut implicit_creds = false;
        let creds = match (args.creds, file.creds) {
            (Some(path), _) => match crate::admin::credentials::credential_name(&path) {
                Some(name) => Some(credential(name, "--creds")?),
                None => {
                    let path = absolute(path)?;
                    check_creds_file(&path, "--creds")?;
                    Some(path)
                }
            },
            (None, Some(path)) => {
                let key = format!("{} key creds", config_dir.join(CONFIG_FILE_NAME).display());
                match crate::admin::credentials::credential_name(&path) {
                    Some(name) => Some(credential(name, &key)?),
                    None => {
                        let path = config_dir.join(path);
                        check_creds_file(&path, &key)?;
                        Some(path)
                    }
                }
            }
            (None, None) => match crate::admin::credentials::default_credential() {
                Some(path) => {
                    let origin = format!(
                        "the default credential (${}/{})",
                        crate::admin::credentials::DIRECTORY_VAR,
                        crate::admin::credentials::DEFAULT_CREDENTIAL
                    );
                    check_credential(&path, &origin)?;
                    implicit_creds = true;
                    Some(path)
                }
                None => None,
            },
        };
        let file_path = config_dir.join(CONFIG_FILE_NAME);
        let mut warnings = Vec::new();
        let nats_url = url_setting(
            (args.nats_url, file.nats_url),
            ("--nats-url", "LATTICE_NATS_URL", "nats-url"),
            &file_path,
            &mut warnings,
        )?;
        let leaf_url = url_setting(
            (args.leaf_url, file.leaf_url),
            ("--leaf-url", "LATTICE_LEAF_URL", "leaf-url"),
            &file_path,
            &mut warnings,
        )?;
        if let Some((url, origin)) = &nats_url {
            crate::nats::urls::check_nats_url(url)
                .with_context(|| format!("{origin} {}", redact_url(url)))?;
        }
        if let Some((url, origin)) = &leaf_url {
            crate::nats::urls::check_leaf_url(url)
                .with_context(|| format!("{origin} {}", redact_url(url)))?;
        }
        let nats_mode = match (nats_url.map(|(url, _)| url), leaf_url.map(|(url, _)| url)) {
            (Some(_), Some(_)) => bail!(
                "--nats-url and --leaf-url: choose one (--nats-url uses an existing NATS, --leaf-url makes the node's own nats-server a leaf node)"
            ),
            (Some(url), None) => NatsMode::External { url, creds },
            (None, Some(url)) => NatsMode::Leaf { url, creds },
            // The default credential alone does not say which lattice to join: without a URL it
            // would make the node a leaf of DEFAULT_LEAF_URL (a public service).
            (None, None) if implicit_creds => bail!(
                "the default credential ${}/{} (the unit's LoadCredential={}:…) is loaded but no \
                 leaf-url is given: set --leaf-url (env LATTICE_LEAF_URL, lattice.toml key \
                 leaf-url) or --nats-url, or name the credential with --creds credential:{} to \
                 join {DEFAULT_LEAF_URL}",
                crate::admin::credentials::DIRECTORY_VAR,
                crate::admin::credentials::DEFAULT_CREDENTIAL,
                crate::admin::credentials::DEFAULT_CREDENTIAL,
                crate::admin::credentials::DEFAULT_CREDENTIAL,
            ),
            (None, None) => match creds {
                Some(creds) => NatsMode::Leaf {
                    url: DEFAULT_LEAF_URL.to_owned(),
                    creds: Some(creds),
                },
                None => NatsMode::Standalone,
            },
        };
        // Flags replace the file's list, as for every other key.
        let registry_args = args.registry;
        let ca_files = if registry_args.ca_files.is_empty() {
            file.ca_file
                .into_vec()
                .into_iter()
                .map(|path| config_dir.join(path))
                .collect()
        } else {
            registry_args
                .ca_files
                .into_iter()
                .map(absolute)
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        let registry = crate::reconciler::oci::RegistrySettings {
            creds_file: match registry_args.registry_creds {
                Some(path) => Some(absolute(path)?),
                None => file.registry_creds.map(|path| config_dir.join(path)),
            },
            insecure: if registry_args.insecure_registries.is_empty() {
                file.insecure_registry.unwrap_or_default()
            } else {
                registry_args.insecure_registries
            },
            ca_files: ca_files.clone(),
            allowed: if args.allowed_registries.is_empty() {
                file.allowed_registry.unwrap_or_default()
            } else {
                args.allowed_registries.clone()
            },
        };
        let js_domain = args.js_domain.or(file.js_domain);
        if let Some(domain) = &js_domain {
            Name::check(domain).map_err(|e| anyhow::anyhow!("--js-domain {domain:?}: {e}"))?;
        }
        let (heartbeat_interval, interval_from) =
            match (args.heartbeat_interval, file.heartbeat_interval) {
                (Some(interval), _) => (interval, "--heartbeat-interval".to_owned()),
                (None, Some(interval)) => (
                    interval,
                    format!(
                        "{} key heartbeat-interval",
                        config_dir.join(CONFIG_FILE_NAME).display()
                    ),
                ),
                (None, None) => (
                    DEFAULT_HEARTBEAT_INTERVAL,
                    "--heartbeat-interval".to_owned(),
                ),
            };
        // Others drop heartbeats announcing an interval outside this range (PROTOCOL.md §Events).
        let interval_ms = crate::lattice::membership::HEARTBEAT_INTERVAL_MS;
        ensure!(
            u64::try_from(heartbeat_interval.as_millis()).is_ok_and(|ms| interval_ms.contains(&ms)),
            "{interval_from} {}: must be from {}ms to {}ms",
            humantime::format_duration(heartbeat_interval),
            interval_ms.start(),
            interval_ms.end()
        );

        let allowed_listen = match (args.allowed_listen, file.allowed_listen) {
            (flags, _) if !flags.is_empty() => listen_policy(&flags, "--allowed-listen")?,
            (_, Some(rules)) => listen_policy(
                &rules,
                &format!(
                    "{} key allowed-listen",
                    config_dir.join(CONFIG_FILE_NAME).display()
                ),
            )?,
            (_, None) => ListenPolicy::loopback(),
        };
        let buckets = bucket_policy(
            (args.shared_buckets, args.allowed_buckets),
            (file.shared_bucket, file.allowed_buckets),
            &config_dir.join(CONFIG_FILE_NAME),
        )?;

        let admin_addr = match (args.admin_addr, file.admin_addr) {
            (Some(addr), _) => admin_addr(&addr, "--admin-addr")?,
            (None, Some(addr)) => admin_addr(
                &addr,
                &format!(
                    "{} key admin-addr",
                    config_dir.join(CONFIG_FILE_NAME).display()
                ),
            )?,
            (None, None) => Some(crate::admin::DEFAULT_ADDR),
        };

        Ok(NodeConfig {
            config_dir,
            data_dir,
            http_addr,
            lattice,
            nats_server: args.nats_server.or(file.nats_server),
            nats_port: args.nats_port.or(file.nats_port),
            nats_mode,
            js_domain,
            heartbeat_interval,
            name,
            labels,
            request_timeout,
            max_instance_memory_bytes: memory_mib * 1024 * 1024,
            max_instances,
            replica_concurrency,
            start_timeout,
            store_replicas,
            log_filter: args.log.or(file.log).unwrap_or_else(|| "info".to_owned()),
            ca_files,
            registry,
            allowed_listen,
            buckets,
            warnings,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            otlp_endpoint: args.otlp_endpoint.or(file.otlp_endpoint),
            admin_addr,
        })
    }
}

/// `--admin-addr`'s value from `origin`: `none` (off) or a socket address.
///
/// # Errors
/// Neither: the error names `origin` and the value.
fn admin_addr(value: &str, origin: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    value.trim().parse().map(Some).map_err(|e| {
        anyhow::anyhow!(
            "{origin} {value:?}: {e}; expected ADDRESS:PORT (e.g. 127.0.0.1:9464) or none"
        )
    })
}

/// The URL of a setting given as flag or env var (`arg`) or as key `names.2` of `file_path`
/// (`file`), with where it came from (`--nats-url`, `env LATTICE_NATS_URL`, `<file> key
/// nats-url`). A URL carrying a password or token adds a warning to `warnings` when it came
/// from the command line (every local user sees it in the process list) or from a file group
/// or others can read. A flag and its env var both arrive through clap: a value equal to the
/// env var's is taken to come from it.
///
/// # Errors
/// `file_path` cannot be read for its mode.
fn url_setting(
    (arg, file): (Option<SecretUrl>, Option<String>),
    (flag, env, key): (&str, &str, &str),
    file_path: &Path,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Option<(String, String)>> {
    use std::os::unix::fs::PermissionsExt as _;
    let (url, origin) = match (arg, file) {
        (Some(url), _) => {
            let url = url.into_inner();
            let from_env = std::env::var(env).is_ok_and(|value| value == url);
            let origin = if from_env {
                format!("env {env}")
            } else {
                flag.to_owned()
            };
            if !from_env && url_credentials(&url).is_some() {
                warnings.push(format!(
                    "{flag} {}: its password or token is visible in the process list to every \
                     local user; use {env} or a {CONFIG_FILE_NAME} readable by this user only",
                    redact_url(&url)
                ));
            }
            (url, origin)
        }
        (None, Some(url)) => {
            let origin = format!("{} key {key}", file_path.display());
            if url_credentials(&url).is_some() {
                let mode = std::fs::metadata(file_path)
                    .with_context(|| format!("{}: cannot read its mode", file_path.display()))?
                    .permissions()
                    .mode()
                    & 0o777;
                if mode & 0o077 != 0 {
                    warnings.push(format!(
                        "{origin} {}: group or others can read its password or token (mode \
                         {mode:o}): run `chmod 600 {}`",
                        redact_url(&url),
                        file_path.display()
                    ));
                }
            }
            (url, origin)
        }
        (None, None) => return Ok(None),
    };
    Ok(Some((url, origin)))
}

/// The `--allowed-listen` rules `rules` (from `origin`, a flag or a file key); an empty list
/// allows no app listener.
///
/// # Errors
/// A rule that does not parse, named with `origin`.
fn listen_policy(rules: &[String], origin: &str) -> anyhow::Result<ListenPolicy> {
    let rules = rules
        .iter()
        .map(|r| r.parse::<ListenRule>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| origin.to_owned())?;
    Ok(ListenPolicy::new(rules))
}

/// Checks a NATS credentials file before anything starts: it exists, parses as a creds file
/// (user JWT and nkey seed, the format of `nsc` and NGS), and only its owner can access it.
///
/// # Errors
/// Names the file, where it was given (`origin`, e.g. `--creds`) and the problem.
pub fn check_creds_file(path: &Path, origin: &str) -> anyhow::Result<()> {
    check_creds_content(path, origin, true)
}

/// [`check_creds_file`], with the mode check only when `private` says so.
fn check_creds_content(path: &Path, origin: &str, private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{origin} {}: cannot read it", path.display()))?;
    ensure!(
        meta.is_file(),
        "{origin} {}: not a regular file",
        path.display()
    );
    let mode = meta.permissions().mode() & 0o777;
    ensure!(
        !private || mode & 0o077 == 0,
        "{origin} {}: group or others can access it (mode {mode:o}); it holds a secret key: run `chmod 600 {}`",
        path.display(),
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{origin} {}: cannot read it", path.display()))?;
    async_nats::ConnectOptions::new()
        .credentials(&text)
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!(
                "{origin} {}: not a NATS credentials file: {e}",
                path.display()
            )
        })
}

/// The systemd credential `name` (`credential:NAME`, given at `origin`), checked: its path.
///
/// # Errors
/// [`crate::admin::credentials::CredentialError`], or what [`check_credential`] finds.
fn credential(name: &str, origin: &str) -> anyhow::Result<PathBuf> {
    let path = crate::admin::credentials::resolve(name, origin)?;
    check_credential(&path, &format!("{origin} credential:{name}"))?;
    Ok(path)
}

/// Checks a NATS credentials file that systemd handed over (`$CREDENTIALS_DIRECTORY/NAME`): it
/// is a regular file this process can read and it parses as a creds file. Its mode is not
/// checked: the credentials directory, private to the service, decides who can read it
/// ([`crate::admin::credentials`]).
///
/// # Errors
/// Names the file, where it was given (`origin`) and the problem.
pub fn check_credential(path: &Path, origin: &str) -> anyhow::Result<()> {
    check_creds_content(path, origin, false)
}

/// The default data dir: $STATE_DIRECTORY, else /var/lib/lattice as root, else
/// $XDG_DATA_HOME/lattice (or ~/.local/share/lattice).
///
/// # Errors
/// None of these can be determined.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    absolute(default_dir(
        "STATE_DIRECTORY",
        "/var/lib/lattice",
        "XDG_DATA_HOME",
        ".local/share",
    )?)
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // toml's error quotes the offending line, which may hold a URL with its password.
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: invalid node config: {}",
            path.display(),
            crate::nats::redact::redact_urls_in(&e.to_string())
        )
    })
}

/// systemd's directory variable, else the system path as root, else the XDG path.
fn default_dir(
    systemd_var: &str,
    system: &str,
    xdg_var: &str,
    home_rel: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(systemd_var).filter(|d| !d.is_empty()) {
        // systemd may list several directories separated by ':'; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return Ok(PathBuf::from(first));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from(system));
    }
    if let Some(dir) = std::env::var_os(xdg_var).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("lattice"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(home_rel).join("lattice")),
        None => {
            bail!("cannot choose a default directory: set ${xdg_var} or HOME, or pass the flag")
        }
    }
}

fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))
}

/// A lattice name goes into NATS subjects and JetStream bucket names: it is a [`Name`].
///
/// # Errors
/// The name is not a [`Name`] (empty, or another character than `[A-Za-z0-9_-]`); the message
/// names `--lattice` and the reason.
pub fn check_lattice_name(name: &str) -> anyhow::Result<()> {
    Name::check(name).map_err(|e| {
        anyhow::anyhow!("--lattice {name:?}: {e} (it names NATS subjects and buckets)")
    })
}

/// The node's [`BucketPolicy`] from `--shared-bucket` and `--allowed-buckets` (`flags`), else the
/// `shared-bucket` and `allowed-buckets` lists of `lattice.toml` (`file`, at `path`): a flag
/// given at least once replaces the file's list.
///
/// # Errors
/// A value that is not a bucket name a link could give, or not a glob pattern; the message names
/// the flag, or the file and key, and the value.
fn bucket_policy(
    flags: (Vec<String>, Vec<String>),
    file: (Option<Vec<String>>, Option<Vec<String>>),
    path: &Path,
) -> anyhow::Result<BucketPolicy> {
    let origin = |flag: &str, key: &str, from_flags: bool| {
        if from_flags {
            flag.to_owned()
        } else {
            format!("{} key {key}", path.display())
        }
    };
    let (shared, shared_from_flags) = match (flags.0, file.0) {
        (flags, _) if !flags.is_empty() => (flags, true),
        (_, file) => (file.unwrap_or_default(), false),
    };
    let (allowed, allowed_from_flags) = match (flags.1, file.1) {
        (flags, _) if !flags.is_empty() => (Some(flags), true),
        (_, file) => (file, false),
    };
    let mut policy = BucketPolicy::default();
    for text in shared {
        let name = BucketPolicy::parse_shared(&text).map_err(|reason| {
            let at = origin("--shared-bucket", "shared-bucket", shared_from_flags);
            anyhow::anyhow!("{at}: {reason}")
        })?;
        policy.shared_sled.insert(name);
    }
    if let Some(allowed) = allowed {
        let patterns = allowed
            .iter()
            .map(|text| {
                BucketPolicy::parse_pattern(text).map_err(|reason| {
                    let at = origin("--allowed-buckets", "allowed-buckets", allowed_from_flags);
                    anyhow::anyhow!("{at} {text:?}: {reason}")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        policy.allowed_nats = Some(patterns);
    }
    Ok(policy)
}

/// Parses `KEY=VALUE` of `--label`.
fn parse_label(text: &str) -> anyhow::Result<(String, String)> {
    let Some((key, value)) = text.split_once('=') else {
        bail!("--label {text:?}: expected KEY=VALUE");
    };
    let key = key.trim();
    check_label_key(key).with_context(|| format!("--label {text:?}"))?;
    Ok((key.to_owned(), value.trim().to_owned()))
}

/// Label keys are not [`Name`]s on purpose: they also take `.` and `/` (`topology.kubernetes.io/zone`)
/// and never become a subject token (labels travel in heartbeat payloads).
fn check_label_key(key: &str) -> anyhow::Result<()> {
    ensure!(
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')),
        "label key {key:?}: use letters, digits, '-', '_', '.' and '/' only"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> UpArgs {
        UpArgs {
            config_dir: Some(dir.to_path_buf()),
            data_dir: Some(dir.join("data")),
            ..UpArgs::default()
        }
    }

    #[test]
    fn flags_win_over_file_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "http-addr = \"127.0.0.1:9000\"\nlattice = \"blue\"\nrequest-timeout = \"2s\"\n[labels]\nzone = \"a\"\n",
        )
        .unwrap();
        let mut a = args(dir.path());
        a.lattice = Some("green".into());
        a.labels = vec!["zone=b".into(), "tier=web".into()];
        let c = NodeConfig::resolve(a).unwrap();
        assert_eq!(c.http_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.lattice, "green");
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert_eq!(c.labels["zone"], "b");
        assert_eq!(c.labels["tier"], "web");
        assert_eq!(c.labels["os"], std::env::consts::OS);
        assert_eq!(c.max_instance_memory_bytes, 128 * 1024 * 1024);
        assert_eq!(c.replica_concurrency, 64);
    }

    #[test]
    fn ca_files_come_from_the_file_relative_to_the_config_dir_or_from_flags() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            NodeConfig::resolve(args(dir.path()))
                .unwrap()
                .ca_files
                .is_empty()
        );
        std::fs::write(dir.path().join(CONFIG_FILE_NAME), "ca-file = \"ca.pem\"\n").unwrap();
        let c = NodeConfig::resolve(args(dir.path())).unwrap();
        assert_eq!(c.ca_files, vec![dir.path().join("ca.pem")]);
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "ca-file = [\"a.pem\", \"/etc/b.pem\"]\n",
        )
        .unwrap();
        let c = NodeConfig::resolve(args(dir.path())).unwrap();
        assert_eq!(
            c.ca_files,
            vec![dir.path().join("a.pem"), PathBuf::from("/etc/b.pem")]
        );
        let mut a = args(dir.path());
        a.registry.ca_files = vec![PathBuf::from("/x/flag.pem")];
        let c = NodeConfig::resolve(a).unwrap();
        assert_eq!(c.ca_files, vec![PathBuf::from("/x/flag.pem")]);
    }

    #[test]
    fn allowed_registries_come_from_the_file_or_from_flags() {
        let dir = tempfile::tempdir().unwrap();
        let c = NodeConfig::resolve(args(dir.path())).unwrap();
        assert!(c.registry.allowed.is_empty());
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "allowed-registry = [\"ghcr.io\"]\n",
        )
        .unwrap();
        let c = NodeConfig::resolve(args(dir.path())).unwrap();
        assert_eq!(c.registry.allowed, vec!["ghcr.io".to_owned()]);
        let mut a = args(dir.path());
        a.allowed_registries = vec!["127.0.0.1:5000".into()];
        let c = NodeConfig::resolve(a).unwrap();
        assert_eq!(c.registry.allowed, vec!["127.0.0.1:5000".to_owned()]);
    }

    #[test]
    fn max_instances_comes_from_the_file_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let c = NodeConfig::resolve(args(dir.path())).unwrap();
        assert_eq!(c.max_instances, crate::host::DEFAULT_POOL_INSTANCES);
        std::fs::write(dir.path().join(CONFIG_FILE_NAME), "max-instances = 8\n").unwrap();
        assert_eq!(
            NodeConfig::resolve(args(dir.path())).unwrap().max_instances,
            8
        );
        let mut a = args(dir.path());
        a.max_instances = Some(0);
        let err = format!("{:#}", NodeConfig::resolve(a).unwrap_err());
        assert!(err.contains("--max-instances"), "{err}");
    }

    #[test]
    fn a_toml_error_quoting_a_url_shows_no_password() {
        let dir = tempfile::tempdir().unwrap();
        // A misspelt key: toml's error quotes the line.
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "nats_url = \"nats://u:s3cret@hub:4222\"\n",
        )
        .unwrap();
        let err = format!("{:#}", NodeConfig::resolve(args(dir.path())).unwrap_err());
        assert!(err.contains("invalid node config"), "{err}");
        assert!(err.contains("nats://u:***@hub:4222"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn bad_inputs_name_the_flag_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.labels = vec!["novalue".into()];
        let err = format!("{:#}", NodeConfig::resolve(a).unwrap_err());
        assert!(err.contains("--label \"novalue\""), "{err}");

        let mut a = args(dir.path());
        a.lattice = Some("a.b".into());
        let err = format!("{:#}", NodeConfig::resolve(a).unwrap_err());
        assert!(err.contains("--lattice"), "{err}");

        std::fs::write(dir.path().join(CONFIG_FILE_NAME), "http-adr = \"x\"\n").unwrap();
        let err = format!("{:#}", NodeConfig::resolve(args(dir.path())).unwrap_err());
        assert!(
            err.contains("lattice.toml") && err.contains("http-adr"),
            "{err}"
        );
    }

    #[test]
    fn bucket_flags_replace_the_files_lists_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c = NodeConfig::resolve(args(dir.path())).unwrap();
        assert_eq!(c.buckets, BucketPolicy::default());

        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "shared-bucket = [\"cache\", \"sessions\"]\nallowed-buckets = [\"app_*\"]\n",
        )
        .unwrap();
        let c = NodeConfig::resolve(args(dir.path())).unwrap();
        assert!(c.buckets.is_shared("cache") && c.buckets.is_shared("sessions"));
        assert!(c.buckets.check_nats("app_x").is_ok());
        assert!(c.buckets.check_nats("other").is_err());

        let mut a = args(dir.path());
        a.shared_buckets = vec!["only".into()];
        a.allowed_buckets = vec!["team_*".into(), "x".into()];
        let c = NodeConfig::resolve(a).unwrap();
        assert!(c.buckets.is_shared("only") && !c.buckets.is_shared("cache"));
        assert!(c.buckets.check_nats("team_a").is_ok() && c.buckets.check_nats("app_x").is_err());

        let mut a = args(dir.path());
        a.shared_buckets = vec!["lattice_default_apps".into()];
        let err = format!("{:#}", NodeConfig::resolve(a).unwrap_err());
        assert!(
            err.contains("--shared-bucket") && err.contains("reserved"),
            "{err}"
        );
        std::fs::write(dir.path().join(CONFIG_FILE_NAME), "allowed-buckets = []\n").unwrap();
        let c = NodeConfig::resolve(args(dir.path())).unwrap();
        let reason = c.buckets.check_nats("anything").unwrap_err();
        assert!(reason.contains("--allowed-buckets: none"), "{reason}");
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "allowed-buckets = [\"a[\"]\n",
        )
        .unwrap();
        let err = format!("{:#}", NodeConfig::resolve(args(dir.path())).unwrap_err());
        assert!(
            err.contains("lattice.toml key allowed-buckets") && err.contains("glob"),
            "{err}"
        );
    }

    fn creds_text() -> String {
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.c2ln\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    }

    #[test]
    fn credentials_are_not_held_to_the_mode_check_of_creds_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("default.creds");
        std::fs::write(&path, creds_text()).unwrap();
        // As systemd hands a credential to a DynamicUser service: 0440, an ACL for the user.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        check_credential(&path, "--creds credential:default.creds").unwrap();
        let err = check_creds_file(&path, "--creds").unwrap_err().to_string();
        assert!(err.contains("mode 440"), "{err}");
        std::fs::write(dir.path().join("junk"), "junk").unwrap();
        let err = check_credential(&dir.path().join("junk"), "--creds credential:junk")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a NATS credentials file"), "{err}");
    }

    #[test]
    fn creds_files_are_checked_before_anything_starts() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.creds");
        let with_creds = |path: &Path| {
            let mut a = args(dir.path());
            a.creds = Some(path.to_path_buf());
            a.leaf_url = Some("nats-leaf://127.0.0.1:7422".into());
            NodeConfig::resolve(a).map_err(|e| format!("{e:#}"))
        };

        let err = with_creds(&path).unwrap_err();
        assert!(
            err.contains("user.creds") && err.contains("cannot read"),
            "{err}"
        );

        std::fs::write(&path, creds_text()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = with_creds(&path).unwrap_err();
        assert!(
            err.contains("user.creds") && err.contains("mode 640"),
            "{err}"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = with_creds(&path).unwrap();
        assert_eq!(
            config.nats_mode,
            NatsMode::Leaf {
                url: "nats-leaf://127.0.0.1:7422".into(),
                creds: Some(path.clone())
            }
        );

        std::fs::write(&path, "just some text\n").unwrap();
        let err = with_creds(&path).unwrap_err();
        assert!(
            err.contains("user.creds") && err.contains("not a NATS credentials file"),
            "{err}"
        );
    }

    #[test]
    fn nats_modes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            NodeConfig::resolve(args(dir.path())).unwrap().nats_mode,
            NatsMode::Standalone
        );
        let mut a = args(dir.path());
        a.nats_url = Some("nats://10.0.0.1:4222".into());
        assert_eq!(
            NodeConfig::resolve(a.clone()).unwrap().nats_mode,
            NatsMode::External {
                url: "nats://10.0.0.1:4222".into(),
                creds: None
            }
        );
        a.leaf_url = Some("nats-leaf://x:7422".into());
        let err = format!("{:#}", NodeConfig::resolve(a).unwrap_err());
        assert!(err.contains("--nats-url and --leaf-url"), "{err}");
    }

    #[test]
    fn heartbeat_interval_is_from_1s_to_60s() {
        let dir = tempfile::tempdir().unwrap();
        for (interval, ok) in [(999, false), (1_000, true), (60_000, true), (60_001, false)] {
            let mut a = args(dir.path());
            a.heartbeat_interval = Some(Duration::from_millis(interval));
            match NodeConfig::resolve(a) {
                Ok(c) => {
                    assert!(ok, "{interval} ms accepted");
                    assert_eq!(c.heartbeat_interval, Duration::from_millis(interval));
                }
                Err(e) => {
                    let err = format!("{e:#}");
                    assert!(!ok, "{interval} ms refused: {err}");
                    assert!(
                        err.contains("--heartbeat-interval") && err.contains("1000ms to 60000ms"),
                        "{err}"
                    );
                }
            }
        }
        // From the file, the error names the file and key, as for every other key.
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "heartbeat-interval = \"90s\"\n",
        )
        .unwrap();
        let err = format!("{:#}", NodeConfig::resolve(args(dir.path())).unwrap_err());
        assert!(
            err.contains("lattice.toml key heartbeat-interval 1m 30s")
                && !err.contains("--heartbeat-interval"),
            "{err}"
        );
    }

    #[test]
    fn allowed_listen_comes_from_flags_else_the_file_else_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let c = NodeConfig::resolve(args(dir.path())).unwrap();
        assert_eq!(c.allowed_listen, ListenPolicy::loopback());
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "allowed-listen = [\"0.0.0.0:8080\", \"[::1]\"]\n",
        )
        .unwrap();
        let c = NodeConfig::resolve(args(dir.path())).unwrap();
        assert_eq!(c.allowed_listen.to_string(), "0.0.0.0:8080, [::1]");
        let mut a = args(dir.path());
        a.allowed_listen = vec!["*:9000-9100".into()];
        let c = NodeConfig::resolve(a).unwrap();
        assert_eq!(c.allowed_listen.to_string(), "*:9000-9100");

        let mut a = args(dir.path());
        a.allowed_listen = vec!["localhost:80".into()];
        let err = format!("{:#}", NodeConfig::resolve(a).unwrap_err());
        assert!(
            err.contains("--allowed-listen") && err.contains("\"localhost:80\""),
            "{err}"
        );
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "allowed-listen = [\"10.0.0.1/8\"]\n",
        )
        .unwrap();
        let err = format!("{:#}", NodeConfig::resolve(args(dir.path())).unwrap_err());
        assert!(
            err.contains("lattice.toml key allowed-listen") && err.contains("host bits"),
            "{err}"
        );
    }

    #[test]
    fn nats_urls_are_shown_redacted_in_debug_and_display() {
        let dir = tempfile::tempdir().unwrap();
        for (url, shown) in [
            (
                "u:it's a \"secret\"<x>@10.0.0.1:4222",
                "u:***@10.0.0.1:4222",
            ),
            (
                "nats://u:p'secret@10.0.0.1:4222",
                "nats://u:***@10.0.0.1:4222",
            ),
            (
                "nats://secret-token@10.0.0.1:4222",
                "nats://***@10.0.0.1:4222",
            ),
        ] {
            let mut a = args(dir.path());
            a.nats_url = Some(url.into());
            let args_debug = format!("{a:?}");
            let config = NodeConfig::resolve(a).unwrap();
            for text in [
                args_debug,
                format!("{config:?}"),
                format!("{:?}", config.nats_mode),
                config.nats_mode.to_string(),
            ] {
                assert!(!text.contains("secret"), "{text}");
                assert!(text.contains(shown), "{text}");
            }
        }
        let mut a = args(dir.path());
        a.leaf_url = Some("nats-leaf://u:secret@hub:7422".into());
        let mode = NodeConfig::resolve(a).unwrap().nats_mode;
        assert_eq!(mode.to_string(), "leaf node of nats-leaf://u:***@hub:7422");
        assert!(!format!("{mode:?}").contains("secret"));
    }

    #[test]
    fn unparsable_urls_are_refused_naming_the_flag_without_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.leaf_url = Some("nats-leaf://u:se cret@hub:7422".into());
        let err = format!("{:#}", NodeConfig::resolve(a).unwrap_err());
        assert!(
            err.starts_with("--leaf-url nats-leaf://u:***@hub:7422: ") && !err.contains("cret"),
            "{err}"
        );
        let mut a = args(dir.path());
        a.nats_url = Some("nats://u:secret@hub:port".into());
        let err = format!("{:#}", NodeConfig::resolve(a).unwrap_err());
        assert!(
            err.starts_with("--nats-url nats://u:***@hub:port: ") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn a_password_on_the_command_line_or_in_a_readable_file_is_warned_about() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.nats_url = Some("nats://u:secret@10.0.0.1:4222".into());
        let warnings = NodeConfig::resolve(a).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("--nats-url nats://u:***@10.0.0.1:4222:")
                && warnings[0].contains("visible in the process list")
                && warnings[0].contains("LATTICE_NATS_URL")
                && !warnings[0].contains("secret"),
            "{warnings:?}"
        );
        let mut a = args(dir.path());
        a.nats_url = Some("nats://10.0.0.1:4222".into());
        assert!(NodeConfig::resolve(a).unwrap().warnings.is_empty());

        let file = dir.path().join(CONFIG_FILE_NAME);
        std::fs::write(&file, "leaf-url = \"nats-leaf://tok@hub:7422\"\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warnings = NodeConfig::resolve(args(dir.path())).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("lattice.toml key leaf-url nats-leaf://***@hub:7422")
                && warnings[0].contains("mode 644")
                && warnings[0].contains("chmod 600"),
            "{warnings:?}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            NodeConfig::resolve(args(dir.path()))
                .unwrap()
                .warnings
                .is_empty()
        );
    }
}
