//! Command-line definitions (clap) only: every flag, its env var `LATTICE_*` and units in its help.
//!
//! Values are resolved into a checked [`crate::config::NodeConfig`] by `config.rs`; nothing here
//! reads files or applies defaults that `lattice.toml` could override.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::admin::telemetry::LogFormat;
use crate::nats::redact::SecretUrl;

/// `lattice`: run WebAssembly components across many machines.
#[derive(Debug, Parser)]
#[command(name = "lattice", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `lattice`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run this machine as a node of the lattice, in the foreground (Ctrl-C or SIGTERM stop it).
    Up(Box<UpArgs>),
    /// Show the lattice: its hosts or what runs where. Talks to any node of the lattice.
    Get(GetArgs),
    /// Deploy, update, undeploy and inspect applications (wadm manifests) lattice-wide.
    App(AppArgs),
    /// Upload a component to an OCI registry as a CNCF wasm artifact (`application/wasm`
    /// layer, `application/vnd.wasm.config.v0+json` config) and print its manifest's digest;
    /// a manifest's `image` can then name it.
    Push(PushArgs),
    /// Write a starter config dir: `lattice.toml` with every key commented and one example
    /// manifest. Overwrites nothing.
    Init(crate::init::InitArgs),
}

/// `lattice app …`.
#[derive(Debug, Clone, Args)]
pub struct AppArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AppCommand,
}

