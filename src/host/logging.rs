//! Guest log lines into tracing: `wasi:logging/logging@0.1.0-draft` calls and the lines of a
//! guest's stdout/stderr (`state.rs`). Target `component`, with the app and component names
//! and the guest's `context` as fields; `critical` becomes ERROR with `critical=true`, since
//! tracing has no higher level.
//!
//! A guest never writes the node's log itself, so what it sends is made safe first:
//! - control characters (`\n`, `\r`, ESC, …, and U+2028/U+2029) are escaped (`\n`, `\r`,
//!   `\t`, else `\u{1b}`), so one `log` call (or one stdout line) is one log line and cannot
//!   forge another or drive a terminal;
//! - a message is cut at [`MAX_LINE_BYTES`] (on a char boundary) with a marker saying how many
//!   bytes were cut;
//! - lines are rate limited per component on this node ([`GuestLogLimiter`]: a burst of
//!   [`LOG_BURST`] lines, then [`LOG_LINES_PER_SECOND`]); dropped lines are counted and a
//!   `dropped N guest log lines` warning is logged at most once a second per component. A
//!   line the node's log filter drops anyway (`debug` under `--log info`) is not counted and
//!   takes nothing from the rate ([`GuestLogLimiter::admit_at`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::bindings::logging::logging::{self, Level};
use super::state::HostState;

/// Longest guest log line kept (message as escaped), in bytes; the rest is cut and counted.
pub const MAX_LINE_BYTES: usize = 4 * 1024;

/// Longest `context` of a `wasi:logging` call kept, in bytes (escaped).
const MAX_CONTEXT_BYTES: usize = 256;

/// Lines a component may log at once before the rate applies.
pub const LOG_BURST: u32 = 500;

/// Lines a component may log per second, all its instances on this node together, once its
/// burst is spent.
pub const LOG_LINES_PER_SECOND: u32 = 100;

/// How often, at most, the dropped lines of one component are reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// `text` made one safe log line: control characters escaped (see the module doc), then cut to
/// `max_bytes` on a char boundary with ` …[N bytes cut]` (N counting bytes of `text`, plus
/// `already_cut` bytes the caller dropped before).
pub fn one_line(text: &str, max_bytes: usize, already_cut: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes));
    let mut consumed = text.len();
    for (at, c) in text.char_indices() {
        let before = out.len();
        push_escaped(&mut out, c);
        if out.len() > max_bytes {
            out.truncate(before);
            consumed = at;
            break;
        }
    }
    let cut = text.len() - consumed + already_cut;
    if cut > 0 {
        let _ = write!(out, " …[{cut} bytes cut]");
    }
    out
}

/// `text` with its control characters (and U+2028/U+2029) escaped as [`one_line`] escapes
/// them, uncut: for text from elsewhere shown on a terminal or in a log (e.g. what other
/// nodes say of themselves in `lattice get hosts`).
pub fn escape_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// Pushes `c` onto `out`, escaped if it is a control character: `\n`, `\r`, `\t`, else
/// `\u{1b}`.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// The rate limit of one component's guest log lines on this node, shared by all its
/// instances (`wasi:logging`, stdout and stderr alike): a token bucket of `LOG_BURST` (500) lines
/// refilled at `LOG_LINES_PER_SECOND` (100) lines a second. Cheap to clone.
#[derive(Clone)]
pub struct GuestLogLimiter {
    inner: Arc<Limiter>,
}

struct Limiter {
    app: Arc<str>,
    component: Arc<str>,
    burst: f64,
    per_second: f64,
    bucket: Mutex<Bucket>,
    /// Lines dropped since the last report.
    dropped: AtomicU64,
    /// Whether a report is pending (a task will log `dropped`).
    reporting: AtomicBool,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl GuestLogLimiter {
    /// The limiter of component `component` of app `app`, with the default rate.
    pub fn new(app: Arc<str>, component: Arc<str>) -> GuestLogLimiter {
        GuestLogLimiter::with_rate(app, component, LOG_BURST, LOG_LINES_PER_SECOND)
    }

    /// A limiter letting `burst` lines through at once, then `per_second`.
    pub fn with_rate(
        app: Arc<str>,
        component: Arc<str>,
        burst: u32,
        per_second: u32,
    ) -> GuestLogLimiter {
        GuestLogLimiter {
            inner: Arc::new(Limiter {
                app,
                component,
                burst: f64::from(burst),
                per_second: f64::from(per_second),
                bucket: Mutex::new(Bucket {
                    tokens: f64::from(burst),
                    at: Instant::now(),
                }),
                dropped: AtomicU64::new(0),
                reporting: AtomicBool::new(false),
            }),
        }
    }

    /// Whether one more line may be logged now; a line refused is counted, and reported (with
    /// the others) within about a second.
    pub fn admit(&self) -> bool {
        let now = Instant::now();
        let admitted = {
            let mut bucket = self.inner.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let refill = now.duration_since(bucket.at).as_secs_f64() * self.inner.per_second;
            bucket.tokens = (bucket.tokens + refill).min(self.inner.burst);
            bucket.at = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                true
            } else {
                false
            }
        };
        if !admitted {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            report_later(&self.inner);
        }
        admitted
    }

