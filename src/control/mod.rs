//! The control API: NATS request/reply with JSON payloads (`PROTOCOL.md` §Control API), served
//! by every node with the async-nats service API (so `$SRV.PING`/`INFO`/`STATS` work too), in
//! one queue group so one node answers each request. `client` holds the CLI side.

pub mod client;

use std::sync::Arc;

use anyhow::Context;
use async_nats::service::ServiceExt as _;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::lattice::membership::{ComponentReplicas, HostInfo, Membership};
use crate::nats::subjects;

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

/// Serves the control API of `lattice` from `membership` until `shutdown`.
///
/// # Errors
/// The service or its endpoints cannot be registered.
pub async fn serve(
    client: async_nats::Client,
    lattice: &str,
    membership: Arc<Membership>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let service = client
        .service_builder()
        .description(format!("lattice control API of lattice {lattice}"))
        .start(
            subjects::control_service(lattice),
            env!("CARGO_PKG_VERSION"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("starting the control service")?;
    let group = service.group(subjects::control(lattice));
    let mut hosts = group
        .endpoint(subjects::CTL_GET_HOSTS)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("adding the get.hosts endpoint")?;
    let mut inventory = group
        .endpoint(subjects::CTL_GET_INVENTORY)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("adding the get.inventory endpoint")?;
    let lattice = lattice.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            let (request, reply) = tokio::select! {
                Some(request) = hosts.next() => {
                    let reply = to_json(&CtlResponse::ok(membership.hosts()));
                    (request, reply)
                }
                Some(request) = inventory.next() => {
                    let reply = to_json(&inventory_reply(&membership, &lattice, &request.message.payload));
                    (request, reply)
                }
                () = shutdown.cancelled() => break,
                else => break,
            };
            if let Err(e) = request.respond(Ok(reply.into())).await {
                tracing::debug!(error = %e, "answering a control request failed");
            }
        }
        let _ = service.stop().await;
    }))
}

fn inventory_reply(
    membership: &Membership,
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
    let hosts: Vec<HostInfo> = membership
        .hosts()
        .into_iter()
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
                id: h.id,
                name: h.name,
                components: h.components,
            })
            .collect(),
    )
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