/// The things `lattice app` does.
#[derive(Debug, Clone, Subcommand)]
pub enum AppCommand {
    /// Validate a manifest, upload its component files to the lattice's artifact store and store
    /// it as the deployed version of its app (an update, rolling, if the app exists).
    Deploy {
        /// The manifest (wadm `core.oam.dev/v1beta1` Application, YAML).
        file: PathBuf,
        /// Version to store it as [default: `metadata.annotations.version`, else one made from
        /// the manifest's content].
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
        /// JetStream domain of the lattice's buckets, for uploading the component files
        /// [default: the one the answering node found and uses].
        #[arg(long, env = "LATTICE_JS_DOMAIN", value_name = "DOMAIN")]
        js_domain: Option<String>,
        /// Resolve the tags of OCI images again. Without it a component whose `image` is the
        /// reference its deployed version pinned keeps that digest, wherever the tag moved.
        #[arg(long)]
        refresh: bool,
        /// How to reach OCI registries.
        #[command(flatten)]
        registry: RegistryArgs,
        /// How to reach the lattice.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove an app, every version of it, from the lattice: its replicas stop on every node.
    Undeploy {
        /// App name.
        name: String,
        /// How to reach the lattice.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every app with its deployed version and state.
    List {
        /// How to reach the lattice.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One app's state: deployed, reconciling or failed (with the reason), and per component
    /// the desired and running replicas and the nodes running them.
    Status {
        /// App name.
        name: String,
        /// How to reach the lattice.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One app's stored versions, oldest first.
    History {
        /// App name.
        name: String,
        /// How to reach the lattice.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `lattice push REF FILE.wasm`.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Where to: `REGISTRY/REPO:TAG` (`oci://` optional).
    pub reference: String,
    /// The component (`.wasm`), at most 256 MiB.
    pub file: PathBuf,
    /// How to reach the registry.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// How the CLI reaches OCI registries (a node's are flags of `lattice up` of the same names).
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// Docker `config.json` with registry credentials (`auths`), read before
    /// `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`) [default: only those].
    #[arg(long, env = "LATTICE_REGISTRY_CREDS", value_name = "FILE")]
    pub registry_creds: Option<PathBuf>,
    /// A registry (`HOST` or `HOST:PORT`, as references name it) reached over plain HTTP;
    /// repeatable (env: comma-separated). `localhost` too only when listed [default: none].
    #[arg(
        long = "insecure-registry",
        env = "LATTICE_INSECURE_REGISTRY",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// PEM file of CA certificates trusted besides the system's roots, by OCI registries and,
    /// on `lattice up`, by components' outgoing HTTPS; repeatable (env: comma-separated), each
    /// file may hold several certificates.
    #[arg(
        long = "ca-file",
        env = "LATTICE_CA_FILE",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub ca_files: Vec<PathBuf>,
}

impl RegistryArgs {
    /// The settings these flags give.
    pub fn settings(&self) -> crate::reconciler::oci::RegistrySettings {
        crate::reconciler::oci::RegistrySettings {
            creds_file: self.registry_creds.clone(),
            insecure: self.insecure_registries.clone(),
            ca_files: self.ca_files.clone(),
            allowed: Vec::new(),
        }
    }
}

/// `lattice get …`.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// What to show.
    #[command(subcommand)]
    pub what: GetCommand,
}

/// The things `lattice get` shows.
#[derive(Debug, Clone, Subcommand)]
pub enum GetCommand {
    /// The hosts (nodes) of the lattice: id, name, labels, uptime, leaf uplink.
    Hosts {
        /// How to reach the lattice.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The components and their replicas on each host.
    Inventory {
        /// Only this host: its id or name.
        host: Option<String>,
        /// How to reach the lattice.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Output format of client commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    #[default]
    Table,
    /// JSON for programs (the `response` of the control API's reply, see PROTOCOL.md).
    Json,
}

/// How a client command reaches the lattice.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// NATS server to talk through [default: the local node's, as recorded in its data dir].
    #[arg(
        long,
        env = "LATTICE_NATS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub nats_url: Option<SecretUrl>,

    /// Data dir of the local node whose NATS to use when --nats-url is not given.
    /// Default: as for `lattice up`.
    #[arg(long, env = "LATTICE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// NATS credentials file for --nats-url.
    #[arg(
        long,
        env = "LATTICE_CREDS",
        value_name = "FILE",
        hide_env_values = true
    )]
    pub creds: Option<PathBuf>,

    /// Name of the lattice.
    #[arg(
        long,
        env = "LATTICE_LATTICE",
        value_name = "NAME",
        default_value = "default"
    )]
    pub lattice: String,

    /// How long to wait for the lattice to answer, e.g. `5s` [default: 5s; 60s for
    /// `app deploy`, which compiles the components to check them].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Flags of `lattice up`. Each one can also be given as an env var `LATTICE_<FLAG>` or as a key
/// (the flag's name, e.g. `http-addr`) in `lattice.toml` in the config dir; flag > env > file.
#[derive(Debug, Clone, Default, Args)]
pub struct UpArgs {
    /// Directory of `lattice.toml` and the application manifests (`*.yaml`, `*.yml`) to deploy.
    /// Default: $CONFIGURATION_DIRECTORY, else /etc/lattice as root, else $XDG_CONFIG_HOME/lattice.
    #[arg(long, env = "LATTICE_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// Directory of the node's state: nats-server config and JetStream store, compiled-code cache.
    /// Default: $STATE_DIRECTORY, else /var/lib/lattice as root, else $XDG_DATA_HOME/lattice.
    #[arg(long, env = "LATTICE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address of the HTTP ingress shared by all apps routed by `path`/`host`
    /// [default: 127.0.0.1:8000].
    #[arg(long, env = "LATTICE_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Name of the lattice: prefixes every NATS subject and bucket [default: default].
    #[arg(long, env = "LATTICE_LATTICE", value_name = "NAME")]
    pub lattice: Option<String>,

    /// Path of the `nats-server` executable. Default: next to `lattice`, then $PATH.
    #[arg(long, env = "LATTICE_NATS_SERVER", value_name = "PATH")]
    pub nats_server: Option<PathBuf>,

    /// Client port of the supervised nats-server, on 127.0.0.1 [default: a free port].
    #[arg(long, env = "LATTICE_NATS_PORT", value_name = "PORT")]
    pub nats_port: Option<u16>,

    /// NATS user credentials file: the node's nats-server becomes a leaf node of --leaf-url,
    /// authenticating with it. The file must not be readable by group or others.
    /// `credential:NAME` reads systemd's credential $CREDENTIALS_DIRECTORY/NAME (the unit's
    /// `LoadCredential=NAME:FILE`; the shipped unit has `LoadCredential=default.creds:lattice.creds`,
    /// a file of /etc/credstore/) [default: $CREDENTIALS_DIRECTORY/default.creds when systemd
    /// loaded it, which then requires --leaf-url or --nats-url; else none].
    #[arg(
        long,
        env = "LATTICE_CREDS",
        value_name = "FILE",
        hide_env_values = true
    )]
    pub creds: Option<PathBuf>,

