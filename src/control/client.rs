//! The CLI side of the control API: `lattice get hosts|inventory` and `lattice app …`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

use super::{
    AppRequest, AppSummary, CtlResponse, HistoryEntry, HostInventory, InventoryRequest,
    LatticeConfig,
};
use crate::cli::PushArgs;
use crate::cli::{AppCommand, ClientArgs, GetCommand, OutputFormat};
use crate::host::escape_control;
use crate::lattice::membership::HostInfo;
use crate::nats::local_auth::{self, LocalUser};
use crate::nats::permissions::{self, Denied};
use crate::nats::subjects;
use crate::node::NATS_URL_FILE;
use crate::reconciler::artifacts::Artifacts;
use crate::reconciler::deploy::{
    ImagesTo, MAX_MANIFEST_BYTES, ResolvedImages, resolve_images, suffixed, version_of,
};
use crate::reconciler::oci::Registry;
use crate::reconciler::plan::AppStatus;
use crate::reconciler::store::Source;
use crate::reconciler::{DeployError, DeployOutcome, DeployRequest, manifest};
use tokio::sync::watch;

/// Default wait for an answer.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait for `app deploy`, whose node compiles the components to check them.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `lattice get …`: prints the answer on stdout.
///
/// # Errors
/// The lattice cannot be reached or answers with an error (the message says which and why).
pub async fn get(command: GetCommand) -> anyhow::Result<ExitCode> {
    match command {
        GetCommand::Hosts { client } => {
            let hosts: Vec<HostInfo> = call(&client, subjects::CTL_GET_HOSTS, Vec::new()).await?;
            match client.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&hosts)?),
                OutputFormat::Table => print!("{}", hosts_table(&hosts)),
            }
        }
        GetCommand::Inventory { host, client } => {
            let payload = serde_json::to_vec(&InventoryRequest { host })?;
            let inventory: Vec<HostInventory> =
                call(&client, subjects::CTL_GET_INVENTORY, payload).await?;
            match client.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&inventory)?),
                OutputFormat::Table => print!("{}", inventory_table(&inventory)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `lattice app …`: prints the answer on stdout.
///
/// # Errors
/// The manifest is refused (the message names the file, the field and the reason), the lattice
/// cannot be reached, or it answers with an error.
pub async fn app(command: AppCommand) -> anyhow::Result<ExitCode> {
    match command {
        AppCommand::Deploy {
            file,
            version,
            js_domain,
            refresh,
            registry,
            client,
        } => {
            let options = DeployOptions {
                version,
                js_domain,
                refresh,
                registry,
            };
            let outcome = deploy(&file, options, &client).await?;
            match client.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
                OutputFormat::Table => println!(
                    "app {} version {} {}",
                    outcome.name,
                    outcome.version,
                    if outcome.changed {
                        "deployed"
                    } else {
                        "unchanged (already deployed)"
                    }
                ),
            }
        }
        AppCommand::Undeploy { name, client } => {
            let payload = serde_json::to_vec(&AppRequest { name: name.clone() })?;
            let _: String = call(&client, subjects::CTL_APP_UNDEPLOY, payload).await?;
            match client.output {
                OutputFormat::Json => println!("{}", serde_json::json!({ "name": name })),
                OutputFormat::Table => println!("app {name} undeployed"),
            }
        }
        AppCommand::List { client } => {
            let apps: Vec<AppSummary> = call(&client, subjects::CTL_APP_LIST, Vec::new()).await?;
            match client.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&apps)?),
                OutputFormat::Table => {
                    let rows: Vec<[String; 4]> = apps
                        .iter()
                        .map(|a| {
                            [
                                a.name.clone(),
                                a.version.clone(),
                                a.state.as_str().to_owned(),
                                a.reason.clone(),
                            ]
                        })
                        .collect();
                    print!("{}", table(["NAME", "VERSION", "STATE", "REASON"], &rows));
                }
            }
        }
        AppCommand::Status { name, client } => {
            let payload = serde_json::to_vec(&AppRequest { name })?;
            let status: AppStatus = call(&client, subjects::CTL_APP_STATUS, payload).await?;
            match client.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                OutputFormat::Table => print!("{}", status_text(&status)),
            }
        }
        AppCommand::History { name, client } => {
            let payload = serde_json::to_vec(&AppRequest { name })?;
            let history: Vec<HistoryEntry> =
                call(&client, subjects::CTL_APP_HISTORY, payload).await?;
            match client.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&history)?),
                OutputFormat::Table => {
                    let rows: Vec<[String; 4]> = history
                        .iter()
                        .map(|h| {
                            let at =
                                std::time::UNIX_EPOCH + Duration::from_millis(h.deployed_at_ms);
                            [
                                format!("{}{}", h.version, if h.deployed { " *" } else { "" }),
                                humantime::format_rfc3339_seconds(at).to_string(),
                                h.source.clone(),
                                h.digests
                                    .iter()
                                    .map(|(c, d)| match h.oci.get(c) {
                                        Some(pin) => format!(
                                            "{c}={} ({}@{})",
                                            &d[..d.len().min(12)],
                                            escape_control(&pin.reference),
                                            escape_control(&pin.digest)
                                        ),
                                        None => format!("{c}={}", &d[..d.len().min(12)]),
                                    })
                                    .collect::<Vec<_>>()
                                    .join(","),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table(["VERSION", "STORED", "SOURCE", "COMPONENTS"], &rows)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `lattice app deploy` was told besides the file.
struct DeployOptions {
    /// `--version`.
    version: Option<String>,
    /// `--js-domain`.
    js_domain: Option<String>,
    /// `--refresh`: resolve OCI tags again.
    refresh: bool,
    /// `--registry-creds`, `--insecure-registry`, `--ca-file`.
    registry: crate::cli::RegistryArgs,
}

/// `lattice app deploy`: parse and check the manifest here, upload its files (and pull its OCI
/// images, tags resolved unless the deployed version pinned them and `--refresh` is not
/// given), then ask a node to validate and store it.
async fn deploy(
    file: &std::path::Path,
    options: DeployOptions,
    client: &ClientArgs,
) -> anyhow::Result<DeployOutcome> {
    let in_file = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", file.display());
    // Refused from its size before it is read (a 50 MB file is no manifest).
    let size = std::fs::metadata(file).map_err(|e| in_file(&e))?.len();
    if size > MAX_MANIFEST_BYTES as u64 {
        return Err(in_file(&format!(
            "{size} bytes is more than the {MAX_MANIFEST_BYTES} bytes a manifest may have"
        )));
    }
    let text = std::fs::read_to_string(file).map_err(|e| in_file(&e))?;
    let base = file
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    if text.len() > MAX_MANIFEST_BYTES {
        // Grown since its size was read.
        return Err(in_file(&format!(
            "{} bytes is more than the {MAX_MANIFEST_BYTES} bytes a manifest may have",
            text.len()
        )));
    }
    let manifest = manifest::parse(&text, &base).map_err(|e| in_file(&e))?;
    for warning in &manifest.warnings {
        eprintln!("warning: {}: {warning}", file.display());
    }
    let nats = connect(client).await?;
    // A step the NATS user may not take fails the deploy at once, naming the subject.
    let (outcome, artifacts, resolved) = nats
        .guard(deploy_through(
            &nats, file, &text, &manifest, options, client,
        ))
        .await?;
    // An artifact this deploy found already stored may have been collected between the upload
    // and the store (its last user undeployed meanwhile): put it back. The version is stored
    // whatever happens here, and the error says so.
    nats.guard(async {
        resolve_images(&manifest, &artifacts, ImagesTo::Lattice, Some(&resolved))
            .await
            .map_err(anyhow::Error::new)
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{}: app {:?} version {} is stored, but putting its artifacts back failed: {e:#}",
            file.display(),
            manifest.name,
            outcome.version
        )
    })?;
    for warning in &outcome.warnings {
        eprintln!("warning: {}: {warning}", file.display());
    }
    Ok(outcome)
}

/// The part of [`deploy`] that talks to the lattice through `nats` up to the store: the
/// outcome, the artifact store it uploaded into and what the images resolved to.
async fn deploy_through(
    nats: &Connection,
    file: &std::path::Path,
    text: &str,
    manifest: &manifest::Manifest,
    options: DeployOptions,
    client: &ClientArgs,
) -> anyhow::Result<(DeployOutcome, Artifacts, ResolvedImages)> {
    let in_file = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", file.display());
    let config: LatticeConfig = nats
        .request(subjects::CTL_GET_CONFIG, Vec::new(), DEFAULT_TIMEOUT)
        .await?;
    // Nothing to upload into: the node's reason, before any artifact is sent.
    if let Some(reason) = config.no_store {
        return Err(in_file(&format!("app {:?}: {reason}", manifest.name)));
    }
    let js_domain = options.js_domain.or(config.js_domain);
    let js = crate::nats::SharedJetStream::fixed(nats.client.clone(), js_domain);
    let mut artifacts =
        Artifacts::new(js, &client.lattice, None).with_replicas(config.store_replicas);
    // Credentials are read only for a manifest naming an OCI image.
    if manifest
        .components
        .iter()
        .any(|c| matches!(c.image, manifest::Image::Oci(_)))
    {
        artifacts = artifacts.with_registry(Registry::new(&options.registry.settings())?);
    }
    let deployed = deployed_pins(nats, &manifest.name).await;
    let pinned = deployed.as_ref().map(|(_, pins)| pins);
    let keep = pinned.filter(|_| !options.refresh);
    let resolved = resolve_images(manifest, &artifacts, ImagesTo::Lattice, keep)
        .await
        .map_err(|e: DeployError| in_file(&format!("app {:?}: {e}", manifest.name)))?;
    let mut request = DeployRequest {
        manifest: text.to_owned(),
        version: options.version,
        images: resolved.images.clone(),
        oci: resolved.oci.clone(),
        source: Source::Cli,
    };
    // A refresh whose tags moved is new content under the manifest's version: that version
    // with a suffix naming the content, as for a config-dir file edited in place.
    if request.version.is_none() {
        let suffixed = suffixed(&version_of(None, manifest, text), &request);
        // The same content deployed again after such a refresh (the pins kept): the version
        // the refresh named, not the manifest's own, which holds the older images.
        let redeployed = deployed
            .as_ref()
            .is_some_and(|(version, _)| *version == suffixed);
        let moved = options.refresh && pinned.is_some_and(|p| p.images != resolved.images);
        if redeployed || moved {
            request.version = Some(suffixed);
        }
    }
    let outcome = nats
        .request(
            subjects::CTL_APP_DEPLOY,
            serde_json::to_vec(&request)?,
            DEPLOY_TIMEOUT,
        )
        .await
        .map_err(|e| in_file(&format!("app {:?}: {e:#}", manifest.name)))?;
    Ok((outcome, artifacts, resolved))
}

/// The name of `app`'s deployed version and its images with their OCI pins (from
/// `app.history`); `None` when the app is not deployed (or its history cannot be read: its
/// tags then resolve anew).
async fn deployed_pins(nats: &Connection, app: &str) -> Option<(String, ResolvedImages)> {
    let payload = serde_json::to_vec(&AppRequest {
        name: app.to_owned(),
    })
    .ok()?;
    let history: Vec<HistoryEntry> = nats
        .request(subjects::CTL_APP_HISTORY, payload, DEFAULT_TIMEOUT)
        .await
        .ok()?;
    let deployed = history.into_iter().find(|h| h.deployed)?;
    Some((
        deployed.version,
        ResolvedImages {
            images: deployed.digests,
            oci: deployed.oci,
        },
    ))
}

/// `lattice push REF FILE.wasm`: uploads the component as a CNCF wasm artifact and prints the
/// manifest's digest (JSON: `{"reference", "digest"}`).
///
/// # Errors
/// The file is not a component of at most 256 MiB, the flags' files cannot be read, or the
/// push fails ([`crate::reconciler::oci::OciError`], naming the reference).
pub async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let wasm = crate::reconciler::artifacts::read_component_file(&args.file)
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        crate::reconciler::oci::is_component(&wasm),
        "{}: not a wasm component (a core module or another file)",
        args.file.display()
    );
    let registry = Registry::new(&args.registry.settings())?;
    let pin = registry.push(&args.reference, wasm).await?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&pin)?),
        OutputFormat::Table => println!("{}", pin.digest),
    }
    Ok(ExitCode::SUCCESS)
}

