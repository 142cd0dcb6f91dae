//! Finds the lattice's shared JetStream and keeps [`JetStreamState`] current: found (in which
//! domain), unreachable (why), found again, for as long as the node runs.
//!
//! Where a leaf node looks (nats-server 2.9 and 2.15 alike):
//! - The domain a hub's JetStream is in is in the INFO its leafnode port sends every new
//!   connection before anything else (`domain`, with `jetstream`: whether that server runs
//!   JetStream; `server/leafnode.go`, the leafnode `Info`). The node's nats-server reads it but
//!   shows it in no monitoring endpoint, so the node reads it too: it opens a TCP connection to
//!   the leaf URL, reads that one line and closes (a plain read: nats-server sends INFO before
//!   any TLS handshake). It does so at start, before the uplink stands (so that the first
//!   requests of the node already address that domain: [`SharedJetStream::context`]), whenever
//!   the uplink (re)connects, and every 30 s while nothing is found.
//! - Then it asks `$JS.<domain>.API.INFO` (the hub's domain, if it has one), then the plain
//!   `$JS.API.INFO` (a hub's JetStream without a domain, which the leaf's `default_js_domain`
//!   lets through, see [`super::server_config::render`]). The first that answers without an
//!   error is the one used; its answer names its domain too.
//!
//! A standalone node uses its own JetStream (`$JS.API`); a node on an external NATS asks
//! `$JS.API`, then the domain of the server it is connected to (its client INFO). `--js-domain`
//! overrides all of this: only that domain is asked.
//!
//! A domain read from an INFO is checked as `--js-domain` is, as a [`Name`]: it becomes one
//! token of `$JS.<domain>.API`. A hub naming another domain makes the JetStream unreachable,
//! with that reason; a server of an external NATS naming one is not asked in that domain.

use std::time::Duration;

use async_nats::jetstream;
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::jetstream::{JetStreamState, SharedJetStream};
use super::uplink::{Uplink, UplinkState};
use crate::name::Name;

/// How long one `$JS…API.INFO` request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the JetStream in use is asked whether it still answers.
const RECHECK: Duration = Duration::from_secs(5);
/// Failed probes in a row, beyond the first, that a JetStream found survives before it counts
/// as unreachable (while the uplink stands).
const FOUND_MISSES: u32 = 2;
/// How often an unreachable JetStream is looked for again (and at once when the uplink changes).
const RETRY: Duration = Duration::from_secs(2);
/// How often, at most, the remote's leafnode INFO is read while nothing is found.
const INFO_REREAD: Duration = Duration::from_secs(30);
/// How long reading the remote's INFO may take (connection included).
const INFO_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest INFO line read.
const MAX_INFO_LINE: u64 = 64 * 1024;
/// How long a starting leaf node's uplink may stay `connecting` before the JetStream counts as
/// unreachable (rather than still searched for).
const UPLINK_GRACE: Duration = Duration::from_secs(5);
/// nats-server's default leafnode port, for a leaf URL without one.
const DEFAULT_LEAF_PORT: u16 = 7422;

/// How the node reaches NATS, as discovery needs to know it.
#[derive(Debug, Clone)]
pub enum Reach {
    /// Its own nats-server with its own JetStream.
    Standalone,
    /// Its own nats-server as a leaf node of `remote`, whose uplink `uplink` follows.
    Leaf {
        /// The leaf URL (`--leaf-url`).
        remote: String,
        /// The uplink's state.
        uplink: watch::Receiver<Uplink>,
    },
    /// An external NATS (`--nats-url`).
    External,
}

/// What the node looks for and where.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// `--js-domain`: the only domain asked when given.
    pub configured: Option<String>,
    /// How the node reaches NATS.
    pub reach: Reach,
}

/// The part of a server's first INFO read here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RemoteInfo {
    /// `server_name`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Whether that server runs JetStream.
    #[serde(default)]
    pub jetstream: bool,
    /// Its JetStream domain (absent or empty: none).
    #[serde(default)]
    pub domain: Option<String>,
}

