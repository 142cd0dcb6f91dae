//! `wasi:logging/logging@0.1.0-draft` into tracing: target `component`, with the app and
//! component names and the guest's `context` as fields; `critical` becomes ERROR with
//! `critical=true`, since tracing has no higher level.

use super::bindings::logging::logging::{self, Level};
use super::state::HostState;

/// Longest message kept, in bytes; longer ones are cut (at a char boundary) and marked.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

impl logging::Host for HostState {
    fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(" …(cut)");
        }
        let app = &*self.grants.app;
        let component = &*self.grants.component;
        match level {
            Level::Trace => {
                tracing::trace!(target: "component", app = %app, component = %component, context = %context, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "component", app = %app, component = %component, context = %context, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "component", app = %app, component = %component, context = %context, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "component", app = %app, component = %component, context = %context, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "component", app = %app, component = %component, context = %context, "{message}")
            }
            Level::Critical => {
                tracing::error!(target: "component", app = %app, component = %component, context = %context, critical = true, "{message}")
            }
        }
        Ok(())
    }
}
