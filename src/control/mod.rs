//! The control API: NATS request/reply with JSON payloads (`PROTOCOL.md` §Control API), served
//! by every node with the async-nats service API (so `$SRV.PING`/`INFO`/`STATS` work too), in
//! one queue group so one node answers each request: hosts and inventory from its membership
//! view, apps from its mirror of the desired state, deploys validated and stored by it.
//! `client` holds the CLI side.

pub mod client;

use std::sync::Arc;

use anyhow::Context;
use async_nats::service::ServiceExt as _;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::lattice::membership::{ComponentReplicas, HostInfo, Membership};
use crate::name::Name;
use crate::nats::{JetStreamState, subjects};
use crate::reconciler::plan::{self, AppStatus};
use crate::reconciler::store;
use crate::reconciler::{AppStore, DeployRequest};

/// The envelope of every control reply (as wasmCloud's `CtlResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtlResponse<T> {
    /// Whether the request succeeded.
    pub success: bool,
    /// Empty on success, else what went wrong.
    #[serde(default)]
    pub message: String,
    /// The answer, on success.
    #[serde(default = "Option::default")]
    pub response: Option<T>,
}

impl<T> CtlResponse<T> {
    /// A successful reply.
    pub fn ok(response: T) -> CtlResponse<T> {
        CtlResponse {
            success: true,
            message: String::new(),
            response: Some(response),
        }
    }

    /// A failed reply.
    pub fn error(message: String) -> CtlResponse<T> {
        CtlResponse {
            success: false,
            message,
            response: None,
        }
    }
}

/// Payload of `get.inventory`; an empty payload means every host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRequest {
    /// Only the host with this id or name.
    #[serde(default)]
    pub host: Option<String>,
}

/// One host's entry in `get.inventory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInventory {
    /// Node id.
    pub id: String,
    /// Node name.
    pub name: String,
    /// Its components and replicas.
    pub components: Vec<ComponentReplicas>,
}

/// What the control API answers from and writes to.
pub struct ControlContext {
    /// Lattice name.
    pub lattice: String,
    /// The lattice's shared JetStream as this node finds it (its domain and state).
    pub jetstream: crate::nats::SharedJetStream,
    /// The hosts heard from (and, through `local`, this one as it is now).
    pub membership: Arc<Membership>,
    /// This node as it describes itself now.
    pub local: Arc<dyn Fn() -> HostInfo + Send + Sync>,
    /// The desired state, read and written.
    pub apps: Arc<AppStore>,
}

impl ControlContext {
    fn hosts(&self) -> Vec<HostInfo> {
        self.membership.hosts_with((self.local)())
    }

    /// Every app's status.
    fn statuses(&self) -> Vec<AppStatus> {
        let desired = self.apps.mirror().desired();
        let me = (self.local)().id;
        let hosts = self.hosts();
        let placement = store::place(&desired, &hosts, &me);
        desired
            .keys()
            .filter_map(|name| plan::status(name, &desired, &placement, &hosts))
            .collect()
    }
}

/// Payload of `app.undeploy`, `app.status` and `app.history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRequest {
    /// App name.
    pub name: String,
}

/// Reply of `get.config`: where the lattice keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatticeConfig {
    /// Lattice name.
    pub lattice: String,
    /// JetStream domain of the lattice's buckets as the answering node found it (else its
    /// `--js-domain`); `null` for none (the plain `$JS.API` prefix).
    pub js_domain: Option<String>,
    /// Whether the answering node reaches that JetStream now; `None` from a node that does not
    /// say (older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamState>,
    /// KV bucket of the desired state.
    pub apps_bucket: String,
    /// Object store bucket of the artifacts.
    pub artifacts_bucket: String,
    /// Why the answering node reaches no lattice store, `null` when it does (or may: still
    /// looking); a deploy through it fails with this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_store: Option<String>,
    /// Replicas of the buckets when created (the answering node's `--store-replicas`).
    #[serde(default = "one")]
    pub store_replicas: usize,
}

fn one() -> usize {
    1
}

/// One version in `app.history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Version name.
    pub version: String,
    /// When it was stored, in ms since the Unix epoch.
    pub deployed_at_ms: u64,
    /// Whether it is the deployed one.
    pub deployed: bool,
    /// `cli`, or `file <node name>:<path>`.
    pub source: String,
    /// Component → sha256 of its wasm.
    pub digests: std::collections::BTreeMap<String, String>,
    /// Component → the OCI reference and the registry manifest digest it was pinned to, for
    /// components whose `image` is an OCI reference.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub oci: std::collections::BTreeMap<String, crate::reconciler::oci::OciPin>,
}