/// Connects as `args` say and sends one request to `endpoint`: its response.
async fn call<T: DeserializeOwned>(
    args: &ClientArgs,
    endpoint: &str,
    payload: Vec<u8>,
) -> anyhow::Result<T> {
    connect(args)
        .await?
        .request(endpoint, payload, DEFAULT_TIMEOUT)
        .await
}

/// Prefix of the inboxes of a CLI connected with `--creds` as the NATS user whose public key is
/// `user`: `_INBOX.cli.<user>` (a role's subscribe permission `_INBOX.cli.{{subject()}}.>`).
/// Under `_INBOX.`, where nodes may answer; async-nats's default inboxes are `_INBOX.<nuid>`,
/// never `_INBOX.cli`.
fn cli_inbox_prefix(user: &str) -> String {
    format!("_INBOX.cli.{user}")
}

/// A CLI's connection to the lattice.
struct Connection {
    client: async_nats::Client,
    /// The server URL as shown in errors: redacted.
    url: String,
    lattice: String,
    timeout: Option<Duration>,
    /// The latest permission violation the server reported on this connection (a change is a
    /// new one).
    denied: watch::Receiver<Option<Denied>>,
}

/// Connects as `args` say (`--nats-url`, with `--creds` if given; else the local node's NATS,
/// as the local user whose key the node keeps next to the recorded URL).
///
/// # Errors
/// The local node's files cannot be read (the message says whose they are and what to do),
/// the creds file is refused, NATS cannot be reached in `--timeout`, or it refuses this client
/// (`Authorization Violation`).
async fn connect(args: &ClientArgs) -> anyhow::Result<Connection> {
    crate::config::check_lattice_name(&args.lattice)?;
    let target = target(args)?;
    let url = target.url;
    let timeout = args.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let (denials, denied) = watch::channel(None);
    let denials = std::sync::Arc::new(denials);
    // The local node's server: its sockets must be the node's user's (the data dir's owner)
    // before the nonce is signed with the node's key.
    let base = match (&target.user, target.owner) {
        (Some(user), Some(owner)) => crate::nats::local_peer::options(user, &url, owner),
        _ => async_nats::ConnectOptions::new(),
    };
    let mut options = base
        .name("lattice cli")
        .connection_timeout(timeout)
        .event_callback(move |event| {
            let denials = denials.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event
                    && let Some(denial) = permissions::denied(&error)
                {
                    denials.send_replace(Some(denial));
                }
            }
        });
    let refused_hint = match (&target.local, &args.creds) {
        (Some(file), _) => format!(
            "the key in {} is not the one the node's nats-server admits now; is the node restarting?",
            file.display()
        ),
        (None, Some(creds)) => format!("the user of --creds {} is not admitted", creds.display()),
        (None, None) => "pass --creds FILE for this NATS, or leave out --nats-url to use the local node's NATS as the user it runs as".to_owned(),
    };
    // async-nats does not send a URL's user and password (or token) itself.
    options = crate::nats::redact::with_url_credentials(options, &url);
    // The local user signs in the auth callback above.
    if target.user.is_none()
        && let Some(creds) = &args.creds
    {
        crate::config::check_creds_file(creds, "--creds")?;
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("--creds {}", creds.display()))?;
        // Replies come to this user's own inboxes, so a role need not subscribe to every
        // inbox of the account (PROTOCOL.md §Roles).
        let text = std::fs::read_to_string(creds)
            .with_context(|| format!("--creds {}", creds.display()))?;
        let user = crate::nats::user_permissions::user_key(&text)
            .map_err(|e| anyhow::anyhow!("--creds {}: {e}", creds.display()))?;
        options = options.custom_inbox_prefix(cli_inbox_prefix(&user));
    }
    // Shown (errors included) without its password or token.
    let shown = crate::nats::redact::redact_url(&url);
    // Without its userinfo (sent above): async-nats logs the server's URL with its password.
    let bare = crate::nats::redact::without_userinfo(&url);
    let client = tokio::time::timeout(timeout + Duration::from_secs(1), options.connect(bare))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot reach NATS at {shown}: no connection within {}",
                humantime::format_duration(timeout)
            )
        })?
        .map_err(|e| match e.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation => anyhow::anyhow!(
                "NATS at {shown} refused this client: Authorization Violation ({refused_hint})"
            ),
            _ => anyhow::anyhow!("{}", crate::nats::redact::redact_urls_in(&e.to_string()))
                .context(format!("cannot reach NATS at {shown}")),
        })?;
    Ok(Connection {
        client,
        url: shown,
        lattice: args.lattice.clone(),
        timeout: args.timeout,
        denied,
    })
}

