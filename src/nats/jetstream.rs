//! The lattice's shared JetStream as this node finds it: the one handle every user of the
//! shared store (desired state, artifacts, keyvalue-nats buckets) asks for a
//! [`jetstream::Context`], so that what the node learns about the JetStream (found in a domain,
//! unreachable, found again) reaches all of them at once.

use std::sync::{Arc, RwLock};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Whether the lattice's shared JetStream is reachable from this node, and where. As JSON (the
/// `get.config` reply): `{"state":"searching"}`, `{"state":"found","domain":"hub"}` (`null`:
/// none), `{"state":"unreachable","reason":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JetStreamState {
    /// Not known yet: the node is still looking.
    Searching,
    /// Reachable; it answers in `domain` (`None`: the plain `$JS.API` prefix).
    Found {
        /// The JetStream domain, if it has one.
        domain: Option<String>,
    },
    /// None reachable now.
    Unreachable {
        /// Why, as the last attempt saw it.
        reason: String,
    },
}

/// The node's handle on the shared JetStream. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct SharedJetStream {
    client: async_nats::Client,
    /// The domain to use while none has been found (`--js-domain`, or none).
    configured: Option<String>,
    /// Without `configured`: the domain discovery expects before it has found one (the hub's
    /// leafnode INFO says it, read before the uplink stands), so the first requests of a
    /// starting node already address it.
    expected: Arc<RwLock<Option<String>>>,
    state: watch::Receiver<JetStreamState>,
}

impl SharedJetStream {
    /// A handle over `client` that starts [`JetStreamState::Searching`], addressing `configured`
    /// (`--js-domain`) until something is found; the sender sets what is found.
    pub fn new(
        client: async_nats::Client,
        configured: Option<String>,
    ) -> (SharedJetStream, watch::Sender<JetStreamState>) {
        let (tx, state) = watch::channel(JetStreamState::Searching);
        (
            SharedJetStream {
                client,
                configured,
                expected: Arc::default(),
                state,
            },
            tx,
        )
    }

    /// A handle whose JetStream is taken as found in `domain`, never looked for (the CLI, which
    /// is told the domain by a node).
    pub fn fixed(client: async_nats::Client, domain: Option<String>) -> SharedJetStream {
        let (_, state) = watch::channel(JetStreamState::Found {
            domain: domain.clone(),
        });
        SharedJetStream {
            client,
            configured: domain,
            expected: Arc::default(),
            state,
        }
    }

    /// A context addressing the JetStream found, else the configured domain's, else the one
    /// discovery expects.
    pub fn context(&self) -> jetstream::Context {
        match self.domain() {
            Some(domain) => jetstream::with_domain(self.client.clone(), domain),
            None => jetstream::new(self.client.clone()),
        }
    }

    /// The domain [`SharedJetStream::context`] addresses now: the one found, else the
    /// configured one, else the one discovery expects (`None`: the plain `$JS.API` prefix).
    pub fn domain(&self) -> Option<String> {
        match &*self.state.borrow() {
            JetStreamState::Found { domain } => domain.clone(),
            _ => self.configured.clone().or_else(|| {
                self.expected
                    .read()
                    .map(|expected| expected.clone())
                    .unwrap_or_default()
            }),
        }
    }

    /// Sets the domain to address until one is found (discovery's first guess).
    pub(crate) fn expect(&self, domain: Option<String>) {
        if let Ok(mut expected) = self.expected.write() {
            *expected = domain;
        }
    }

    /// The NATS connection it uses.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The state now.
    pub fn state(&self) -> JetStreamState {
        self.state.borrow().clone()
    }

    /// Follows the state as it changes.
    pub fn subscribe(&self) -> watch::Receiver<JetStreamState> {
        self.state.clone()
    }
}
