//! Renders the config file of the supervised nats-server (nats-server's own config format,
//! <https://docs.nats.io/running-a-nats-service/configuration>). Pure: no I/O.

use std::fmt::Write as _;
use std::path::PathBuf;

/// What the node asks of its nats-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `server_name`: the node's name, so the server's log and monitoring name the node.
    pub server_name: String,
    /// Client port on 127.0.0.1.
    pub client_port: u16,
    /// HTTP monitoring port on 127.0.0.1 (`/healthz`, `/varz`, `/leafz`), which the supervisor
    /// reads for readiness and the leaf uplink's state.
    ///
    /// Open to any local user: nats-server authenticates it only by TLS client certificates
    /// (`https` with `verify`), which the node does not set up. It serves
    /// metadata only, never messages or secrets: the server's name, version, ports and
    /// counters (`/varz`), the connected clients with their names, addresses and counts
    /// (`/connz`; their subscriptions' subjects and public nkeys when asked), the subjects
    /// subscribed to (`/subsz`), the leaf connection (`/leafz`) and JetStream's streams and
    /// consumers with their sizes (`/jsz`). It cannot publish, subscribe or change anything.
    pub monitor_port: u16,
    /// JetStream store directory; `None` runs without JetStream.
    pub jetstream_store_dir: Option<PathBuf>,
    /// The remote this server joins as a leaf node, if any.
    pub leaf_remote: Option<LeafRemote>,
    /// Public key (`U…`) of the one nkeys user the client port admits
    /// ([`super::local_auth`]): every local client, the node's own included, authenticates
    /// with it; any other gets `Authorization Violation`.
    pub client_nkey: String,
}

/// A leafnode remote (nats-server's `leafnodes.remotes` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRemote {
    /// Remote URL, e.g. `nats-leaf://hub:7422` or `tls://connect.ngs.global`.
    pub url: String,
    /// User credentials file nats-server authenticates with (read by nats-server only).
    pub credentials: Option<PathBuf>,
}

/// Renders `settings` as a nats-server config file (clients on 127.0.0.1 only, authenticated
/// by the nkey `settings.client_nkey`: nats-server's `authorization { users: [{ nkey }] }`,
/// <https://docs.nats.io/running-a-nats-service/configuration/securing_nats/auth_intro/nkey_auth>).
/// The leafnode remote authenticates separately, with its credentials file.
/// `hub_js_without_domain`, in leaf mode, says that the hub runs JetStream without a domain
/// (its leafnode INFO says so), which this leaf must then let through (see below).
pub fn render(settings: &ServerSettings, hub_js_without_domain: bool) -> String {
    let mut out = String::from("# Written by lattice at every start; edits are overwritten.\n");
    let _ = writeln!(out, "server_name: {}", quote(&settings.server_name));
    let _ = writeln!(out, "listen: \"127.0.0.1:{}\"", settings.client_port);
    let _ = writeln!(out, "http: \"127.0.0.1:{}\"", settings.monitor_port);
    let _ = writeln!(
        out,
        "authorization {{\n  users: [\n    {{ nkey: {} }}\n  ]\n}}",
        quote(&settings.client_nkey)
    );
    if let Some(dir) = &settings.jetstream_store_dir {
        let _ = writeln!(
            out,
            "jetstream {{\n  store_dir: {}\n}}",
            quote(&dir.to_string_lossy())
        );
    }
    if let Some(remote) = &settings.leaf_remote {
        let _ = write!(
            out,
            "leafnodes {{\n  remotes [\n    {{ url: {}",
            quote(&remote.url)
        );
        if let Some(creds) = &remote.credentials {
            let _ = write!(out, ", credentials: {}", quote(&creds.to_string_lossy()));
        }
        out.push_str(" }\n  ]\n}\n");
        // nats-server denies `$JS.API.>`, `$KV.>` and `$OBJ.>` on a leaf connection whose two
        // ends are not one JetStream domain (server/leafnode.go, addLeafNodeConnection), which
        // a leaf without JetStream never is: a hub's JetStream without a domain is reached
        // only when both ends map the account to the empty default domain
        // (`default_js_domain`; the hub for its account, this leaf for its local $G). Only
        // then: with a hub in a domain, this leaf's mapping breaks `$JS.<domain>.API` (direct
        // gets time out), so it is rendered for a hub without a domain alone.
        if hub_js_without_domain {
            out.push_str("default_js_domain: { \"$G\": \"\" }\n");
        }
    }
    out
}

/// A double-quoted string in nats-server's config syntax (JSON-like escapes).
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_loopback_listener_and_jetstream() {
        let text = render(
            &ServerSettings {
                server_name: "node \"a\"".into(),
                client_port: 4333,
                monitor_port: 8333,
                jetstream_store_dir: Some(PathBuf::from("/var/lib/lattice/nats/jetstream")),
                leaf_remote: None,
                client_nkey: "UABC".into(),
            },
            true,
        );
        assert!(
            text.contains("authorization {\n  users: [\n    { nkey: \"UABC\" }\n  ]\n}\n"),
            "{text}"
        );
        assert!(!text.contains("no_auth_user"), "{text}");
        assert!(!text.contains("leafnodes"), "{text}");
        assert!(text.contains("server_name: \"node \\\"a\\\"\"\n"), "{text}");
        assert!(text.contains("listen: \"127.0.0.1:4333\"\n"), "{text}");
        assert!(text.contains("http: \"127.0.0.1:8333\"\n"), "{text}");
        assert!(!text.contains("default_js_domain"), "{text}");
        assert!(
            text.contains("jetstream {\n  store_dir: \"/var/lib/lattice/nats/jetstream\"\n}"),
            "{text}"
        );
    }

    #[test]
    fn a_leaf_node_has_a_remote_and_no_jetstream() {
        let settings = ServerSettings {
            server_name: "n".into(),
            client_port: 1,
            monitor_port: 2,
            jetstream_store_dir: None,
            leaf_remote: Some(LeafRemote {
                url: "nats-leaf://127.0.0.1:7422".into(),
                credentials: Some(PathBuf::from("/etc/lattice/default.creds")),
            }),
            client_nkey: "UXYZ".into(),
        };
        let text = render(&settings, false);
        assert!(!text.contains("default_js_domain"), "{text}");
        assert!(!text.contains("jetstream {"), "{text}");
        let text = render(&settings, true);
        // Local clients authenticate in leaf mode too: nothing local is anonymous.
        assert!(text.contains("{ nkey: \"UXYZ\" }"), "{text}");
        assert!(
            text.contains("default_js_domain: { \"$G\": \"\" }\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "leafnodes {\n  remotes [\n    { url: \"nats-leaf://127.0.0.1:7422\", credentials: \"/etc/lattice/default.creds\" }\n  ]\n}\n"
            ),
            "{text}"
        );
    }
}