impl Connection {
    /// Runs `work` on this connection; a permission violation the server reports meanwhile
    /// ends it at once with `permission denied: <subject>` (the refused publish or subscription
    /// itself would only time out), as does one reported before `work` failed. Violations
    /// reported before `work` started (by an earlier step that went on) are not its own.
    async fn guard<T>(
        &self,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let mut denied = self.denied.clone();
        denied.mark_unchanged();
        let mut seen = denied.clone();
        let denial = async move {
            loop {
                if seen.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if let Some(denial) = seen.borrow_and_update().clone() {
                    return Some(denial);
                }
            }
        };
        let refused = |denial: Denied| {
            anyhow::anyhow!(
                "{denial} (this NATS user may not {} it; PROTOCOL.md §Roles lists the subjects of each role)",
                denial.operation.as_str()
            )
        };
        tokio::select! {
            result = work => match result {
                Ok(value) => Ok(value),
                Err(e) => {
                    let new = denied.has_changed().unwrap_or(false);
                    match denied.borrow().clone() {
                        Some(denial) if new => Err(refused(denial)),
                        _ => Err(e),
                    }
                }
            },
            Some(denial) = denial => Err(refused(denial)),
        }
    }

    /// Sends one control request to `endpoint` and unwraps its [`CtlResponse`]; waits
    /// `--timeout`, else `default_timeout`.
    async fn request<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        payload: Vec<u8>,
        default_timeout: Duration,
    ) -> anyhow::Result<T> {
        let (url, lattice) = (&self.url, &self.lattice);
        let timeout = self.timeout.unwrap_or(default_timeout);
        let subject = format!("{}.{endpoint}", subjects::control(lattice));
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(timeout));
        let reply = self
            .guard(async {
                self.client
                    .send_request(subject.clone(), request)
                    .await
                    .map_err(anyhow::Error::new)
            })
            .await
            .map_err(|e| match e.downcast_ref::<async_nats::RequestError>().map(|e| e.kind()) {
                Some(async_nats::RequestErrorKind::NoResponders) => anyhow::anyhow!(
                    "no node of lattice {lattice:?} answers through {url} (no responders on {subject})"
                ),
                Some(async_nats::RequestErrorKind::TimedOut) => anyhow::anyhow!(
                    "no node of lattice {lattice:?} answered through {url} within {}",
                    humantime::format_duration(timeout)
                ),
                Some(_) => anyhow::anyhow!("request on {subject} through {url}: {e}"),
                // A permission violation, as `guard` says.
                None => e,
            })?;
        let reply: CtlResponse<T> = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("malformed reply on {subject}"))?;
        match (reply.success, reply.response) {
            (true, Some(response)) => Ok(response),
            (true, None) => bail!("the reply on {subject} has no response"),
            (false, _) => bail!("{}", reply.message),
        }
    }
}