    /// Remote the leaf node joins, e.g. `nats-leaf://hub.example:7422`
    /// [default with --creds: tls://connect.ngs.global]. A password in it given here is visible
    /// in the process list: prefer the env var or `lattice.toml`.
    #[arg(
        long,
        env = "LATTICE_LEAF_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub leaf_url: Option<SecretUrl>,

    /// JetStream domain of the lattice's store (desired state, artifacts, keyvalue-nats), to use
    /// instead of the one found [default: found: in leaf mode the hub's, from its leafnode INFO,
    /// else none; standalone, the node's own].
    #[arg(long, env = "LATTICE_JS_DOMAIN", value_name = "DOMAIN")]
    pub js_domain: Option<String>,

    /// Connect to this existing NATS instead of running a nats-server (external mode), e.g.
    /// `nats://nats.internal:4222`; --creds then authenticates the node's own connection. A
    /// password in it given here is visible in the process list: prefer the env var or
    /// `lattice.toml`.
    #[arg(
        long,
        env = "LATTICE_NATS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub nats_url: Option<SecretUrl>,

    /// How often the node publishes its heartbeat, e.g. `5s` (1s to 60s); a node not heard
    /// from for 3 intervals is gone, or sooner if its probe finds its NATS connection gone
    /// [default: 1s].
    #[arg(long, env = "LATTICE_HEARTBEAT_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,

    /// Friendly name of this node [default: the hostname].
    #[arg(long, env = "LATTICE_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// A label of this node, `KEY=VALUE`; repeatable (env: comma-separated). `os`, `arch` and
    /// `hostname` are always added.
    #[arg(
        long = "label",
        env = "LATTICE_LABEL",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,

    /// Deadline of one HTTP request to a component, e.g. `30s`, `500ms` [default: 30s].
    #[arg(long, env = "LATTICE_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Linear-memory cap of one component instance, in MiB [default: 128].
    #[arg(long, env = "LATTICE_MAX_INSTANCE_MEMORY_MIB", value_name = "MIB")]
    pub max_instance_memory_mib: Option<u64>,

    /// Component instances the node holds at once, all components together: the slots of
    /// wasmtime's pooling allocator (each reserves address space for one instance's memories).
    /// A request past them gets 503 + Retry-After [default: 1000].
    #[arg(long, env = "LATTICE_MAX_INSTANCES", value_name = "N")]
    pub max_instances: Option<u32>,

    /// Concurrent requests one replica of a component admits; a component's bound on this node is
    /// this times its replicas here. Past the bound requests get 503 + Retry-After [default: 64].
    #[arg(long, env = "LATTICE_REPLICA_CONCURRENCY", value_name = "N")]
    pub replica_concurrency: Option<u32>,

    /// Deadline of fetching and compiling one component before it starts, e.g. `60s`; past
    /// it the start fails (and is retried), without holding back other starts [default: 60s].
    #[arg(long, env = "LATTICE_START_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub start_timeout: Option<Duration>,

    /// Replicas of the lattice's apps bucket and artifact object store when this node creates
    /// them: more than 1 for hubs that are JetStream clusters [default: 1].
    #[arg(long, env = "LATTICE_STORE_REPLICAS", value_name = "N")]
    pub store_replicas: Option<usize>,