impl RemoteInfo {
    /// The domain, `None` when absent, empty or not a [`Name`] ([`RemoteInfo::domain_error`]
    /// says why).
    pub fn domain(&self) -> Option<&str> {
        self.domain
            .as_deref()
            .filter(|d| !d.is_empty() && Name::check(d).is_ok())
    }

    /// Why the domain this INFO names is not used, `None` when it is (or none is named).
    pub fn domain_error(&self) -> Option<String> {
        bad_domain(self.domain.as_deref())
    }
}

/// Why `domain` (from an INFO) is not used: it is not a [`Name`]. `None` for a valid, empty
/// or absent one.
fn bad_domain(domain: Option<&str>) -> Option<String> {
    let domain = domain.filter(|d| !d.is_empty())?;
    Name::check(domain).err().map(|e| {
        format!(
            "JetStream domain {e}; a domain becomes one token of $JS.<domain>.API, so the node \
             does not use it"
        )
    })
}

/// For a leaf node without `--js-domain`: why the JetStream is unreachable when the hub at
/// `remote` names, in its leafnode `info`, a domain that is not a [`Name`].
fn leaf_domain_refusal(
    remote: &str,
    configured: Option<&str>,
    info: Option<&Result<RemoteInfo, String>>,
) -> Option<String> {
    match (configured, info) {
        (None, Some(Ok(info))) => info
            .domain_error()
            .map(|e| format!("the hub at {remote} names in its leafnode INFO a {e}")),
        _ => None,
    }
}

/// Host and port of a leaf URL: `nats-leaf://host:port`, `nats://…`, `tls://…` (port 7422 when
/// absent; user info ignored).
///
/// # Errors
/// Not a URL, no host, or a websocket URL (`ws://`, `wss://`, whose INFO comes after an HTTP
/// upgrade this reader does not do).
pub fn leaf_address(url: &str) -> Result<(String, u16), String> {
    let shown = super::redact::redact_url(url);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("leaf URL {shown:?}: {e}"))?;
    if let Some(scheme @ ("ws" | "wss")) = uri.scheme_str() {
        return Err(format!(
            "leaf URL {shown:?}: a {scheme} remote's INFO is not read (it follows an HTTP upgrade)"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("leaf URL {shown:?}: no host"))?;
    Ok((
        authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        authority.port_u16().unwrap_or(DEFAULT_LEAF_PORT),
    ))
}

/// Reads the INFO line the leafnode port at `url` sends on accepting a connection
/// (`INFO {json}\r\n`, nats-server's protocol), then closes the connection.
///
/// # Errors
/// The URL is not one [`leaf_address`] takes, the connection or the read failed or took more
/// than 3 s, or the first line is not an INFO.
pub async fn read_remote_info(url: &str) -> Result<RemoteInfo, String> {
    let (host, port) = leaf_address(url)?;
    let read = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let mut line = String::new();
        tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(stream, MAX_INFO_LINE))
            .read_line(&mut line)
            .await
            .map_err(|e| format!("reading {host}:{port}: {e}"))?;
        let json = line
            .strip_prefix("INFO ")
            .ok_or_else(|| format!("{host}:{port} did not start with INFO"))?;
        serde_json::from_str::<RemoteInfo>(json.trim())
            .map_err(|e| format!("the INFO of {host}:{port}: {e}"))
    };
    tokio::time::timeout(INFO_TIMEOUT, read)
        .await
        .map_err(|_| format!("no INFO from {host}:{port} within {INFO_TIMEOUT:?}"))?
}

/// One domain to ask, and where the node learnt of it (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    domain: Option<String>,
    source: &'static str,
}