/// `lattice app status` as text: a header line, the `reason:` line, then the components'
/// [`table`]. Control characters are escaped ([`escape_control`]) everywhere: the reason is
/// built from what other nodes say (their names and failure reasons).
fn status_text(status: &AppStatus) -> String {
    let mut out = format!(
        "app {} version {}: {}\n",
        escape_control(&status.name),
        escape_control(&status.version),
        status.state.as_str()
    );
    if !status.reason.is_empty() {
        let _ = writeln!(out, "reason: {}", escape_control(&status.reason));
    }
    let rows: Vec<[String; 4]> = status
        .components
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                c.desired.to_string(),
                c.running.to_string(),
                c.nodes
                    .iter()
                    .map(|n| format!("{}={}", n.name, n.replicas))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    out.push_str(&table(["COMPONENT", "DESIRED", "RUNNING", "NODES"], &rows));
    out
}

/// Where and as whom the CLI connects.
struct Target {
    /// The NATS URL.
    url: String,
    /// The local node's user, when connecting to the local node's NATS.
    user: Option<LocalUser>,
    /// The file that user's key came from.
    local: Option<std::path::PathBuf>,
    /// The uid of the local node's user (its data dir's owner).
    owner: Option<u32>,
}

/// `--nats-url`, else the URL the local node recorded in its data dir with the key of the local
/// user its nats-server admits (none from a node in external mode).
///
/// # Errors
/// No node runs with that data dir, or this user cannot read its files: the message names the
/// file, its owner, and what to do.
fn target(args: &ClientArgs) -> anyhow::Result<Target> {
    if let Some(url) = &args.nats_url {
        return Ok(Target {
            url: url.as_str().to_owned(),
            user: None,
            local: None,
            owner: None,
        });
    }
    let dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => crate::config::default_data_dir()?,
    };
    let file = dir.join(NATS_URL_FILE);
    let url = match std::fs::read_to_string(&file) {
        Ok(url) => url.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no node runs with data dir {} (no {}): start `lattice up`, or pass --nats-url or --data-dir",
            dir.display(),
            file.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            bail!("{}", not_yours(&dir, &file))
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let key = dir.join(local_auth::LOCAL_KEY_FILE);
    let user = match local_auth::read(&dir) {
        Ok(user) => user,
        Err(local_auth::LocalAuthError::File { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            bail!("{}", not_yours(&dir, &key))
        }
        Err(e) => return Err(e.into()),
    };
    let owner = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .uid()
    };
    Ok(Target {
        url,
        local: user.is_some().then_some(key),
        user,
        owner: Some(owner),
    })
}

