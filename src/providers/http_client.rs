//! The http-client provider: which hosts a component may call with
//! `wasi:http/outgoing-handler`, from its http-client links' `allowed_hosts` (default: none,
//! DESIGN.md §5), and the wasi:http hooks that enforce it. Allowed requests go out through
//! wasmtime-wasi-http's client (hyper, TLS by rustls with the bundled webpki roots); denied ones
//! get the `HTTP-request-denied` error code, never a connection.

use std::sync::Arc;

use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

/// One `allowed_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: every host.
    Any,
    /// `host` or `host:port`; `*.domain` when `suffix` (subdomains of `domain`, not itself);
    /// with `scheme` (`https://host`) only that scheme, on its default port unless one is given.
    Host {
        scheme: Option<http::uri::Scheme>,
        name: String,
        suffix: bool,
        port: Option<u16>,
    },
}

/// The hosts a component may send outgoing HTTP requests to. Empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    patterns: Vec<HostPattern>,
}

impl AllowedHosts {
    /// Parses `allowed_hosts`: comma-separated entries, each `*` (any host), `host` (any port,
    /// http or https), `host:port`, `*.domain` (its subdomains) or `*.domain:port`, optionally
    /// behind `http://` or `https://` (then only that scheme, on its default port 80 or 443
    /// unless a port is given); IPv6 addresses in brackets (`[::1]:8080`). Names compare
    /// case-insensitively.
    ///
    /// # Errors
    /// An empty entry or a port that is not a number in 1..=65535; the message names the entry.
    pub fn parse(text: &str) -> Result<AllowedHosts, String> {
        let mut patterns = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                patterns.push(HostPattern::Any);
                continue;
            }
            let (scheme, rest) = if let Some(rest) = entry.strip_prefix("https://") {
                (Some(http::uri::Scheme::HTTPS), rest)
            } else if let Some(rest) = entry.strip_prefix("http://") {
                (Some(http::uri::Scheme::HTTP), rest)
            } else {
                (None, entry)
            };
            let rest = rest.trim_end_matches('/');
            let (host, port) = split_port(rest).ok_or_else(|| {
                format!("{entry:?}: expected host or host:port, with a port in 1..=65535")
            })?;
            let port = port.or(match &scheme {
                Some(s) if *s == http::uri::Scheme::HTTPS => Some(443),
                Some(_) => Some(80),
                None => None,
            });
            let (name, suffix) = match host.strip_prefix("*.") {
                Some(domain) => (domain, true),
                None => (host, false),
            };
            if name.is_empty() || name.contains('*') || name.contains('/') {
                return Err(format!(
                    "{entry:?}: expected host, host:port, *.domain or * (a '*' only as the first label)"
                ));
            }
            patterns.push(HostPattern::Host {
                scheme,
                name: name.to_ascii_lowercase(),
                suffix,
                port,
            });
        }
        Ok(AllowedHosts { patterns })
    }

    /// Joins two allow-lists (a component with several http-client links).
    pub fn extend(&mut self, other: AllowedHosts) {
        self.patterns.extend(other.patterns);
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether a request with `scheme` (http or https) to `host` on `port` is allowed.
    pub fn allows(&self, scheme: &http::uri::Scheme, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.patterns.iter().any(|p| match p {
            HostPattern::Any => true,
            HostPattern::Host {
                scheme: want_scheme,
                name,
                suffix,
                port: want,
            } => {
                if want_scheme.as_ref().is_some_and(|s| s != scheme) {
                    return false;
                }
                let name_ok = if *suffix {
                    host.strip_suffix(name.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
                } else {
                    host == *name
                };
                name_ok && want.is_none_or(|w| w == port)
            }
        })
    }

    /// Whether `uri` (absolute, as the guest built it) is allowed; its port defaults to 443 for
    /// https and 80 otherwise. An authority with user info (`user@host`) is never allowed: the
    /// client would dial the whole authority, not the host checked here.
    pub fn allows_uri(&self, uri: &http::Uri) -> bool {
        let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        let default = if scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        self.allows(&scheme, host, uri.port_u16().unwrap_or(default))
    }
}

impl std::fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.patterns.is_empty() {
            return f.write_str("(none)");
        }
        for (i, p) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match p {
                HostPattern::Any => f.write_str("*")?,
                HostPattern::Host {
                    scheme,
                    name,
                    suffix,
                    port,
                } => {
                    if let Some(scheme) = scheme {
                        write!(f, "{scheme}://")?;
                    }
                    if *suffix {
                        f.write_str("*.")?;
                    }
                    if name.contains(':') {
                        write!(f, "[{name}]")?;
                    } else {
                        f.write_str(name)?;
                    }
                    if let Some(port) = port {
                        write!(f, ":{port}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → (host, port); `None` for a bad port.
fn split_port(entry: &str) -> Option<(&str, Option<u16>)> {
    let parse = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(parse(port)?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(parse(port)?))),
        // A bare IPv6 address without brackets: no port.
        Some(_) => Some((entry, None)),
        None => Some((entry, None)),
    }
}

/// `uri` for the log, without its query (which often carries tokens).
fn without_query(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri.authority().map_or("", |a| a.as_str());
    format!("{scheme}://{authority}{}", uri.path())
}

/// How long an outgoing connection may take to be established when the guest sets no
/// `connect-timeout` (10 s).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The wasi:http hooks of one component instance: outgoing requests only to its allowed hosts.
pub struct OutgoingHttp {
    allowed: Arc<AllowedHosts>,
    app: Arc<str>,
    component: Arc<str>,
}

impl OutgoingHttp {
    /// Hooks allowing `allowed` for component `component` of app `app` (named in denial logs).
    pub fn new(allowed: Arc<AllowedHosts>, app: Arc<str>, component: Arc<str>) -> OutgoingHttp {
        OutgoingHttp {
            allowed,
            app,
            component,
        }
    }
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl WasiHttpHooks for OutgoingHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if !self.allowed.allows_uri(request.uri()) {
            tracing::warn!(
                app = %self.app,
                component = %self.component,
                uri = %without_query(request.uri()),
                allowed_hosts = %self.allowed,
                "outgoing HTTP request denied: its host is not in the allowed_hosts of an http-client link"
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        tracing::debug!(app = %self.app, component = %self.component, uri = %without_query(request.uri()), "outgoing HTTP request");
        // A host that never answers the connect gets the guest `connection-timeout` it can
        // handle, rather than wasmtime's 600 s default outliving the request's deadline. The
        // other waits stay the guest's: the request deadline bounds them.
        let mut options = options.unwrap_or_default();
        options.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
        let options = Some(options);
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_hosts_ports_and_subdomains() {
        let allowed = AllowedHosts::parse(
            "127.0.0.1:8080, Example.com, *.svc.local, [::1]:9000, https://api.test/",
        )
        .unwrap();
        let http = http::uri::Scheme::HTTP;
        assert!(allowed.allows(&http, "127.0.0.1", 8080));
        assert!(!allowed.allows(&http, "127.0.0.1", 8081));
        assert!(allowed.allows(&http, "example.com", 443));
        assert!(allowed.allows(&http, "EXAMPLE.com", 80));
        assert!(!allowed.allows(&http, "www.example.com", 443));
        assert!(allowed.allows(&http, "a.svc.local", 1));
        assert!(!allowed.allows(&http, "svc.local", 1));
        assert!(!allowed.allows(&http, "evilsvc.local", 1));
        assert!(allowed.allows(&http, "[::1]", 9000));
        let uri = |u: &str| u.parse::<http::Uri>().unwrap();
        assert!(allowed.allows_uri(&uri("https://example.com/x")));
        assert!(allowed.allows_uri(&uri("http://127.0.0.1:8080/")));
        assert!(!allowed.allows_uri(&uri("http://127.0.0.1/")));
        assert!(allowed.allows_uri(&uri("https://api.test/v1")));
        assert!(!allowed.allows_uri(&uri("http://api.test/v1")));
        assert!(!allowed.allows_uri(&uri("https://api.test:8443/v1")));
        assert!(!allowed.allows_uri(&uri("http://user@127.0.0.1:8080/")));
        assert_eq!(
            allowed.to_string(),
            "127.0.0.1:8080,example.com,*.svc.local,[::1]:9000,https://api.test:443"
        );
    }

    #[test]
    fn logged_uris_leave_out_the_query() {
        let uri = "https://api.test:8443/v1/items?token=secret"
            .parse()
            .unwrap();
        assert_eq!(without_query(&uri), "https://api.test:8443/v1/items");
    }

    #[test]
    fn nothing_is_allowed_by_default_and_star_allows_all() {
        let none = AllowedHosts::default();
        assert!(!none.allows_uri(&"https://example.com/".parse().unwrap()));
        assert!(AllowedHosts::parse("").unwrap().is_empty());
        assert!(
            AllowedHosts::parse("*")
                .unwrap()
                .allows(&http::uri::Scheme::HTTPS, "anything", 1)
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry_named() {
        for bad in ["host:0", "host:99999", "host:x", "a*.b", "*.", "[::1"] {
            let err = AllowedHosts::parse(bad).unwrap_err();
            assert!(
                err.contains(bad.trim_start_matches('*').trim_start_matches('.'))
                    || err.contains(bad),
                "{bad}: {err}"
            );
        }
    }
}
