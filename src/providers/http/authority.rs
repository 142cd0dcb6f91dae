//! Which host a request is for, checked as RFC 9112 §3.2 and RFC 9113 §8.3.1 ask: one valid
//! `Host` line (required in HTTP/1.1), the request target's authority taking precedence over it
//! (absolute form, HTTP/2's `:authority`), and the two naming the same host when both are there.
//! Pure: the server answers `400` with the [`HostError`]'s text.

use hyper::header::{HOST, HeaderMap};
use hyper::{Uri, Version};

/// Why a request's host is refused; its text ends up in the `400` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// More than one `Host` line (RFC 9112 §3.2).
    #[error("more than one Host header line")]
    Repeated,
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    #[error("an HTTP/1.1 request needs a Host header")]
    Missing,
    /// A `Host` value that is not `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2).
    #[error(
        "invalid Host header {0:?}: it must be a host name or IP address with an optional :port"
    )]
    Invalid(String),
    /// The request target's authority carries userinfo, which HTTP does not allow
    /// (RFC 9110 §4.2.4).
    #[error("the request target's authority {0:?} carries userinfo (user@)")]
    Userinfo(String),
    /// The target's authority (HTTP/2 `:authority`, or an absolute-form target) and `Host`
    /// name different hosts (RFC 9113 §8.3.1).
    #[error("the request's authority {authority:?} and its Host header {host:?} differ")]
    Mismatch {
        /// The target's authority.
        authority: String,
        /// The `Host` value.
        host: String,
    },
}

/// The host to route `uri`/`headers` of a request of `version` by: the target's authority when
/// it has one (absolute form, HTTP/2's `:authority`), else the `Host` value, else `None` (an
/// HTTP/1.0 or HTTP/2 request naming no host). The value is as sent (case and port kept).
///
/// # Errors
/// [`HostError`]: two `Host` lines, none in HTTP/1.1, an invalid value, userinfo in the
/// authority, or an authority and a `Host` that differ.
pub fn request_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<String>, HostError> {
    let mut lines = headers.get_all(HOST).iter();
    let host = lines.next();
    if lines.next().is_some() {
        return Err(HostError::Repeated);
    }
    let host = match host {
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                HostError::Invalid(String::from_utf8_lossy(value.as_bytes()).into())
            })?;
            if !is_valid_host(text) {
                return Err(HostError::Invalid(text.to_owned()));
            }
            Some(text)
        }
        None if version == Version::HTTP_11 => {
            return Err(HostError::Missing);
        }
        None => None,
    };
    let Some(authority) = uri.authority() else {
        return Ok(host.map(str::to_owned));
    };
    let authority = authority.as_str();
    if authority.contains('@') {
        return Err(HostError::Userinfo(authority.to_owned()));
    }
    if !is_valid_host(authority) {
        return Err(HostError::Invalid(authority.to_owned()));
    }
    // An absolute-form HTTP/1.1 target overrides Host (RFC 9112 §3.2.2); HTTP/2 requires them
    // to agree.
    if version == Version::HTTP_2
        && let Some(host) = host
        && !host.eq_ignore_ascii_case(authority)
    {
        return Err(HostError::Mismatch {
            authority: authority.to_owned(),
            host: host.to_owned(),
        });
    }
    Ok(Some(authority.to_owned()))
}

/// Whether `value` is `uri-host [ ":" port ]` (RFC 9110 §7.2): an IP literal in brackets, or a
/// reg-name (IPv4 addresses are reg-names by their characters), and digits after the colon.
/// The empty value is valid: RFC 9112 §3.2 asks for it when the target has no authority.
fn is_valid_host(value: &str) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", port),
                None => return false,
            },
        }
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (value, ""),
        }
    };
    port.bytes().all(|b| b.is_ascii_digit()) && is_reg_name(host)
}

/// RFC 3986 §3.2.2 `reg-name = *( unreserved / pct-encoded / sub-delims )`.
fn is_reg_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn host_of(version: Version, uri: &str, hosts: &[&[u8]]) -> Result<Option<String>, HostError> {
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(HOST, HeaderValue::from_bytes(host).unwrap());
        }
        request_host(version, &uri.parse().unwrap(), &headers)
    }

    #[test]
    fn one_valid_host_is_the_routing_host() {
        for host in [
            "example.com",
            "Example.COM:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8000",
            "",
        ] {
            assert_eq!(
                host_of(Version::HTTP_11, "/a", &[host.as_bytes()]),
                Ok(Some(host.to_owned())),
                "{host}"
            );
        }
        assert_eq!(host_of(Version::HTTP_10, "/a", &[]), Ok(None));
        assert_eq!(host_of(Version::HTTP_2, "/a", &[]), Ok(None));
    }

    #[test]
    fn repeated_missing_and_invalid_hosts_are_refused() {
        assert_eq!(
            host_of(Version::HTTP_11, "/", &[b"a.example", b"a.example"]),
            Err(HostError::Repeated)
        );
        assert_eq!(host_of(Version::HTTP_11, "/", &[]), Err(HostError::Missing));
        for bad in [
            &b"bad host"[..],
            b"../../etc/passwd",
            b"a/b",
            b"user@host",
            b"host:80x",
            b"[::1",
            b"[nope]",
            b"[::1]x",
            b"caf\xe9",
            b"a%2",
        ] {
            assert!(
                matches!(
                    host_of(Version::HTTP_11, "/", &[bad]),
                    Err(HostError::Invalid(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_target_authority_wins_and_must_agree_in_http2() {
        // Absolute form in HTTP/1.1: the target's authority, Host ignored (but still checked).
        assert_eq!(
            host_of(Version::HTTP_11, "http://a.example/x", &[b"b.example"]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            host_of(Version::HTTP_11, "http://a.example/x", &[]),
            Err(HostError::Missing)
        );
        assert_eq!(
            host_of(Version::HTTP_11, "http://u@a.example/x", &[b"a.example"]),
            Err(HostError::Userinfo("u@a.example".into()))
        );
        assert_eq!(
            host_of(Version::HTTP_2, "http://A.example:80/x", &[b"a.EXAMPLE:80"]),
            Ok(Some("A.example:80".into()))
        );
        assert!(matches!(
            host_of(Version::HTTP_2, "http://a.example/x", &[b"b.example"]),
            Err(HostError::Mismatch { .. })
        ));
    }
}
