//! Whether a NATS URL given to the node can be used as given: `--nats-url` as async-nats reads
//! it, `--leaf-url` as nats-server does, checked before anything starts (nats-server quotes a
//! leaf URL it cannot parse whole in its log, password included). Errors never hold the URL:
//! the caller names it, redacted ([`super::redact::redact_url`]).

use anyhow::ensure;

use super::redact::{url_credentials, without_userinfo};

/// Checks `--nats-url` as async-nats (0.51) reads it: a URL (`nats://` prepended when it has no
/// scheme) with scheme `nats`, `tls`, `ws` or `wss` and a host.
///
/// # Errors
/// What is wrong, without the URL (the caller names it, redacted).
pub fn check_nats_url(text: &str) -> anyhow::Result<()> {
    let full = if text.contains("://") {
        text.to_owned()
    } else {
        format!("nats://{text}")
    };
    let url = parse_url(&full)?;
    ensure!(
        matches!(url.scheme(), "nats" | "tls" | "ws" | "wss"),
        "scheme {:?} is not one of nats, tls, ws, wss",
        url.scheme()
    );
    Ok(())
}

/// Checks `--leaf-url` as nats-server reads a leaf remote's URL (Go's `net/url.Parse`): a
/// `scheme://` URL with a host, whose userinfo has only the characters Go accepts there
/// (letters, digits, `-._:~!$&'()*+,;=%@`, RFC 3986's unreserved and sub-delims) and valid
/// `%XX` escapes. nats-server quotes a URL it cannot parse whole in its log, password included.
///
/// # Errors
/// What is wrong, without the URL (the caller names it, redacted).
pub fn check_leaf_url(text: &str) -> anyhow::Result<()> {
    ensure!(
        text.contains("://"),
        "not a URL of the form scheme://host:port"
    );
    parse_url(text)?;
    if let Some((_, rest)) = text.split_once("://")
        && let Some((userinfo, _)) = rest.rsplit_once('@')
    {
        ensure!(
            userinfo
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:~!$&'()*+,;=%@".contains(c)),
            "its user name or password holds a character nats-server does not accept there \
             unescaped: write it as %XX (RFC 3986 §2.1)"
        );
        let bytes = userinfo.as_bytes();
        ensure!(
            bytes.iter().enumerate().all(|(i, &b)| b != b'%'
                || bytes
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))),
            "its user name or password holds a `%` that does not start a %XX escape"
        );
    }
    Ok(())
}

/// `text` parsed by the `url` crate (WHATWG URL), with a host, and with the userinfo our
/// [`url_credentials`] reads (up to the last `@`) being the URL's own: a `/`, `?` or `#` in a
/// password would end the host before it.
///
/// # Errors
/// The parser's reason, or the host or userinfo problem, without the URL.
pub fn parse_url(text: &str) -> anyhow::Result<url::Url> {
    let url = url::Url::parse(text).map_err(|e| anyhow::anyhow!("not a valid URL: {e}"))?;
    ensure!(url.has_host(), "not a URL with a host");
    ensure!(
        url_credentials(text).is_none() || !url.username().is_empty() || url.password().is_some(),
        "its user name or password holds a `/`, `?` or `#`: write it as %2F, %3F or %23"
    );
    // The credentials are read, and the URL handed to the client, up to the last `@`
    // (`redact::without_userinfo`): that must be the host the URL names, or the password would
    // go to another server (`nats://u:p@host/x@y`).
    let bare = url::Url::parse(&without_userinfo(text))
        .map_err(|_| anyhow::anyhow!("an `@` after its host: write it as %40"))?;
    ensure!(
        bare.host_str() == url.host_str() && bare.port() == url.port(),
        "an `@` after its host: write it as %40"
    );
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_nats_server_or_async_nats_cannot_parse_are_refused() {
        for (leaf, url, reason) in [
            (false, "nats://u:p@host/x@evil:4222", "%40"),
            (true, "nats-leaf://u:p@hub:7422/x@evil:7422", "%40"),
            (true, "nats-leaf://u:se cret@hub:7422", "does not accept"),
            (true, "nats-leaf://u:se\"cret@hub:7422", "does not accept"),
            (true, "nats-leaf://u:sé@hub:7422", "does not accept"),
            (true, "nats-leaf://u:secr%zzt@hub:7422", "%XX"),
            (true, "nats-leaf://u:se/cret@hub:7422", "not a valid URL"),
            (true, "nats-leaf://u:12/secret@hub:7422", "%2F"),
            (true, "u:secret@10.0.0.1:7422", "scheme://host"),
            (true, "nats-leaf://u:secret@:7422", "not a valid URL"),
            (false, "nats://u:secret@hub:port", "not a valid URL"),
            (false, "http://u:secret@hub:4222", "scheme"),
            (false, "u:secret@", "not a valid URL"),
        ] {
            let checked = if leaf {
                check_leaf_url(url)
            } else {
                check_nats_url(url)
            };
            let err = format!("{:#}", checked.unwrap_err());
            assert!(err.contains(reason), "{url}: {err}");
            assert!(
                !err.contains("secret") && !err.contains("cret"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn urls_both_can_parse_are_accepted() {
        for url in [
            "nats-leaf://u:pa,ss%20w;rd@hub:7422",
            "tls://connect.ngs.global",
            "nats-leaf://127.0.0.1:7422",
        ] {
            check_leaf_url(url).unwrap_or_else(|e| panic!("{url}: {e:#}"));
        }
        for url in [
            "u:it's a secret@10.0.0.1:4222",
            "127.0.0.1:4222",
            "tls://t@[::1]:4222",
            "nats://u:pa,ss@h",
        ] {
            check_nats_url(url).unwrap_or_else(|e| panic!("{url}: {e:#}"));
        }
    }
}
