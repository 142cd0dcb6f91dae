//! `HostState`, the data of every component `Store`: plain contexts with small view accessors,
//! as `wasmtime serve` keeps its `Host`. Also the stdout/stderr of guests, into tracing (escaped,
//! cut and rate limited as `logging.rs` says).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::grants::Grants;
use super::logging::{GuestLogLimiter, MAX_LINE_BYTES, one_line};
use crate::providers::http_client::{EgressClient, OutgoingHttp};

/// Most resources (streams, fields, requests, bucket handles, …) one instance may hold at once
/// in its [`ResourceTable`]: wasmtime's default (1,000,000) would let one instance hold that
/// many host objects (a stdout stream keeps up to a 4 KiB line) outside its memory limit. Past
/// it, the call creating one more traps.
pub const MAX_RESOURCES: usize = 10_000;

/// An empty resource table holding at most [`MAX_RESOURCES`].
fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

/// The data of one component instance's `Store`: one request's worth of state, or, with
/// instance reuse, the instance's (see [`HostState::next_request`] for what is per request).
pub struct HostState {
    /// Resources handed to the guest (streams, requests, fields, …).
    pub(crate) table: ResourceTable,
    /// WASI 0.2 basics: empty environment, no preopens, every socket address denied.
    pub(crate) wasi: WasiCtx,
    /// wasi:http settings.
    pub(crate) http: WasiHttpCtx,
    /// Outgoing-HTTP policy: only the hosts of the component's http-client links.
    pub(crate) http_hooks: OutgoingHttp,
    /// What the manifest grants the component: config, keyvalue buckets, outgoing hosts.
    pub(crate) grants: Arc<Grants>,
    /// Memory and instance limits of this store.
    pub(crate) limits: StoreLimits,
    /// Resources in the table after the instance's first request (set by
    /// [`HostState::reusable`]), the most a kept instance may hold.
    baseline: Option<usize>,
}

impl HostState {
    /// State for one instance of the component `grants` belongs to, guest stdio into the log,
    /// outgoing HTTP through `egress` (the component's pooled client).
    pub(crate) fn new(
        grants: &Arc<Grants>,
        limits: StoreLimits,
        egress: &EgressClient,
    ) -> HostState {
        let (app, component) = (&grants.app, &grants.component);
        let wasi = WasiCtx::builder()
            .stdout(GuestLog::new(grants, "stdout"))
            .stderr(GuestLog::new(grants, "stderr"))
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            table: resource_table(),
            wasi,
            http: WasiHttpCtx::new(),
            http_hooks: OutgoingHttp::new(
                grants.allowed_hosts.clone(),
                egress.clone(),
                app.clone(),
                component.clone(),
            ),
            grants: grants.clone(),
            limits,
            baseline: None,
        }
    }
}

impl HostState {
    /// Makes the per-request parts new for the next request of a reused instance: the
    /// wasi:http context and the one denial of the outgoing-HTTP hooks logged at WARN. The
    /// resource table, WASI context (stdio, clocks, random), the in-flight budget of outgoing
    /// requests and memory limit are the instance's and stay.
    pub(crate) fn next_request(&mut self) {
        self.http = WasiHttpCtx::new();
        self.http_hooks.next_request();
    }

    /// Whether the instance may serve another request, judged once `handle` returned: nothing
    /// of this request left in its resource table (a body, request or response, an outgoing
    /// request or its body: a guest that returns without finishing its outgoing body, or with
    /// a handle stashed, is not kept, and dropping its store ends that body), every outgoing
    /// request's permit back, and the table no larger than after the instance's first request
    /// (a guest leaking a handle per request is dropped long before the table's cap). The
    /// first call records that size.
    pub(crate) fn reusable(&mut self) -> Result<(), Unreusable> {
        use wasmtime_wasi_http::p2::body::{
            HostFutureTrailers, HostIncomingBody, HostOutgoingBody,
        };
        use wasmtime_wasi_http::p2::types::{
            HostFutureIncomingResponse, HostIncomingRequest, HostIncomingResponse,
            HostOutgoingRequest, HostOutgoingResponse, HostResponseOutparam,
        };
        let mut entries = 0;
        for entry in self.table.iter_mut() {
            let entry: &dyn std::any::Any = &*entry;
            if entry.is::<HostIncomingRequest>()
                || entry.is::<HostResponseOutparam>()
                || entry.is::<HostOutgoingResponse>()
                || entry.is::<HostOutgoingBody>()
                || entry.is::<HostIncomingBody>()
                || entry.is::<HostFutureTrailers>()
                || entry.is::<HostOutgoingRequest>()
                || entry.is::<HostFutureIncomingResponse>()
                || entry.is::<HostIncomingResponse>()
            {
                return Err(Unreusable::RequestResourceLeft);
            }
            entries += 1;
        }
        if !self.http_hooks.all_returned() {
            return Err(Unreusable::OutgoingInFlight);
        }
        let baseline = *self.baseline.get_or_insert(entries);
        if entries > baseline || entries > MAX_RESOURCES - RESOURCE_HEADROOM {
            return Err(Unreusable::TableGrew { entries, baseline });
        }
        Ok(())
    }
}

