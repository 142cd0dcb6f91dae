//! `lattice`: one binary that turns a machine into a node of a WebAssembly application lattice.
//!
//! The node supervises its own `nats-server`, hosts `wasi:http` components with wasmtime, serves
//! them over HTTP, and runs its share of the lattice's applications (wadm manifests, deployed
//! from any node's config directory or the CLI) as placed by its built-in reconciler.
//! See `DESIGN.md` (shared with the team) for the architecture; the modules follow its tree.
#![deny(missing_docs)]

use std::process::ExitCode;

pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod host;
pub mod init;
pub mod lattice;
pub mod name;
pub mod nats;
pub mod node;
pub mod private_file;
pub mod providers;
pub mod reconciler;
pub mod supervisor;

/// Keeps `RUST_BACKTRACE=1` from making every error capture a host backtrace: sets
/// `RUST_LIB_BACKTRACE=0` unless the user set `RUST_LIB_BACKTRACE` themselves. Panics keep their
/// backtraces (`RUST_BACKTRACE` alone governs those).
///
/// Why: wasmtime reports every guest trap as an error that, like anyhow's, captures (and, when
/// the error is logged, symbolizes) a backtrace of the host whenever `RUST_BACKTRACE=1` is set,
/// which service environments often set. That made a failed request cost ~20-40 KB of log and
/// the first one ~80-200 MiB of RSS for the debug info; a trap now costs the same whatever the
/// environment says. Errors keep their cause chain (and a trap its guest stack), which is what
/// the node logs.
///
/// Call it first in `main`, before any thread starts: it changes the process environment.
pub fn no_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called at the top of `main`, before the program starts any thread, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Makes a panic of `lattice up` a log event when the log is JSON (`--log-format json`), so
/// that every line the node writes stays one JSON object: `tracing::error!` with the panic's
/// message (`panic`), its `location` (file:line:column), the `thread`, and a `backtrace` when
/// `RUST_BACKTRACE` asks for one. In text mode the standard hook's output (for people, with
/// its backtrace hint) stays as it is. Call it after the subscriber is installed.
pub fn install_panic_hook(format: admin::telemetry::LogFormat) {
    if format != admin::telemetry::LogFormat::Json {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a payload that is not a string)".to_owned());
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(panic = message, location, thread, backtrace = %backtrace, "panicked");
        } else {
            tracing::error!(panic = message, location, thread, "panicked");
        }
    }));
}

/// Runs the command the user gave: the whole program behind `main`.
///
/// # Errors
/// Any error that stops the command: bad flags or config file, a node that cannot start, …
/// `main` prints it with its whole cause chain.
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Up(args) => {
            // `--log-format json` (or its env var) holds for an invalid config too; the config
            // file's `log-format` is not known when the config is what failed.
            let json_asked = args.log_format == Some(admin::telemetry::LogFormat::Json);
            let config = match config::NodeConfig::resolve(*args) {
                Ok(config) => config,
                Err(e) if json_asked => {
                    let _telemetry = admin::telemetry::init(&admin::telemetry::Settings {
                        filter: "info".to_owned(),
                        format: admin::telemetry::LogFormat::Json,
                        otlp_endpoint: None,
                        node_name: String::new(),
                    })?;
                    tracing::error!(error = format!("{e:#}"), "lattice node failed");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e),
            };
            let _telemetry = admin::telemetry::init(&admin::telemetry::Settings {
                filter: config.log_filter.clone(),
                format: config.log_format,
                otlp_endpoint: config.otlp_endpoint.clone(),
                node_name: config.name.clone(),
            })?;
            install_panic_hook(config.log_format);
            let json = config.log_format == admin::telemetry::LogFormat::Json;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("lattice")
                .build()?;
            let result = runtime.block_on(node::run(config));
            // Blocking work still running (a compile nobody waits for any more) must not hold
            // the exit: dropping a runtime would wait for it without bound.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            match result {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "lattice node failed");
                    // Under JSON every line is JSON: the log line is the report. Text mode
                    // also gets `main`'s plain `error: …` line.
                    if json { Ok(ExitCode::FAILURE) } else { Err(e) }
                }
            }
        }
        cli::Command::Get(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(control::client::get(args.what))
        }
        cli::Command::App(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(control::client::app(args.command))
        }
        cli::Command::Push(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(control::client::push(args))
        }
        cli::Command::Init(args) => init::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer, for a test subscriber.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(bytes)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn under_json_a_panic_is_one_json_event_with_its_message_and_location() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        super::install_panic_hook(crate::admin::telemetry::LogFormat::Json);
        let line = line!() + 3;
        tracing::subscriber::with_default(subscriber, || {
            let result = std::panic::catch_unwind(|| {
                panic!("boom {}", 42);
            });
            assert!(result.is_err());
        });
        let _ = std::panic::take_hook();
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        let fields = &lines[0]["fields"];
        assert_eq!(lines[0]["level"], "ERROR", "{text}");
        assert_eq!(fields["message"], "panicked", "{text}");
        assert_eq!(fields["panic"], "boom 42", "{text}");
        let location = fields["location"].as_str().unwrap();
        assert!(
            location.starts_with(&format!("src/lib.rs:{line}:")),
            "{text}"
        );
    }
}