    /// Log filter, as tracing's EnvFilter: `info`, `debug`, `lattice=debug,info` [default: info].
    #[arg(long, env = "LATTICE_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// How this node reaches OCI registries (`--ca-file` also for components' outgoing HTTPS).
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The only OCI registries (`HOST` or `HOST:PORT`, as references name them; `docker.io`
    /// for Docker Hub) this node pulls from, for its config dir's manifests and for the
    /// versions it runs; repeatable (env: comma-separated). A pull from another is refused,
    /// naming the reference [default: any registry].
    #[arg(
        long = "allowed-registry",
        env = "LATTICE_ALLOWED_REGISTRY",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub allowed_registries: Vec<String>,
    /// Where apps may open listeners of their own (a manifest http link's `address`): `ADDRESS`
    /// or `ADDRESS:PORTS`, with ADDRESS `*`, an IPv4 address or network (`0.0.0.0`,
    /// `10.0.0.0/8`) or an IPv6 one in brackets (`[::1]`, `[fd00::/8]`), PORTS a port, a range
    /// `LOW-HIGH` or `*`; repeatable (env: comma-separated). `0.0.0.0` (every interface) is
    /// allowed only by a rule naming it or `*`. An address outside them is refused on this
    /// node, with the reason in `lattice app status`; --http-addr is not subject to it
    /// [default: 127.0.0.0/8 and ::1, any port].
    #[arg(
        long = "allowed-listen",
        env = "LATTICE_ALLOWED_LISTEN",
        value_name = "ADDRESS[:PORTS]",
        value_delimiter = ','
    )]
    pub allowed_listen: Vec<String>,
    /// A keyvalue-sled bucket every app on this node shares; repeatable (env: comma-separated).
    /// Other keyvalue-sled buckets are per app. Sharing a bucket also makes readable what was
    /// stored in it before buckets were per app [default: none].
    #[arg(
        long = "shared-bucket",
        env = "LATTICE_SHARED_BUCKET",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub shared_buckets: Vec<String>,

    /// A glob pattern (`app_*`) of the keyvalue-nats buckets links may name on this node;
    /// repeatable (env: comma-separated). A replica whose link names another bucket fails to
    /// start here, with the reason in `lattice app status` [default: any bucket but the
    /// lattice's own].
    #[arg(
        long = "allowed-buckets",
        env = "LATTICE_ALLOWED_BUCKETS",
        value_name = "PATTERN",
        value_delimiter = ','
    )]
    pub allowed_buckets: Vec<String>,

    /// Format of the node's log on stderr: `text` (for people; no colours unless stderr is a
    /// terminal outside systemd) or `json` (one object a line) [default: text].
    #[arg(long, env = "LATTICE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// OTLP/HTTP endpoint traces are exported to, e.g. `http://127.0.0.1:4318` (`/v1/traces` is
    /// appended, as for `OTEL_EXPORTER_OTLP_ENDPOINT`, which is read when this is not set)
    /// [default: none: traces off unless an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set].
    #[arg(long, env = "LATTICE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Address of the admin endpoint (`/healthz`, `/readyz`, `/metrics`), or `none` to turn
    /// it off (and metrics with it) [default: 127.0.0.1:9464].
    #[arg(long, env = "LATTICE_ADMIN_ADDR", value_name = "ADDR|none")]
    pub admin_addr: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// The URL and creds arguments of `command` and its subcommands: whether each hides the
    /// value of its env var in `--help`.
    fn secret_args(command: &clap::Command, found: &mut Vec<(String, bool)>) {
        for arg in command.get_arguments() {
            if matches!(arg.get_id().as_str(), "nats_url" | "leaf_url" | "creds") {
                found.push((
                    format!("{} {}", command.get_name(), arg.get_id()),
                    arg.is_hide_env_values_set(),
                ));
            }
        }
        for sub in command.get_subcommands() {
            secret_args(sub, found);
        }
    }

    #[test]
    fn help_shows_no_url_or_creds_value_from_the_env() {
        let mut found = Vec::new();
        secret_args(&Cli::command(), &mut found);
        // `up`: three; `get hosts` and the `app` commands: two each.
        assert!(found.len() >= 7, "{found:?}");
        assert!(found.iter().all(|(_, hidden)| *hidden), "{found:?}");
    }
}