/// Why this user may not use the node of data dir `dir` (`file` could not be read), and what to
/// do instead.
fn not_yours(dir: &std::path::Path, file: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(dir)
        .ok()
        .map(|meta| {
            let uid = nix::unistd::Uid::from_raw(meta.uid());
            match nix::unistd::User::from_uid(uid) {
                Ok(Some(user)) => format!("user {} (uid {uid})", user.name),
                _ => format!("uid {uid}"),
            }
        })
        .unwrap_or_else(|| "another user".to_owned());
    format!(
        "cannot read {}: permission denied. The local node's NATS admits only the user it runs \
         as, {owner}, who can read its data dir {}: run this command as that user \
         (e.g. `sudo -u <user> lattice …`), or pass --nats-url with --creds of a NATS user \
         allowed to steer the lattice",
        file.display(),
        dir.display()
    )
}

fn hosts_table(hosts: &[HostInfo]) -> String {
    let rows: Vec<[String; 6]> = hosts
        .iter()
        .map(|h| {
            let health = match &h.health.degraded {
                Some(reason) => format!("degraded ({reason})"),
                None => "ok".to_owned(),
            };
            let uplink = match &h.uplink.error {
                Some(error) => format!("{} ({error})", h.uplink.state.as_str()),
                None => h.uplink.state.as_str().to_owned(),
            };
            let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                h.id.clone(),
                h.name.clone(),
                humantime::format_duration(Duration::from_secs(h.uptime_ms / 1000)).to_string(),
                uplink,
                health,
                labels.join(","),
            ]
        })
        .collect();
    table(
        ["ID", "NAME", "UPTIME", "UPLINK", "HEALTH", "LABELS"],
        &rows,
    )
}

