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
        }
    }
}

impl HostState {
    /// Makes the per-request parts new for the next request of a reused instance: the
    /// wasi:http context and the outgoing-HTTP hooks (their in-flight budget and the one
    /// denial logged at WARN), from `egress` and the grants. The resource table, WASI context
    /// (stdio, clocks, random) and memory limit are the instance's and stay.
    pub(crate) fn next_request(&mut self, egress: &EgressClient) {
        self.http = WasiHttpCtx::new();
        self.http_hooks = OutgoingHttp::new(
            self.grants.allowed_hosts.clone(),
            egress.clone(),
            self.grants.app.clone(),
            self.grants.component.clone(),
        );
    }
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
