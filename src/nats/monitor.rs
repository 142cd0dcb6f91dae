//! A client of the supervised nats-server's HTTP monitoring port on loopback
//! (<https://docs.nats.io/running-a-nats-service/nats_admin/monitoring>): `/healthz` for
//! readiness, `/varz` to tell our server from another one on the port, `/leafz` for the leaf
//! uplink. The fields read here are the same in nats-server 2.9 and 2.15 (`server/monitor.go`:
//! `HealthStatus`, `Varz`, `Leafz`/`LeafInfo`).

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// How long one monitoring request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest monitoring answer read (a `/leafz` of one uplink is well under 1 KiB).
const MAX_ANSWER: usize = 1 << 20;

/// Why a monitoring request failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// No connection to the port, or it broke.
    #[error("nats-server monitoring at 127.0.0.1:{port}{path}: {reason}")]
    Unreachable {
        /// Monitoring port.
        port: u16,
        /// Endpoint.
        path: &'static str,
        /// What failed.
        reason: String,
    },
    /// An answer that is not the JSON the endpoint documents.
    #[error("nats-server monitoring at 127.0.0.1:{port}{path}: unexpected answer: {reason}")]
    BadAnswer {
        /// Monitoring port.
        port: u16,
        /// Endpoint.
        path: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// `/healthz`: `{"status":"ok"}` with 200 when healthy; another status (`unavailable`) and an
/// `error` with 503 while it is not (2.9 and 2.15 alike).
#[derive(Debug, Clone, Deserialize)]
pub struct Healthz {
    /// `ok` when healthy.
    pub status: String,
    /// Why not, when not.
    #[serde(default)]
    pub error: Option<String>,
}

impl Healthz {
    /// Whether the server says it is healthy.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// The part of `/varz` read here.
#[derive(Debug, Clone, Deserialize)]
pub struct Varz {
    /// `server_name` of its config.
    pub server_name: String,
    /// Its client port.
    pub port: u16,
    /// Its version, e.g. `2.9.10`.
    pub version: String,
}

/// `/leafz`: the server's leafnode connections that passed the handshake. On the soliciting
/// side a connection is listed only once the remote accepted it (nats-server registers it in
/// `leafNodeFinishConnectProcess`, run on the remote's INFO that follows a successful
/// CONNECT), so a refused one (authorization) never is.
#[derive(Debug, Clone, Deserialize)]
pub struct Leafz {
    /// How many connections.
    #[serde(rename = "leafnodes")]
    pub count: usize,
    /// One entry per connection; `null` when there are none in 2.9, `[]` in 2.15.
    #[serde(default)]
    pub leafs: Option<Vec<LeafInfo>>,
}

/// One leafnode connection in `/leafz`. Every field optional: only the count is relied on, and
/// an entry of another version's shape must not make the whole answer unreadable.
#[derive(Debug, Clone, Deserialize)]
pub struct LeafInfo {
    /// The local account it binds.
    #[serde(default)]
    pub account: Option<String>,
    /// Remote address.
    #[serde(default)]
    pub ip: Option<String>,
    /// Remote port.
    #[serde(default)]
    pub port: Option<u16>,
    /// The remote server's name (2.10 and later; absent in 2.9).
    #[serde(default)]
    pub name: Option<String>,
}

/// The monitoring endpoint of one nats-server on `127.0.0.1:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Monitor {
    port: u16,
}

impl Monitor {
    /// The endpoint on `127.0.0.1:port`.
    pub fn new(port: u16) -> Monitor {
        Monitor { port }
    }

    /// Its port.
    pub fn port(self) -> u16 {
        self.port
    }

    /// `GET /healthz`. A 503 answer is a health status too, not an error.
    ///
    /// # Errors
    /// [`MonitorError`]: no answer within [`REQUEST_TIMEOUT`], or not the JSON expected.
    pub async fn healthz(self) -> Result<Healthz, MonitorError> {
        self.get("/healthz").await
    }

    /// `GET /varz`.
    ///
    /// # Errors
    /// As [`Monitor::healthz`].
    pub async fn varz(self) -> Result<Varz, MonitorError> {
        self.get("/varz").await
    }

    /// `GET /leafz`.
    ///
    /// # Errors
    /// As [`Monitor::healthz`].
    pub async fn leafz(self) -> Result<Leafz, MonitorError> {
        self.get("/leafz").await
    }

    /// `GET path` over a fresh HTTP/1.1 connection, the body parsed as JSON `T` (whatever the
    /// status code: nats-server answers JSON on errors too).
    async fn get<T: DeserializeOwned>(self, path: &'static str) -> Result<T, MonitorError> {
        let unreachable = |reason: String| MonitorError::Unreachable {
            port: self.port,
            path,
            reason,
        };
        let body = tokio::time::timeout(REQUEST_TIMEOUT, self.fetch(path))
            .await
            .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(unreachable)?;
        serde_json::from_slice(&body).map_err(|e| MonitorError::BadAnswer {
            port: self.port,
            path,
            reason: e.to_string(),
        })
    }

    async fn fetch(self, path: &'static str) -> Result<Bytes, String> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, format!("127.0.0.1:{}", self.port))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let outcome = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok(body.to_bytes())
        }
        .await;
        driver.abort();
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_leafz_of_2_9_and_2_15() {
        // As nats-server 2.9.10 and 2.15.1 answer on a leaf node (trimmed).
        let old: Leafz = serde_json::from_str(
            r#"{"server_id":"N","now":"2026-12-01T09:57:16Z","leafnodes":1,"leafs":[{"account":"$G","ip":"127.0.0.1","port":17422,"rtt":"0s","in_msgs":0,"out_msgs":0,"in_bytes":0,"out_bytes":0,"subscriptions":5}]}"#,
        )
        .unwrap();
        assert_eq!(old.count, 1);
        assert_eq!(old.leafs.unwrap()[0].port, Some(17422));
        let none: Leafz =
            serde_json::from_str(r#"{"server_id":"N","now":"x","leafnodes":0,"leafs":null}"#)
                .unwrap();
        assert_eq!(none.count, 0);
        let new: Leafz = serde_json::from_str(
            r#"{"server_id":"N","now":"x","leafnodes":1,"leafs":[{"id":5,"name":"hub","is_spoke":true,"account":"$G","ip":"127.0.0.1","port":17422,"rtt":"343µs","in_msgs":0,"out_msgs":0,"in_bytes":0,"out_bytes":0,"subscriptions":6}]}"#,
        )
        .unwrap();
        assert_eq!(new.leafs.unwrap()[0].name.as_deref(), Some("hub"));
        let sick: Healthz =
            serde_json::from_str(r#"{"status":"unavailable","error":"JetStream is not current"}"#)
                .unwrap();
        assert!(!sick.is_ok());
    }
}