fn inventory_table(inventory: &[HostInventory]) -> String {
    let rows: Vec<[String; 4]> = inventory
        .iter()
        .flat_map(|h| {
            h.components.iter().map(move |c| {
                [
                    h.name.clone(),
                    c.app.clone(),
                    c.component.clone(),
                    c.replicas.to_string(),
                ]
            })
        })
        .collect();
    table(["HOST", "APP", "COMPONENT", "REPLICAS"], &rows)
}

/// Left-aligned columns, two spaces apart. Control characters in cells are escaped
/// ([`escape_control`]): cells carry what other nodes say (names, labels, errors), which must
/// not forge rows or drive the terminal.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|cell| escape_control(cell)))
        .collect();
    let rows = rows.as_slice();
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let text = table(
            ["A", "LONGER"],
            &[["x".into(), "1".into()], ["yyyy".into(), "2".into()]],
        );
        assert_eq!(text, "A     LONGER\nx     1\nyyyy  2\n");
    }

    #[test]
    fn not_yours_reads_as_one_sentence() {
        let text = not_yours(
            std::path::Path::new("/nonexistent/d"),
            std::path::Path::new("/nonexistent/d/f"),
        );
        assert!(!text.contains("  "), "{text}");
        assert!(text.contains("runs as, another user, who"), "{text}");
    }

    #[test]
    fn app_status_text_escapes_control_characters() {
        use crate::reconciler::plan::{AppState, ComponentStatus, NodeReplicas};
        let status = AppStatus {
            name: "shop\u{1b}[2J".into(),
            version: "v1\rv2".into(),
            state: AppState::Failed,
            reason: "component web on node evil\nreason: all fine: ok\u{7}".into(),
            components: vec![ComponentStatus {
                name: "web".into(),
                desired: 1,
                running: 0,
                nodes: vec![NodeReplicas {
                    id: "NID".into(),
                    name: "n\n1".into(),
                    replicas: 0,
                }],
            }],
        };
        let text = status_text(&status);
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{7}'));
        for shown in [
            "app shop\\u{1b}[2J version v1\\rv2: failed\n",
            "reason: component web on node evil\\nreason: all fine: ok\\u{7}\n",
            "n\\n1=0",
        ] {
            assert!(text.contains(shown), "{shown} in {text}");
        }
    }

    #[test]
    fn what_other_hosts_say_is_shown_with_control_characters_escaped() {
        use crate::lattice::membership::NodeHealth;
        use crate::nats::uplink::{Uplink, UplinkState};
        let host = HostInfo {
            id: "NID".into(),
            name: "web\nNFORGED  forged  0s".into(),
            lattice: "default".into(),
            labels: [("zone".to_owned(), "eu\u{1b}[2J".to_owned())].into(),
            version: "0".into(),
            uptime_ms: 0,
            heartbeat_interval_ms: 1_000,
            uplink: Uplink {
                error: Some("refused\r\nok".into()),
                ..Uplink::fixed(UplinkState::Failed, None)
            },
            http_addr: "127.0.0.1:8000".into(),
            components: Vec::new(),
            failures: Vec::new(),
            health: NodeHealth {
                degraded: Some("x\ty\u{7}".into()),
                tasks: Vec::new(),
            },
            probe: true,
        };
        let text = hosts_table(&[host]);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{7}'));
        for shown in [
            "web\\nNFORGED",
            "zone=eu\\u{1b}[2J",
            "(refused\\r\\nok)",
            "degraded (x\\ty\\u{7})",
        ] {
            assert!(text.contains(shown), "{shown} in {text}");
        }
    }
}
