//! The wire format of HTTP invocations over NATS (pure: no I/O). `PROTOCOL.md` §RPC is the
//! contract; this file is its implementation.
//!
//! Every message carries the header `Lattice-Rpc-Frame: <kind>`. `request` and `response`
//! payloads are `u32` big-endian length of a JSON head, the head, then the first body bytes.
//! `data` frames carry body bytes and `Lattice-Rpc-Seq: <n>` (1, 2, …); `ack` frames echo that
//! header; `end` carries the trailers as JSON (`null` for none); `error` a JSON [`ErrorBody`].

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// NATS header naming the frame kind.
pub const FRAME_HEADER: &str = "Lattice-Rpc-Frame";
/// NATS header carrying the sequence number of a `data` or `ack` frame.
pub const SEQ_HEADER: &str = "Lattice-Rpc-Seq";

/// What a message is, from its `Lattice-Rpc-Frame` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Requester → queue group: request head and first body bytes.
    Request,
    /// Responder → requester, at once on receipt: "accepted; send the rest of the request
    /// body, if any, to my reply subject".
    Accept,
    /// Responder → requester: response head and first body bytes.
    Response,
    /// Body bytes, either direction, numbered from 1.
    Data,
    /// End of a streamed body, with trailers.
    End,
    /// Receipt of a `data` frame (flow control).
    Ack,
    /// The exchange failed; payload is an [`ErrorBody`].
    Error,
}

impl FrameKind {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Request => "request",
            FrameKind::Accept => "accept",
            FrameKind::Response => "response",
            FrameKind::Data => "data",
            FrameKind::End => "end",
            FrameKind::Ack => "ack",
            FrameKind::Error => "error",
        }
    }

    /// Parses a header value; `None` for anything else.
    pub fn parse(text: &str) -> Option<FrameKind> {
        Some(match text {
            "request" => FrameKind::Request,
            "accept" => FrameKind::Accept,
            "response" => FrameKind::Response,
            "data" => FrameKind::Data,
            "end" => FrameKind::End,
            "ack" => FrameKind::Ack,
            "error" => FrameKind::Error,
            _ => return None,
        })
    }

    /// The kind of `message`, from its header.
    pub fn of(message: &async_nats::Message) -> Option<FrameKind> {
        message
            .headers
            .as_ref()?
            .get(FRAME_HEADER)
            .and_then(|v| FrameKind::parse(v.as_str()))
    }
}

/// Sequence number of a `data` or `ack` frame.
pub fn seq_of(message: &async_nats::Message) -> Option<u64> {
    message
        .headers
        .as_ref()?
        .get(SEQ_HEADER)?
        .as_str()
        .parse()
        .ok()
}

/// NATS headers for a frame of `kind`, with `seq` when given.
pub fn frame_headers(kind: FrameKind, seq: Option<u64>) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(FRAME_HEADER, kind.as_str());
    if let Some(seq) = seq {
        headers.insert(SEQ_HEADER, seq.to_string().as_str());
    }
    headers
}

/// One header or trailer field: `[name, value]`, the value a string when it is UTF-8, else an
/// array of bytes (HTTP allows obs-text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field(pub String, pub FieldValue);

/// A field value (see [`Field`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// UTF-8 text.
    Text(String),
    /// Other bytes.
    Bytes(Vec<u8>),
}

/// Head of an invocation: the HTTP request line and headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHead {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Request target as received (`/path?query`, or absolute form).
    pub uri: String,
    /// `http` or `https`: the scheme the ingress received the request with.
    pub scheme: String,
    /// Header fields, in order, repeated names kept.
    pub headers: Vec<Field>,
    /// `true` when body bytes follow in `data` frames after the `accept`; `false` when the first
    /// bytes are the whole body.
    pub streamed: bool,
    /// Trailers, when the body is not streamed and had some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailers: Option<Vec<Field>>,
    /// What is left of the requester's deadline, in ms.
    pub timeout_ms: u64,
}

/// Head of a reply: status and headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    /// HTTP status code.
    pub status: u16,
    /// Header fields, in order.
    pub headers: Vec<Field>,
    /// As in [`RequestHead::streamed`].
    pub streamed: bool,
    /// As in [`RequestHead::trailers`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailers: Option<Vec<Field>>,
}

/// Payload of an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The HTTP status the ingress answers with when no response head was sent yet.
    pub status: u16,
    /// What went wrong, for the log and the response body.
    pub message: String,
    /// `true` when the replica did not run the request at all (at its concurrency bound, or
    /// out of instance slots, before `accept`): the requester may try another replica whatever
    /// the method. Absent means `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub busy: bool,
}

/// A payload that does not follow the format.
#[derive(Debug, thiserror::Error)]
#[error("malformed lattice rpc payload: {0}")]
pub struct MalformedPayload(pub String);

