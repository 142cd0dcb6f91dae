//! `HostState`, the data of every component `Store`: plain contexts with small view accessors,
//! as `wasmtime serve` keeps its `Host`. Also the stdout/stderr of guests, into tracing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::grants::Grants;
use crate::providers::http_client::{EgressClient, OutgoingHttp};

/// The data of one component instance's `Store`: one request's worth of state.
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
            .stdout(GuestLog::new(app, component, "stdout"))
            .stderr(GuestLog::new(app, component, "stderr"))
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            table: ResourceTable::new(),
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

/// A guest's stdout or stderr: each line becomes a log event with the app and component names.
#[derive(Clone)]
pub(crate) struct GuestLog {
    app: Arc<str>,
    component: Arc<str>,
    stream: &'static str,
}

impl GuestLog {
    fn new(app: &Arc<str>, component: &Arc<str>, stream: &'static str) -> GuestLog {
        GuestLog {
            app: app.clone(),
            component: component.clone(),
            stream,
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
        })
    }
}

/// Splits written bytes into lines; a partial last line is logged when the stream is dropped.
struct LineWriter {
    log: GuestLog,
    pending: Vec<u8>,
}

/// Longest line kept before it is logged anyway, in bytes.
const MAX_LINE_BYTES: usize = 16 * 1024;

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
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
        this.pending.extend_from_slice(buf);
        while let Some(end) = this.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = this.pending.drain(..=end).collect();
            this.emit(&line);
        }
        if this.pending.len() > MAX_LINE_BYTES {
            let line = std::mem::take(&mut this.pending);
            this.emit(&line);
        }
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
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}