/// Asks `$JS[.<domain>].API.INFO` on `client`; `Ok` with the domain its answer names.
async fn probe(
    client: &async_nats::Client,
    domain: Option<&str>,
) -> Result<Option<String>, String> {
    let js = match domain {
        Some(domain) => jetstream::with_domain(client.clone(), domain),
        None => jetstream::new(client.clone()),
    };
    // The raw answer: async-nats's `query_account` expects fields nats-server 2.9 does not send.
    let answer = js.request::<_, _, serde_json::Value>("INFO", &());
    match tokio::time::timeout(PROBE_TIMEOUT, answer).await {
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(answer)) => match answer.get("error") {
            Some(error) => Err(error["description"]
                .as_str()
                .unwrap_or("an error")
                .to_owned()),
            None => Ok(answer["domain"].as_str().map(str::to_owned)),
        },
    }
}

/// The subject prefix of `domain`, for messages.
fn api_prefix(domain: Option<&str>) -> String {
    match domain {
        Some(domain) => format!("$JS.{domain}.API"),
        None => "$JS.API".to_owned(),
    }
}

/// Asks each candidate in turn: the first that answers, or why none did.
async fn find(
    client: &async_nats::Client,
    candidates: &[Candidate],
) -> Result<Candidate, Vec<String>> {
    let mut failures = Vec::new();
    for candidate in candidates {
        match probe(client, candidate.domain.as_deref()).await {
            Ok(_) => return Ok(candidate.clone()),
            Err(e) => failures.push(format!(
                "{}.INFO: {e}",
                api_prefix(candidate.domain.as_deref())
            )),
        }
    }
    Err(failures)
}

/// How long [`Discovery::prime`] waits for the remote's INFO at most.
const PRIME_TIMEOUT: Duration = Duration::from_secs(1);

impl Discovery {
    /// Before the node's users of `shared` start: in leaf mode without `--js-domain`, reads the
    /// remote's leafnode INFO (1 s at most) and has `shared` address its domain until one is
    /// found, so their first requests do not go to the wrong prefix.
    pub async fn prime(&self, shared: &SharedJetStream) {
        let Reach::Leaf { remote, .. } = &self.reach else {
            return;
        };
        if self.configured.is_some() {
            return;
        }
        if let Ok(Ok(info)) = tokio::time::timeout(PRIME_TIMEOUT, read_remote_info(remote)).await {
            shared.expect(info.domain().map(str::to_owned));
        }
    }
}