/// `u32` BE head length, JSON head, body bytes.
pub fn encode_with_head<T: Serialize>(head: &T, body: &[u8]) -> Bytes {
    let json = serde_json::to_vec(head).unwrap_or_default();
    let mut out = BytesMut::with_capacity(4 + json.len() + body.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(body);
    out.freeze()
}

/// Splits a payload made by [`encode_with_head`] into head and body bytes.
///
/// # Errors
/// [`MalformedPayload`] when the length prefix or the JSON is wrong.
pub fn decode_with_head<T: for<'de> Deserialize<'de>>(
    mut payload: Bytes,
) -> Result<(T, Bytes), MalformedPayload> {
    if payload.len() < 4 {
        return Err(MalformedPayload("shorter than its length prefix".into()));
    }
    let len = payload.get_u32() as usize;
    if payload.len() < len {
        return Err(MalformedPayload(format!(
            "head of {len} bytes announced, {} present",
            payload.len()
        )));
    }
    let head = payload.split_to(len);
    let head = serde_json::from_slice(&head).map_err(|e| MalformedPayload(e.to_string()))?;
    Ok((head, payload))
}

/// Header map → fields, minus hop-by-hop headers (they describe one connection, not the
/// message: RFC 9110 §7.6.1).
pub fn fields_of(headers: &HeaderMap) -> Vec<Field> {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name))
        .map(|(name, value)| {
            let value = match value.to_str() {
                Ok(text) => FieldValue::Text(text.to_owned()),
                Err(_) => FieldValue::Bytes(value.as_bytes().to_vec()),
            };
            Field(name.as_str().to_owned(), value)
        })
        .collect()
}

/// Fields → header map.
///
/// # Errors
/// [`MalformedPayload`] naming a field whose name or value HTTP does not allow.
pub fn header_map(fields: &[Field]) -> Result<HeaderMap, MalformedPayload> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for Field(name, value) in fields {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| MalformedPayload(format!("invalid header name {name:?}")))?;
        let value = match value {
            FieldValue::Text(text) => HeaderValue::from_str(text),
            FieldValue::Bytes(bytes) => HeaderValue::from_bytes(bytes),
        }
        .map_err(|_| MalformedPayload(format!("invalid value of header {name:?}")))?;
        map.append(header, value);
    }
    Ok(map)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_body_round_trip() {
        let head = RequestHead {
            method: "POST".into(),
            uri: "/a?b=c".into(),
            scheme: "http".into(),
            headers: vec![Field("x-a".into(), FieldValue::Text("1".into()))],
            streamed: true,
            trailers: None,
            timeout_ms: 1500,
        };
        let payload = encode_with_head(&head, b"body");
        let (back, body): (RequestHead, Bytes) = decode_with_head(payload).unwrap();
        assert_eq!(back, head);
        assert_eq!(&body[..], b"body");
        assert!(decode_with_head::<RequestHead>(Bytes::from_static(b"\0\0\0\x09{}")).is_err());
        assert!(decode_with_head::<RequestHead>(Bytes::from_static(b"\0")).is_err());
    }

    #[test]
    fn headers_keep_order_repeats_and_opaque_bytes_but_drop_hop_by_hop() {
        let mut headers = HeaderMap::new();
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.append("x-bin", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        headers.append("connection", HeaderValue::from_static("keep-alive"));
        headers.append("transfer-encoding", HeaderValue::from_static("chunked"));
        let fields = fields_of(&headers);
        assert_eq!(fields.len(), 3);
        let json = serde_json::to_string(&fields).unwrap();
        assert!(json.contains(r#"["x-bin",[99,97,102,233]]"#), "{json}");
        let back = header_map(&serde_json::from_str::<Vec<Field>>(&json).unwrap()).unwrap();
        let cookies: Vec<_> = back.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(back["x-bin"].as_bytes(), b"caf\xe9");
        assert!(header_map(&[Field("bad name".into(), FieldValue::Text("x".into()))]).is_err());
    }

    #[test]
    fn busy_is_written_only_when_set_and_read_as_false_when_absent() {
        let plain = ErrorBody {
            status: 502,
            message: "x".into(),
            busy: false,
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"status":502,"message":"x"}"#
        );
        let busy: ErrorBody =
            serde_json::from_str(r#"{"status":503,"message":"full","busy":true}"#).unwrap();
        assert!(busy.busy);
        let old: ErrorBody = serde_json::from_str(r#"{"status":503,"message":"full"}"#).unwrap();
        assert!(!old.busy);
    }

    #[test]
    fn frame_kinds_round_trip() {
        for kind in [
            FrameKind::Request,
            FrameKind::Accept,
            FrameKind::Response,
            FrameKind::Data,
            FrameKind::End,
            FrameKind::Ack,
            FrameKind::Error,
        ] {
            assert_eq!(FrameKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(FrameKind::parse("nope"), None);
    }
}