    /// [`GuestLogLimiter::admit`] for a line at `level` (target `component`), when the node's
    /// log filter keeps such lines; `false`, and nothing taken from the rate or counted, when
    /// it does not.
    pub fn admit_at(&self, level: tracing::Level) -> bool {
        component_enabled(level) && self.admit()
    }

    /// Lines dropped and not reported yet.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

impl Limiter {
    /// Logs the lines dropped since the last report, if any; whether there were.
    fn report(&self) -> bool {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                target: "component",
                app = %self.app,
                component = %self.component,
                dropped,
                "dropped {dropped} guest log lines (over {LOG_BURST} at once or \
                 {LOG_LINES_PER_SECOND}/s)"
            );
        }
        dropped > 0
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.report();
    }
}

/// Starts the reporter of `limiter` unless one runs: a task that logs the dropped count a
/// second later, and every second after while lines are still dropped.
fn report_later(limiter: &Arc<Limiter>) {
    if limiter.reporting.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No runtime (not a host call): the count waits for the next drop or the limiter's end.
        limiter.reporting.store(false, Ordering::Release);
        return;
    };
    let weak: Weak<Limiter> = Arc::downgrade(limiter);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(REPORT_EVERY).await;
            // Gone: its drop reported what was left.
            let Some(limiter) = weak.upgrade() else {
                return;
            };
            if !limiter.report() {
                limiter.reporting.store(false, Ordering::Release);
                // A line dropped between the report and now found a reporter running.
                if limiter.dropped.load(Ordering::Relaxed) == 0
                    || limiter.reporting.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        }
    });
}

/// Whether the current subscriber keeps events of target `component` at `level`
/// (`tracing::enabled!` needs its level as a constant).
fn component_enabled(level: tracing::Level) -> bool {
    use tracing::Level as L;
    match level {
        L::TRACE => tracing::enabled!(target: "component", L::TRACE),
        L::DEBUG => tracing::enabled!(target: "component", L::DEBUG),
        L::INFO => tracing::enabled!(target: "component", L::INFO),
        L::WARN => tracing::enabled!(target: "component", L::WARN),
        _ => tracing::enabled!(target: "component", L::ERROR),
    }
}

impl logging::Host for HostState {
    fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
        let traced = match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error | Level::Critical => tracing::Level::ERROR,
        };
        if !self.grants.log_limiter.admit_at(traced) {
            return Ok(());
        }
        let message = one_line(&message, MAX_LINE_BYTES, 0);
        let context = one_line(&context, MAX_CONTEXT_BYTES, 0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_into_one_line() {
        assert_eq!(
            one_line(
                "line one\nINFO forged\r\x1b[31mred\t\u{7f}\u{2028}é",
                4096,
                0
            ),
            "line one\\nINFO forged\\r\\u{1b}[31mred\\t\\u{7f}\\u{2028}é"
        );
        assert_eq!(one_line("plain", 4096, 0), "plain");
        assert_eq!(
            escape_control("web\n\u{1b}[2Jx\u{2028}"),
            "web\\n\\u{1b}[2Jx\\u{2028}"
        );
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary_with_the_count() {
        let text = "é".repeat(3000); // 6000 bytes
        let line = one_line(&text, MAX_LINE_BYTES, 0);
        let (kept, marker) = line.split_once(" …[").unwrap();
        assert_eq!(kept.len(), 4096);
        assert_eq!(marker, "1904 bytes cut]");
        // Escapes count as what they become; a cut by the caller adds up.
        let line = one_line(&"\n".repeat(10), 5, 7);
        assert_eq!(line, "\\n\\n …[15 bytes cut]");
    }

    #[test]
    fn a_burst_then_the_rate_and_drops_are_counted() {
        let limiter = GuestLogLimiter::with_rate("a".into(), "c".into(), 10, 1);
        let admitted = (0..1000).filter(|_| limiter.admit()).count();
        // The burst, and at most a line or so refilled meanwhile.
        assert!((10..=11).contains(&admitted), "{admitted}");
        assert_eq!(limiter.dropped() as usize, 1000 - admitted);
    }

    #[test]
    fn lines_the_filter_drops_take_nothing_from_the_rate() {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let limiter = GuestLogLimiter::with_rate("a".into(), "c".into(), 10, 1);
            let debug = (0..1000)
                .filter(|_| limiter.admit_at(tracing::Level::DEBUG))
                .count();
            assert_eq!((debug, limiter.dropped()), (0, 0));
            let info = (0..10)
                .filter(|_| limiter.admit_at(tracing::Level::INFO))
                .count();
            assert_eq!(info, 10, "the debug lines spent the burst");
        });
    }
}
