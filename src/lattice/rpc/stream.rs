//! HTTP bodies over NATS: cutting a body into chunks that fit the server's `max_payload`,
//! sending them as `data` frames with a window of unacknowledged frames, and turning received
//! frames back into a body with the same bytes and trailers.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::HeaderMap;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::wire::{self, ErrorBody, Field, FrameKind};
use crate::host::ResponseBody;

/// Bytes of every NATS message kept free for our headers and the protocol line. NATS counts
/// the headers in `max_payload` (<https://docs.nats.io/reference/reference-protocols/nats-protocol#hpub>);
/// ours are at most: the `NATS/1.0` line and the frame kind and sequence (< 100 bytes), and on
/// a `request` the trace context (`telemetry::inject_nats`): a `traceparent` of 55 bytes and a
/// `tracestate` of at most `telemetry::MAX_TRACESTATE` (512) bytes, as an incoming one longer
/// than that is dropped and the node adds no entry of its own. With names and CRLFs that is
/// under 800 bytes, which leaves over 3 KiB of this for the `HPUB` line (subject, reply
/// subject, sizes). The HTTP head (with a client's own `traceparent` among its headers) is in the
/// JSON part of the payload, measured before the body is cut ([`chunk_limit`]'s callers).
const HEADROOM: usize = 4 * 1024;
/// `data` frames a sender may have in flight without an ack.
pub const WINDOW: u64 = 4;
/// How long a chunk after the first waits to fill up before it goes out with what there is.
const LINGER: Duration = Duration::from_millis(1);
/// Body frames buffered between the NATS side and the HTTP side of a received body.
const BODY_BUFFER: usize = 2;

/// The error type of bodies (as wasmtime-wasi-http's).
pub type BodyError = wasmtime_wasi_http::Error;

/// Largest body chunk one message may carry: the server's `max_payload` less headroom.
pub fn chunk_limit(client: &async_nats::Client) -> usize {
    client
        .server_info()
        .max_payload
        .saturating_sub(HEADROOM)
        .max(HEADROOM)
}

/// A piece of a body.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes, with more to come.
    Data(Bytes),
    /// The last bytes (possibly none) and the trailers, if any.
    Last(Bytes, Option<HeaderMap>),
}

/// How long the first message of a body waits for more of the body before it goes out with
/// what there is: a whole small body makes one message, a slow one does not hold the head.
const FIRST_LINGER: Duration = Duration::from_millis(5);

/// The body part of a `request` or `response` message.
#[derive(Debug)]
pub struct First {
    /// The bytes the message carries.
    pub data: Bytes,
    /// Whether more follows in `data` frames (the head's `streamed`).
    pub streamed: bool,
    /// The trailers, when the body ended within the message (the head's `trailers`).
    pub trailers: Option<Vec<Field>>,
}

/// Cuts a body into chunks of at most a given size.
pub struct Chunker<B> {
    body: B,
    buffer: BytesMut,
    /// `Some(trailers)` once the body has ended.
    ended: Option<Option<HeaderMap>>,
}

impl<B> Chunker<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    /// Wraps `body`.
    pub fn new(body: B) -> Chunker<B> {
        Chunker {
            body,
            buffer: BytesMut::new(),
            ended: None,
        }
    }

    /// What of the body goes with the head: up to `room` bytes, those there within 5 ms.
    ///
    /// # Errors
    /// Reading the body failed (the message names the cause).
    pub async fn first(&mut self, room: usize) -> Result<First, String> {
        Ok(match self.next(room, FIRST_LINGER, true).await? {
            Chunk::Data(data) => First {
                data,
                streamed: true,
                trailers: None,
            },
            Chunk::Last(data, trailers) => First {
                data,
                streamed: false,
                trailers: trailers.as_ref().map(wire::fields_of),
            },
        })
    }

    /// The next chunk of at most `limit` bytes. Waits up to `linger` for the body to fill it
    /// or end, then returns what there is; with nothing there yet, it waits on for the first
    /// bytes, unless `may_be_empty`.
    ///
    /// # Errors
    /// Reading the body failed (the message names the cause).
    pub async fn next(
        &mut self,
        limit: usize,
        linger: Duration,
        may_be_empty: bool,
    ) -> Result<Chunk, String> {
        let limit = limit.max(1);
        let linger_until = tokio::time::Instant::now() + linger;
        loop {
            // Exactly `limit` bytes may still be the last ones: read on to find out, so a
            // body that fits one message is sent as one.
            if self.buffer.len() > limit {
                return Ok(Chunk::Data(self.buffer.split_to(limit).freeze()));
            }
            if let Some(trailers) = &mut self.ended {
                return Ok(Chunk::Last(self.buffer.split().freeze(), trailers.take()));
            }
            // Dropping a pending `frame()` loses nothing: a body yields data only when polled
            // ready.
            let frame = match tokio::time::timeout_at(linger_until, self.body.frame()).await {
                Ok(frame) => frame,
                Err(_) if may_be_empty || !self.buffer.is_empty() => {
                    return Ok(Chunk::Data(self.buffer.split().freeze()));
                }
                Err(_) => self.body.frame().await,
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.ended = Some(Some(trailers));
                        }
                    }
                },
                Some(Err(e)) => return Err(format!("reading the body: {e}")),
                None => self.ended = Some(None),
            }
        }
    }
}