/// One entry of `app.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSummary {
    /// App name.
    pub name: String,
    /// Deployed version.
    pub version: String,
    /// `deployed`, `reconciling` or `failed`.
    pub state: plan::AppState,
    /// Why not deployed.
    pub reason: String,
}

/// Serves the control API of `context.lattice` until `shutdown`.
///
/// # Errors
/// The service or its endpoints cannot be registered.
pub async fn serve(
    client: async_nats::Client,
    context: Arc<ControlContext>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let lattice = context.lattice.clone();
    let service = client
        .service_builder()
        .description(format!("lattice control API of lattice {lattice}"))
        .start(
            subjects::control_service(&lattice),
            env!("CARGO_PKG_VERSION"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("starting the control service")?;
    let group = service.group(subjects::control(&lattice));
    let mut endpoints = Vec::new();
    for name in [
        subjects::CTL_GET_HOSTS,
        subjects::CTL_GET_INVENTORY,
        subjects::CTL_GET_CONFIG,
        subjects::CTL_APP_DEPLOY,
        subjects::CTL_APP_UNDEPLOY,
        subjects::CTL_APP_LIST,
        subjects::CTL_APP_STATUS,
        subjects::CTL_APP_HISTORY,
    ] {
        let endpoint = group
            .endpoint(name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("adding the {name} endpoint"))?;
        endpoints.push(endpoint.map(move |request| (name, request)));
    }
    let mut requests = futures::stream::select_all(endpoints);
    Ok(tokio::spawn(async move {
        let tasks = tokio_util::task::TaskTracker::new();
        loop {
            let (name, request) = tokio::select! {
                Some(next) = requests.next() => next,
                () = shutdown.cancelled() => break,
                else => break,
            };
            let context = context.clone();
            // A deploy compiles: each request in its own task, so reads are never held up.
            tasks.spawn(async move {
                let reply = answer(&context, name, &request.message.payload).await;
                if let Err(e) = request.respond(Ok(reply.into())).await {
                    tracing::debug!(error = %e, "answering a control request failed");
                }
            });
        }
        tasks.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tasks.wait()).await;
        let _ = service.stop().await;
    }))
}

/// The JSON reply to one request on endpoint `name`.
async fn answer(context: &ControlContext, name: &str, payload: &[u8]) -> Vec<u8> {
    match name {
        subjects::CTL_GET_HOSTS => to_json(&CtlResponse::ok(context.hosts())),
        subjects::CTL_GET_INVENTORY => to_json(&inventory_reply(
            &context.hosts(),
            &context.lattice,
            payload,
        )),
        subjects::CTL_GET_CONFIG => to_json(&CtlResponse::ok(LatticeConfig {
            lattice: context.lattice.clone(),
            js_domain: context.jetstream.domain(),
            jetstream: Some(context.jetstream.state()),
            apps_bucket: subjects::apps_bucket(&context.lattice),
            artifacts_bucket: subjects::artifacts_bucket(&context.lattice),
            no_store: context.apps.no_store().map(|e| e.to_string()),
            store_replicas: context.apps.replicas(),
        })),
        subjects::CTL_APP_DEPLOY => to_json(&match parse::<DeployRequest>(name, payload) {
            Ok(request) => match context.apps.deploy(over_nats(request)).await {
                Ok(outcome) => CtlResponse::ok(outcome),
                Err(e) => CtlResponse::error(e.to_string()),
            },
            Err(e) => CtlResponse::error(e),
        }),
        subjects::CTL_APP_UNDEPLOY => to_json(&match parse_app_request(name, payload) {
            Ok(request) => match context.apps.undeploy(&request.name, None).await {
                Ok(_) => CtlResponse::ok(request.name),
                Err(e) => CtlResponse::error(e.to_string()),
            },
            Err(e) => CtlResponse::error(e),
        }),
        subjects::CTL_APP_LIST => to_json(&CtlResponse::ok(
            context
                .statuses()
                .into_iter()
                .map(|s| AppSummary {
                    name: s.name,
                    version: s.version,
                    state: s.state,
                    reason: s.reason,
                })
                .collect::<Vec<_>>(),
        )),
        subjects::CTL_APP_STATUS => to_json(&match parse_app_request(name, payload) {
            Ok(request) => match context
                .statuses()
                .into_iter()
                .find(|s| s.name == request.name)
            {
                Some(status) => CtlResponse::ok(status),
                None => CtlResponse::error(format!(
                    "no app {:?} in lattice {}",
                    request.name, context.lattice
                )),
            },
            Err(e) => CtlResponse::error(e),
        }),
        subjects::CTL_APP_HISTORY => to_json(&match parse_app_request(name, payload) {
            Ok(request) => match context.apps.mirror().record(&request.name) {
                Some(record) => CtlResponse::ok(
                    record
                        .versions
                        .iter()
                        .map(|v| HistoryEntry {
                            version: v.version.clone(),
                            deployed_at_ms: v.stored_at_ms,
                            deployed: v.version == record.deployed,
                            source: v.source.to_string(),
                            digests: v.images.clone(),
                            oci: v.oci.clone(),
                        })
                        .collect::<Vec<_>>(),
                ),
                None => CtlResponse::error(format!(
                    "no app {:?} in lattice {}",
                    request.name, context.lattice
                )),
            },
            Err(e) => CtlResponse::error(e),
        }),
        other => to_json(&CtlResponse::<()>::error(format!(
            "unknown endpoint {other}"
        ))),
    }
}

/// `request` as it arrived over NATS: from the CLI, whatever its `source` claims (a
/// `Source::File` of another node would skip that node's route-conflict check or make it refuse
/// its own config-dir manifest). The config-dir watcher deploys in-process with its own source.
fn over_nats(request: DeployRequest) -> DeployRequest {
    DeployRequest {
        source: crate::reconciler::store::Source::Cli,
        ..request
    }
}

fn parse<T: serde::de::DeserializeOwned>(endpoint: &str, payload: &[u8]) -> Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| format!("malformed {endpoint} request: {e}"))
}