/// Room a kept instance's table always has left under [`MAX_RESOURCES`]: more than one
/// request's resources need (request, fields, body, outparam), so creating them never fails on
/// a reused instance for want of room (which would be a 400 blamed on the client).
const RESOURCE_HEADROOM: usize = 64;

/// Why an instance is not kept after a request that ended cleanly (logged at DEBUG).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unreusable {
    /// A resource of the request (body, request, response, outgoing request) is still in the
    /// table: the guest returned without finishing or dropping it.
    #[error("a resource of the request is left in the instance's table")]
    RequestResourceLeft,
    /// An outgoing request still holds a permit of the in-flight budget.
    #[error("an outgoing request of the instance is still in flight")]
    OutgoingInFlight,
    /// The table holds more resources than after the instance's first request.
    #[error(
        "the instance holds {entries} resources, more than the {baseline} after its first request"
    )]
    TableGrew { entries: usize, baseline: usize },
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// A guest's stdout or stderr: each line becomes a log event with the app and component names,
/// made safe as `wasi:logging` messages are (`logging.rs`: escaped, cut at
/// [`MAX_LINE_BYTES`], rate limited with the component's other lines).
#[derive(Clone)]
pub(crate) struct GuestLog {
    app: Arc<str>,
    component: Arc<str>,
    stream: &'static str,
    limiter: GuestLogLimiter,
}

impl GuestLog {
    fn new(grants: &Grants, stream: &'static str) -> GuestLog {
        GuestLog {
            app: grants.app.clone(),
            component: grants.component.clone(),
            stream,
            limiter: grants.log_limiter.clone(),
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.clone(),
            pending: Vec::new(),
            cut: 0,
        })
    }
}

/// Splits written bytes into lines (at `\n`); a partial last line is logged when the stream is
/// dropped. Holds at most [`MAX_LINE_BYTES`] of a line: the rest of a longer one is counted
/// and named in the line's cut marker.
struct LineWriter {
    log: GuestLog,
    pending: Vec<u8>,
    /// Bytes of the pending line dropped past [`MAX_LINE_BYTES`].
    cut: usize,
}

impl LineWriter {
    /// Adds `bytes` (no `\n` among them) to the pending line, as far as it has room.
    fn take(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.pending.len());
        let kept = room.min(bytes.len());
        self.pending.extend_from_slice(&bytes[..kept]);
        self.cut += bytes.len() - kept;
    }

    /// Logs the pending line (if the component's rate allows) and starts a new one.
    fn emit(&mut self) {
        let line = std::mem::take(&mut self.pending);
        let cut = std::mem::take(&mut self.cut);
        if !self.log.limiter.admit_at(tracing::Level::INFO) {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let text = one_line(text, MAX_LINE_BYTES, cut);
        tracing::info!(target: "component", app = %self.log.app, component = %self.log.component, stream = self.log.stream, "{text}");
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let mut rest = buf;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            this.take(&rest[..end]);
            this.emit();
            rest = &rest[end + 1..];
        }
        this.take(rest);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() || self.cut > 0 {
            self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_holds_at_most_max_resources() {
        let mut table = resource_table();
        for i in 0..MAX_RESOURCES {
            table.push(i).unwrap();
        }
        assert!(table.push(MAX_RESOURCES).is_err());
    }
}