/// Where frames of a streamed body go, and how long the peer may stay silent.
#[derive(Clone)]
pub struct Peer {
    /// The node's client.
    pub client: async_nats::Client,
    /// The peer's exchange subject.
    pub to: String,
    /// Our exchange subject (acks come back to it); empty for a side that only reports errors.
    pub reply: String,
    /// Longest wait for an ack or a frame.
    pub idle: Duration,
}

impl Peer {
    /// Publishes a frame of `kind` to the peer.
    ///
    /// # Errors
    /// The client is closed.
    pub async fn send(
        &self,
        kind: FrameKind,
        seq: Option<u64>,
        payload: Bytes,
    ) -> Result<(), String> {
        let headers = wire::frame_headers(kind, seq);
        let sent = if self.reply.is_empty() {
            self.client
                .publish_with_headers(self.to.clone(), headers, payload)
                .await
        } else {
            self.client
                .publish_with_reply_and_headers(
                    self.to.clone(),
                    self.reply.clone(),
                    headers,
                    payload,
                )
                .await
        };
        sent.map_err(|e| format!("publishing to {}: {e}", self.to))
    }

    /// Tells the peer the exchange failed.
    pub async fn send_error(&self, status: u16, message: &str) {
        self.send_error_body(&ErrorBody {
            status,
            message: message.to_owned(),
            busy: false,
        })
        .await;
    }

    /// Tells the requester that this replica did not run its request: 503, `busy`.
    pub async fn send_busy(&self, message: &str) {
        self.send_error_body(&ErrorBody {
            status: 503,
            message: message.to_owned(),
            busy: true,
        })
        .await;
    }

    async fn send_error_body(&self, body: &ErrorBody) {
        let payload = serde_json::to_vec(body).unwrap_or_default();
        let _ = self.send(FrameKind::Error, None, payload.into()).await;
    }

    /// Sends the rest of a body as `data` frames (at most [`WINDOW`] unacknowledged) and an
    /// `end` frame with the trailers. A body that fails to read ends the exchange with `error`.
    ///
    /// # Errors
    /// The body failed, the peer stopped acknowledging for `idle`, or the client closed.
    pub async fn send_body<B>(
        &self,
        chunker: &mut Chunker<B>,
        acks: &mut mpsc::Receiver<u64>,
    ) -> Result<(), String>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let limit = chunk_limit(&self.client);
        let mut seq = 0;
        let mut acked = 0;
        loop {
            if let Ok(super::mux::CANCEL) = acks.try_recv() {
                return Err(format!("{} gave up the exchange", self.to));
            }
            let chunk = match chunker.next(limit, LINGER, false).await {
                Ok(chunk) => chunk,
                Err(e) => {
                    self.send_error(502, &e).await;
                    return Err(e);
                }
            };
            let (data, last) = match chunk {
                Chunk::Data(data) => (data, None),
                Chunk::Last(data, trailers) => (data, Some(trailers)),
            };
            if !data.is_empty() {
                seq += 1;
                while seq - acked > WINDOW {
                    acked = acked.max(self.wait_ack(acks).await?);
                }
                self.send(FrameKind::Data, Some(seq), data).await?;
            }
            if let Some(trailers) = last {
                let trailers = trailers.as_ref().map(wire::fields_of);
                let payload = serde_json::to_vec(&trailers).unwrap_or_default();
                return self.send(FrameKind::End, None, payload.into()).await;
            }
        }
    }

    async fn wait_ack(&self, acks: &mut mpsc::Receiver<u64>) -> Result<u64, String> {
        match tokio::time::timeout(self.idle, acks.recv()).await {
            Ok(Some(super::mux::CANCEL)) => Err(format!("{} gave up the exchange", self.to)),
            Ok(Some(seq)) => Ok(seq),
            Ok(None) => Err("the exchange closed".into()),
            Err(_) => {
                let error = format!(
                    "no ack from {} within {}",
                    self.to,
                    humantime::format_duration(self.idle)
                );
                self.send_error(504, &error).await;
                Err(error)
            }
        }
    }
}

