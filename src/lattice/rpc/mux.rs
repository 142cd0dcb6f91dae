//! One NATS subscription (`<inbox>.*`) shared by every RPC exchange of this node, as async-nats
//! does for its own requests: an exchange gets the subject `<inbox>.<n>` and the frames sent to
//! it, split into acks (for the body it sends) and everything else (for what it receives).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::wire::{FrameKind, seq_of};

/// Pushed into an exchange's acks when its peer gave up: a sender stops.
pub const CANCEL: u64 = u64::MAX;

/// Frames one exchange may have queued before it counts as stuck. The window of unacknowledged
/// `data` frames is far smaller, so only a misbehaving peer fills this.
const QUEUE: usize = 64;

/// The shared reply subscription and its routing table.
pub struct Mux {
    prefix: String,
    next: AtomicU64,
    routes: Arc<Mutex<HashMap<u64, Route>>>,
    client: async_nats::Client,
    /// The subscription made at start, until the first [`Mux::route`] takes it.
    first: Mutex<Option<async_nats::Subscriber>>,
}

struct Route {
    acks: mpsc::Sender<u64>,
    frames: mpsc::Sender<Inbound>,
}

/// A frame as an exchange receives it. Boxed so that an exchange's queue is small: tokio's
/// bounded channel allocates its first block of 32 slots when it is made, which for a bare
/// `Message` (~180 bytes) is a ~6 KiB allocation per exchange, and glibc merges all its free
/// small chunks on every allocation that large (`malloc_consolidate`): measurable at tens of
/// thousands of exchanges a second. Most exchanges receive one or two frames.
pub type Inbound = Box<async_nats::Message>;

/// The receiving side of one exchange. Dropping both halves stops its routing.
pub struct Exchange {
    /// The subject peers send this exchange's frames to.
    pub subject: String,
    /// Sequence numbers of `ack` frames received, and [`CANCEL`] when the peer gave up (an
    /// `error` frame, or NATS reporting no responders for a frame sent).
    pub acks: Option<mpsc::Receiver<u64>>,
    /// Every other frame received, in order (including NATS no-responders statuses).
    pub frames: mpsc::Receiver<Inbound>,
    /// Removes the route when the last holder drops it.
    pub guard: Arc<RouteGuard>,
}

/// Removes an exchange's route on drop.
pub struct RouteGuard {
    id: u64,
    routes: Arc<Mutex<HashMap<u64, Route>>>,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.remove(&self.id);
        }
    }
}

impl Mux {
    /// Subscribes to a fresh inbox of `client`. What arrives waits in the subscription until
    /// [`Mux::route`] runs, so exchanges may be opened at once.
    ///
    /// # Errors
    /// The subscription cannot be made.
    pub async fn start(client: &async_nats::Client) -> anyhow::Result<Mux> {
        let prefix = client.new_inbox();
        let subscriber = subscribe(client, &prefix).await?;
        Ok(Mux {
            prefix,
            next: AtomicU64::new(1),
            routes: Arc::default(),
            client: client.clone(),
            first: Mutex::new(Some(subscriber)),
        })
    }

    /// Routes the frames that arrive to their exchanges until `shutdown`: a long-running task
    /// of the node, which restarts it when it fails. The first run uses the subscription
    /// [`Mux::start`] made; a later one subscribes to the same inbox again.
    ///
    /// # Errors
    /// The subscription ended before `shutdown` (the client closed it), or cannot be made again.
    pub async fn route(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut subscriber = match first {
            Some(subscriber) => subscriber,
            None => subscribe(&self.client, &self.prefix).await?,
        };
        let skip = self.prefix.len() + 1;
        loop {
            let message = tokio::select! {
                message = subscriber.next() => match message {
                    Some(message) => message,
                    None => anyhow::bail!("the rpc reply subscription {}.* ended", self.prefix),
                },
                () = shutdown.cancelled() => return Ok(()),
            };
            let Some(id) = message
                .subject
                .get(skip..)
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            let Some(route) = routes.get(&id) else {
                // A late frame of a finished exchange.
                continue;
            };
            // Acks matter only while their sender waits, and a receiver that is done drops its
            // channel: late ones are dropped. A full frame queue means a peer ignoring the ack
            // window: that exchange ends, its reader sees the close.
            let kind = FrameKind::of(&message);
            let flooded = if kind == Some(FrameKind::Ack) {
                if let Some(seq) = seq_of(&message) {
                    let _ = route.acks.try_send(seq);
                }
                false
            } else {
                if kind == Some(FrameKind::Error)
                    || message.status == Some(async_nats::StatusCode::NO_RESPONDERS)
                {
                    let _ = route.acks.try_send(CANCEL);
                }
                matches!(
                    route.frames.try_send(Box::new(message)),
                    Err(mpsc::error::TrySendError::Full(_))
                )
            };
            if flooded {
                tracing::warn!(
                    exchange = id,
                    "rpc peer sent past the ack window; exchange closed"
                );
                routes.remove(&id);
            }
        }
    }

    /// Opens an exchange with a new subject.
    pub fn open(&self) -> Exchange {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (acks_tx, acks) = mpsc::channel(QUEUE);
        let (frames_tx, frames) = mpsc::channel(QUEUE);
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Route {
                    acks: acks_tx,
                    frames: frames_tx,
                },
            );
        Exchange {
            subject: format!("{}.{id}", self.prefix),
            acks: Some(acks),
            frames,
            guard: Arc::new(RouteGuard {
                id,
                routes: self.routes.clone(),
            }),
        }
    }
}

/// Subscribes `client` to every exchange subject under `prefix`.
async fn subscribe(
    client: &async_nats::Client,
    prefix: &str,
) -> anyhow::Result<async_nats::Subscriber> {
    client
        .subscribe(format!("{prefix}.*"))
        .await
        .with_context(|| format!("subscribing to {prefix}.*"))
}