/// The [`AppRequest`] of `app.undeploy`, `app.status` or `app.history` (endpoint `endpoint`),
/// its app name checked as a [`Name`]: it becomes the desired-state key `app.<name>`
/// (`PROTOCOL.md` §Desired state), and a `.` or `*` there would name other keys.
///
/// # Errors
/// The payload is not an [`AppRequest`], or its `name` is not a [`Name`] (the reason, naming
/// the endpoint and the name).
fn parse_app_request(endpoint: &str, payload: &[u8]) -> Result<AppRequest, String> {
    let request: AppRequest = parse(endpoint, payload)?;
    Name::check(&request.name).map_err(|e| format!("{endpoint}: app name {e}"))?;
    Ok(request)
}

fn inventory_reply(
    hosts: &[HostInfo],
    lattice: &str,
    payload: &[u8],
) -> CtlResponse<Vec<HostInventory>> {
    let request: InventoryRequest = if payload.iter().all(u8::is_ascii_whitespace) {
        InventoryRequest::default()
    } else {
        match serde_json::from_slice(payload) {
            Ok(request) => request,
            Err(e) => return CtlResponse::error(format!("malformed get.inventory request: {e}")),
        }
    };
    let hosts: Vec<&HostInfo> = hosts
        .iter()
        .filter(|h| {
            request
                .host
                .as_ref()
                .is_none_or(|w| *w == h.id || *w == h.name)
        })
        .collect();
    if let Some(wanted) = &request.host
        && hosts.is_empty()
    {
        return CtlResponse::error(format!("no host {wanted:?} in lattice {lattice}"));
    }
    CtlResponse::ok(
        hosts
            .into_iter()
            .map(|h| HostInventory {
                id: h.id.clone(),
                name: h.name.clone(),
                components: h.components.clone(),
            })
            .collect(),
    )
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::store::Source;

    #[test]
    fn app_names_of_requests_are_checked_as_names() {
        let request = parse_app_request("app.status", br#"{"name":"shop-2"}"#).unwrap();
        assert_eq!(request.name, "shop-2");
        for (payload, needle) in [
            (
                r#"{"name":"a.b"}"#,
                "app.undeploy: app name \"a.b\": '.' is not allowed",
            ),
            (r#"{"name":"*"}"#, "'*' is not allowed"),
            (r#"{"name":""}"#, "app.undeploy: app name must not be empty"),
            (r#"{"app":"x"}"#, "malformed app.undeploy request"),
        ] {
            let reason = parse_app_request("app.undeploy", payload.as_bytes()).unwrap_err();
            assert!(reason.contains(needle), "{payload}: {reason}");
        }
    }

    #[test]
    fn a_deploy_over_nats_is_the_clis_whatever_it_claims() {
        let claimed: DeployRequest = serde_json::from_value(serde_json::json!({
            "manifest": "x",
            "images": {},
            "source": {"kind": "file", "node_id": "NVICTIM", "node": "victim", "path": "/etc/lattice/a.yaml"}
        }))
        .unwrap();
        assert!(matches!(claimed.source, Source::File { .. }));
        let request = over_nats(claimed.clone());
        assert_eq!(request.source, Source::Cli);
        assert_eq!(request.manifest, claimed.manifest);
    }
}