/// A body of `first` and, when `trailers` is set, those trailers: for a message that carried
/// its whole body.
pub fn complete_body(first: Bytes, trailers: Option<HeaderMap>) -> ResponseBody {
    let mut frames = Vec::with_capacity(2);
    if !first.is_empty() {
        frames.push(Ok(Frame::data(first)));
    }
    if let Some(trailers) = trailers {
        frames.push(Ok(Frame::trailers(trailers)));
    }
    StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
}

/// A body of `first` followed by the `data` frames from `peer` (an exchange subject) arriving
/// on `frames` (each acknowledged once the body has taken it), ending at `end` (trailers) or
/// failing at `error`, a gap in the sequence, or `idle` without a frame; frames from anyone
/// else are ignored. When the body fails here, or its reader goes away, `peer` is told with an
/// `error` frame. `keep` lives as long as the body is read.
pub fn streamed_body<K: Send + 'static>(
    client: async_nats::Client,
    peer: String,
    first: Bytes,
    mut frames: mpsc::Receiver<super::mux::Inbound>,
    idle: Duration,
    keep: K,
) -> ResponseBody {
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, BodyError>>(BODY_BUFFER);
    let sender = Peer {
        client: client.clone(),
        to: peer.clone(),
        reply: String::new(),
        idle,
    };
    let task = async move {
        let _keep = keep;
        if !first.is_empty() && tx.send(Ok(Frame::data(first))).await.is_err() {
            sender.send_error(499, "the body's reader went away").await;
            return;
        }
        let mut expected = 1;
        let failure = loop {
            let message = match tokio::time::timeout(idle, frames.recv()).await {
                Ok(Some(message)) => *message,
                Ok(None) => break "the exchange closed".to_owned(),
                Err(_) => {
                    break format!("no body frame within {}", humantime::format_duration(idle));
                }
            };
            if message.reply.as_deref() != Some(peer.as_str()) {
                tracing::debug!("a body frame from another peer ignored");
                continue;
            }
            match FrameKind::of(&message) {
                Some(FrameKind::Data) => {
                    let seq = wire::seq_of(&message);
                    if seq != Some(expected) {
                        break format!("body frame {seq:?} arrived, {expected} expected");
                    }
                    expected += 1;
                    if tx.send(Ok(Frame::data(message.payload))).await.is_err() {
                        sender.send_error(499, "the body's reader went away").await;
                        return;
                    }
                    if let Some(reply) = message.reply {
                        let _ = client
                            .publish_with_headers(
                                reply,
                                wire::frame_headers(FrameKind::Ack, seq),
                                Bytes::new(),
                            )
                            .await;
                    }
                }
                Some(FrameKind::End) => {
                    match serde_json::from_slice::<Option<Vec<Field>>>(&message.payload) {
                        Ok(None) => {}
                        Ok(Some(fields)) => match wire::header_map(&fields) {
                            Ok(trailers) => {
                                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                            }
                            Err(e) => break e.to_string(),
                        },
                        Err(e) => break format!("malformed trailers: {e}"),
                    }
                    return;
                }
                Some(FrameKind::Error) => {
                    break serde_json::from_slice::<ErrorBody>(&message.payload)
                        .map_or_else(|e| format!("malformed error frame: {e}"), |b| b.message);
                }
                other => {
                    tracing::debug!(kind = ?other, "unexpected frame in a body stream; ignored")
                }
            }
        };
        tracing::warn!(error = failure, "lattice rpc body stream broken");
        sender.send_error(502, &failure).await;
        let _ = tx.send(Err(BodyError::InternalError(Some(failure)))).await;
    };
    tokio::spawn(task.in_current_span());
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    StreamBody::new(stream).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn chunker_cuts_at_the_limit_and_keeps_trailers() {
        let body = Full::new(Bytes::from(vec![7u8; 10]));
        let mut chunker = Chunker::new(body);
        let mut sizes = Vec::new();
        loop {
            match chunker.next(4, Duration::ZERO, false).await.unwrap() {
                Chunk::Data(d) => sizes.push(d.len()),
                Chunk::Last(d, trailers) => {
                    sizes.push(d.len());
                    assert!(trailers.is_none());
                    break;
                }
            }
        }
        assert_eq!(sizes, [4, 4, 2]);

        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        let body = complete_body(Bytes::from_static(b"abcd"), Some(trailers));
        let mut chunker = Chunker::new(body);
        // A body of exactly the limit ends in one chunk.
        match chunker.next(4, Duration::ZERO, false).await.unwrap() {
            Chunk::Last(d, Some(t)) => {
                assert_eq!(&d[..], b"abcd");
                assert_eq!(t["x-sum"], "1");
            }
            other => panic!("{other:?}"),
        }
    }
}
