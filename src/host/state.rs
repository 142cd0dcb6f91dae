//! `HostState`, the data of every component `Store`: plain contexts with small view accessors,
//! as `wasmtime serve` keeps its `Host`. Also the stdout/stderr of guests, into tracing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// The data of one component instance's `Store`: one request's worth of state.
pub struct HostState {
    /// Resources handed to the guest (streams, requests, fields, …).
    pub(crate) table: ResourceTable,
    /// WASI 0.2 basics: empty environment, no preopens, every socket address denied.
    pub(crate) wasi: WasiCtx,
    /// wasi:http settings.
    pub(crate) http: WasiHttpCtx,
    /// Outgoing-HTTP policy: deny everything (no http-client link exists yet).
    pub(crate) http_hooks: DenyOutgoingHttp,
    /// Memory and instance limits of this store.
    pub(crate) limits: StoreLimits,
}

impl HostState {
    /// State for one instance of component `component` of app `app`, guest stdio into the log.
    pub(crate) fn new(app: &Arc<str>, component: &Arc<str>, limits: StoreLimits) -> HostState {
        let wasi = WasiCtx::builder()
            .stdout(GuestLog::new(app, component, "stdout"))
            .stderr(GuestLog::new(app, component, "stderr"))
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            http_hooks: DenyOutgoingHttp,
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

/// wasi:http hooks that deny every outgoing request with `HTTP-request-denied` (DESIGN.md §5:
/// outgoing hosts are granted only by an http-client link). The guest sees the interface's own
/// error code, never a trap.
pub(crate) struct DenyOutgoingHttp;

impl WasiHttpHooks for DenyOutgoingHttp {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        tracing::warn!(uri = %request.uri(), "outgoing HTTP request denied: no http-client link grants it");
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
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