/// Finds the shared JetStream as `discovery` says and keeps `state` current, until `shutdown`:
/// asks the one in use every 5 s, looks again at once when it stops answering or the uplink
/// changes, and every 2 s while none answers. Logs each change: which domain is used and how it
/// was learnt (info), unreachable and why (warn).
pub async fn watch_jetstream(
    shared: SharedJetStream,
    state: watch::Sender<JetStreamState>,
    discovery: Discovery,
    shutdown: CancellationToken,
) {
    let client = shared.client().clone();
    let started = Instant::now();
    let mut uplink = match &discovery.reach {
        Reach::Leaf { uplink, .. } => Some(uplink.clone()),
        _ => None,
    };
    // The remote's INFO: read once per uplink connection, and again now and then while nothing
    // is found.
    let mut remote_info: Option<(Instant, Result<RemoteInfo, String>)> = None;
    let mut was_connected = false;
    let mut misses = 0;
    loop {
        let outcome = match &discovery.reach {
            Reach::Leaf { remote, .. } => {
                let shown = super::redact::redact_url(remote);
                let now = uplink
                    .as_ref()
                    .map(|u| u.borrow().clone())
                    .unwrap_or_else(|| Uplink::fixed(UplinkState::Connected, None));
                let connected = now.state == UplinkState::Connected;
                if connected && !was_connected {
                    remote_info = None;
                }
                was_connected = connected;
                // Read at once, before the uplink stands (it is a connection of its own), and
                // again after each (re)connection and now and then while nothing is found.
                let stale = remote_info.as_ref().is_none_or(|(at, _)| {
                    !matches!(&*state.borrow(), JetStreamState::Found { .. })
                        && at.elapsed() >= INFO_REREAD
                });
                if stale && discovery.configured.is_none() {
                    let info = read_remote_info(remote).await;
                    match &info {
                        Ok(info) => {
                            tracing::debug!(
                                remote = shown,
                                server = info.server_name.as_deref().unwrap_or("-"),
                                jetstream = info.jetstream,
                                domain = info.domain().unwrap_or("(none)"),
                                "read the remote's leafnode INFO"
                            );
                            shared.expect(info.domain().map(str::to_owned));
                        }
                        Err(e) => {
                            tracing::debug!(
                                remote = shown,
                                error = e,
                                "reading the remote's leafnode INFO"
                            )
                        }
                    }
                    remote_info = Some((Instant::now(), info));
                }
                let info = remote_info.as_ref().map(|(_, info)| info);
                if !connected {
                    leaf_not_connected(&now, started)
                } else if let Some(reason) =
                    leaf_domain_refusal(&shown, discovery.configured.as_deref(), info)
                {
                    Some(Err(reason))
                } else {
                    let candidates = leaf_candidates(discovery.configured.as_deref(), info);
                    Some(find(&client, &candidates).await.map_err(|failures| {
                        unreachable_reason(&shown, info, discovery.configured.as_deref(), failures)
                    }))
                }
            }
            Reach::Standalone | Reach::External => {
                let server_domain = matches!(discovery.reach, Reach::External)
                    .then(|| client.server_info().domain)
                    .flatten();
                let skipped = bad_domain(server_domain.as_deref());
                let candidates = direct_candidates(
                    discovery.configured.as_deref(),
                    server_domain.filter(|_| skipped.is_none()),
                );
                Some(find(&client, &candidates).await.map_err(|failures| {
                    let not_asked = skipped
                        .as_ref()
                        .map(|e| format!(" (the server's INFO names a {e})"))
                        .unwrap_or_default();
                    format!("no JetStream answered: {}{not_asked}", failures.join("; "))
                }))
            }
        };
        // A JetStream found is not given up on one failed probe (a busy hub, a leader
        // election): only after FOUND_MISSES in a row, RETRY apart. A leaf whose uplink is down
        // says so at once (`leaf_not_connected`).
        let outcome = match outcome {
            Some(Err(_))
                if misses < FOUND_MISSES
                    && matches!(&*state.borrow(), JetStreamState::Found { .. })
                    && was_connected_or_direct(&discovery.reach, was_connected) =>
            {
                misses += 1;
                None
            }
            Some(Ok(found)) => {
                misses = 0;
                Some(Ok(found))
            }
            other => other,
        };
        if let Some(outcome) = outcome {
            report(&state, outcome);
        }
        let wait = if matches!(&*state.borrow(), JetStreamState::Found { .. }) && misses == 0 {
            RECHECK
        } else {
            RETRY
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = uplink_changed(&mut uplink) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Whether a failed probe was a probe of the JetStream itself: the uplink of a leaf stands, or
/// the node reaches its NATS directly.
fn was_connected_or_direct(reach: &Reach, leaf_connected: bool) -> bool {
    !matches!(reach, Reach::Leaf { .. }) || leaf_connected
}

/// What a leaf node whose uplink does not stand can say of the JetStream: still searching in
/// the first seconds of a start, else unreachable, naming the uplink's state and error.
fn leaf_not_connected(uplink: &Uplink, started: Instant) -> Option<Result<Candidate, String>> {
    if uplink.state == UplinkState::Connecting && started.elapsed() < UPLINK_GRACE {
        return None;
    }
    let error = uplink
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    Some(Err(format!(
        "the leaf uplink to {} does not stand ({}{error})",
        uplink.remote.as_deref().unwrap_or("the hub"),
        uplink.state.as_str()
    )))
}

/// The domains a leaf node asks: `--js-domain` alone, else the remote's INFO domain (if it
/// names one), then none.
fn leaf_candidates(
    configured: Option<&str>,
    info: Option<&Result<RemoteInfo, String>>,
) -> Vec<Candidate> {
    if let Some(domain) = configured {
        return vec![Candidate {
            domain: Some(domain.to_owned()),
            source: "--js-domain",
        }];
    }
    let mut candidates = Vec::new();
    if let Some(Ok(info)) = info
        && let Some(domain) = info.domain()
    {
        candidates.push(Candidate {
            domain: Some(domain.to_owned()),
            source: "the hub's leafnode INFO",
        });
    }
    candidates.push(Candidate {
        domain: None,
        source: "no domain",
    });
    candidates
}

/// The domains a standalone or external node asks: `--js-domain` alone, else none, then the
/// domain its server's INFO names (external mode).
fn direct_candidates(configured: Option<&str>, server_domain: Option<String>) -> Vec<Candidate> {
    if let Some(domain) = configured {
        return vec![Candidate {
            domain: Some(domain.to_owned()),
            source: "--js-domain",
        }];
    }
    let mut candidates = vec![Candidate {
        domain: None,
        source: "no domain",
    }];
    if let Some(domain) = server_domain.filter(|d| !d.is_empty()) {
        candidates.push(Candidate {
            domain: Some(domain),
            source: "the server's INFO",
        });
    }
    candidates
}

/// Why a leaf node found no JetStream, with what to do about it.
fn unreachable_reason(
    remote: &str,
    info: Option<&Result<RemoteInfo, String>>,
    configured: Option<&str>,
    failures: Vec<String>,
) -> String {
    let asked = failures.join("; ");
    let hint = match (configured, info) {
        (Some(_), _) => String::new(),
        (None, Some(Ok(info))) if !info.jetstream => {
            format!(" (the hub at {remote} says it runs no JetStream)")
        }
        (None, Some(Ok(info))) if info.domain().is_none() => format!(
            " (the hub at {remote} runs JetStream without a domain, which nats-server keeps \
             from leaf nodes unless the hub maps their account: `default_js_domain: \
             {{ <ACCOUNT>: \"\" }}` in the hub's config, or give its JetStream a domain)"
        ),
        (None, Some(Ok(_))) => String::new(),
        (None, Some(Err(e))) => format!(
            " (the hub's JetStream domain is not known: {e}; pass --js-domain if it has one)"
        ),
        (None, None) => String::new(),
    };
    format!("no JetStream answered: {asked}{hint}")
}

/// Sets `state` from `outcome`, logging a change.
fn report(state: &watch::Sender<JetStreamState>, outcome: Result<Candidate, String>) {
    let next = match &outcome {
        Ok(found) => JetStreamState::Found {
            domain: found.domain.clone(),
        },
        Err(reason) => JetStreamState::Unreachable {
            reason: reason.clone(),
        },
    };
    // Receivers are woken only by a change: a probe finding what the last one found is no news
    // (each wake-up of the config-dir watcher retries its failed manifests).
    let mut before = None;
    state.send_if_modified(|current| {
        if *current == next {
            return false;
        }
        before = Some(std::mem::replace(current, next.clone()));
        true
    });
    let Some(before) = before else { return };
    match &outcome {
        Ok(found) => tracing::info!(
            domain = found.domain.as_deref().unwrap_or("(none)"),
            api = api_prefix(found.domain.as_deref()),
            source = found.source,
            "JetStream found: the lattice's store is reached through {}",
            api_prefix(found.domain.as_deref())
        ),
        Err(reason) => {
            // A reason that only changes its wording while unreachable is no news.
            if !matches!(before, JetStreamState::Unreachable { .. }) {
                tracing::warn!(error = reason, "JetStream not reachable");
            } else {
                tracing::debug!(error = reason, "JetStream still not reachable");
            }
        }
    }
}

/// Waits until `uplink` changes (forever without one, or once its sender is gone).
async fn uplink_changed(uplink: &mut Option<watch::Receiver<Uplink>>) {
    match uplink {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *uplink = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_urls_give_host_and_port() {
        assert_eq!(
            leaf_address("nats-leaf://127.0.0.1:17422"),
            Ok(("127.0.0.1".to_owned(), 17422))
        );
        assert_eq!(
            leaf_address("tls://connect.ngs.global"),
            Ok(("connect.ngs.global".to_owned(), 7422))
        );
        assert_eq!(
            leaf_address("nats-leaf://user:pw@[::1]:7000"),
            Ok(("::1".to_owned(), 7000))
        );
        assert!(leaf_address("wss://hub:443").unwrap_err().contains("wss"));
    }

    #[test]
    fn the_hubs_domain_is_asked_first_then_none() {
        let info: Result<RemoteInfo, String> =
            serde_json::from_str(r#"{"server_id":"N","server_name":"hub","jetstream":true,"domain":"hub","leafnode_urls":[]}"#)
                .map_err(|e| e.to_string());
        let domains: Vec<_> = leaf_candidates(None, Some(&info))
            .into_iter()
            .map(|c| c.domain)
            .collect();
        assert_eq!(domains, [Some("hub".to_owned()), None]);
        let plain: Result<RemoteInfo, String> = Ok(RemoteInfo {
            domain: Some(String::new()),
            ..RemoteInfo::default()
        });
        assert_eq!(leaf_candidates(None, Some(&plain)).len(), 1);
        let forced = leaf_candidates(Some("ngs"), Some(&info));
        assert_eq!(forced.len(), 1);
        assert_eq!(forced[0].domain.as_deref(), Some("ngs"));
        assert_eq!(
            direct_candidates(None, Some("edge".into()))
                .into_iter()
                .map(|c| c.domain)
                .collect::<Vec<_>>(),
            [None, Some("edge".to_owned())]
        );
    }

    #[test]
    fn a_hub_domain_that_is_not_a_name_is_not_used_and_says_why() {
        let info: Result<RemoteInfo, String> = Ok(RemoteInfo {
            jetstream: true,
            domain: Some("hub.>".into()),
            ..RemoteInfo::default()
        });
        assert_eq!(info.as_ref().unwrap().domain(), None);
        let domains: Vec<_> = leaf_candidates(None, Some(&info))
            .into_iter()
            .map(|c| c.domain)
            .collect();
        assert_eq!(domains, [None], "never asked in that domain");
        let reason = leaf_domain_refusal("nats-leaf://hub:7422", None, Some(&info)).unwrap();
        for needle in [
            "the hub at nats-leaf://hub:7422 names in its leafnode INFO a JetStream domain",
            "\"hub.>\": '.' is not allowed",
            "$JS.<domain>.API",
        ] {
            assert!(reason.contains(needle), "{needle:?} in {reason}");
        }
        // --js-domain overrides the INFO; a valid or absent domain is no refusal.
        assert_eq!(leaf_domain_refusal("hub", Some("ngs"), Some(&info)), None);
        let good = Ok(RemoteInfo {
            domain: Some("hub".into()),
            ..RemoteInfo::default()
        });
        assert_eq!(leaf_domain_refusal("hub", None, Some(&good)), None);
        assert_eq!(bad_domain(Some("")), None);
        assert_eq!(bad_domain(None), None);
    }

    #[test]
    fn a_probe_finding_what_the_last_found_wakes_no_receiver() {
        let (tx, mut rx) = watch::channel(JetStreamState::Searching);
        let found = || {
            Ok(Candidate {
                domain: Some("hub".into()),
                source: "test",
            })
        };
        report(&tx, found());
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        report(&tx, found());
        assert!(
            !rx.has_changed().unwrap(),
            "an unchanged state woke the receiver"
        );
        report(&tx, Err("no responders".into()));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        report(&tx, Err("no responders".into()));
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn an_unreachable_reason_says_what_was_asked_and_what_the_hub_said() {
        let info = Ok(RemoteInfo::default());
        let reason = unreachable_reason(
            "nats-leaf://hub:7422",
            Some(&info),
            None,
            vec!["$JS.API.INFO: no responders".into()],
        );
        assert!(reason.contains("$JS.API.INFO: no responders"), "{reason}");
        assert!(reason.contains("runs no JetStream"), "{reason}");
    }
}
