//! URLs as they may be shown: the secret part of their userinfo replaced, for every log line,
//! heartbeat, CLI output and error that names a NATS server or leaf remote.
//!
//! NATS URLs carry credentials in their userinfo (RFC 3986 §3.2.1): `nats://user:pass@host`
//! (user and password) or `nats://token@host` (a token alone, as nats.go and async-nats read
//! it). Both forms are redacted: the password becomes [`REDACTED`] and a user name is kept,
//! while userinfo without a `:` is taken for a token and replaced whole. A list of URLs
//! separated by commas (as `nats-server`'s and async-nats' clients accept) is redacted item by
//! item.
//!
//! async-nats (0.51) does not send a URL's userinfo in its CONNECT (nats-io/nats.rs#1623), so
//! [`url_credentials`] reads it for the caller to set on `ConnectOptions`, as nats.go does.

/// What replaces a password or token.
pub const REDACTED: &str = "***";

/// `url` with its userinfo's secret replaced by [`REDACTED`]: `nats://u:secret@h:4222` →
/// `nats://u:***@h:4222`, `nats://token@h` → `nats://***@h`; scheme, user name, host, port and
/// anything after them are kept. A comma-separated list is redacted item by item; text with no
/// userinfo comes back unchanged.
///
/// The userinfo ends at the last `@` of an item, so a password holding `/`, `?`, `#` or `@`
/// unescaped is hidden too (nothing after the scheme is taken for a path before that `@`).
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

/// [`redact_url`] of every URL-like word (`scheme://…`, up to white space or a quote) inside
/// free `text`, such as an error chain that quotes a URL; the rest of the text is kept.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `-` and `.` right before `://`.
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let after = &rest[at + 3..];
        let len = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(after.len());
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..at + 3 + len]));
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// What the userinfo of a NATS URL authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlCredentials {
    /// `user:password@`.
    UserPassword {
        /// The user name, `%XX`-decoded.
        user: String,
        /// The password, `%XX`-decoded.
        password: String,
    },
    /// `token@`: a token alone, `%XX`-decoded.
    Token(String),
}

/// The credentials in the userinfo of `url` (the first item of a comma-separated list that has
/// any), `%XX` escapes decoded (RFC 3986 §2.1; an invalid escape is kept as written); `None`
/// when no item has userinfo.
pub fn url_credentials(url: &str) -> Option<UrlCredentials> {
    url.split(',').find_map(|item| {
        let rest = item.split_once("://").map_or(item, |(_, rest)| rest);
        let (userinfo, _) = rest.rsplit_once('@')?;
        Some(match userinfo.split_once(':') {
            Some((user, password)) => UrlCredentials::UserPassword {
                user: percent_decoded(user),
                password: percent_decoded(password),
            },
            None => UrlCredentials::Token(percent_decoded(userinfo)),
        })
    })
}

/// `text` with its valid `%XX` escapes decoded; bytes that do not form UTF-8 become U+FFFD.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `options` with the credentials of `url`'s userinfo, if it has any ([`url_credentials`]).
pub fn with_url_credentials(
    options: async_nats::ConnectOptions,
    url: &str,
) -> async_nats::ConnectOptions {
    match url_credentials(url) {
        Some(UrlCredentials::UserPassword { user, password }) => {
            options.user_and_password(user, password)
        }
        Some(UrlCredentials::Token(token)) => options.token(token),
        None => options,
    }
}

fn redact_one(item: &str) -> String {
    let (scheme, rest) = match item.find("://") {
        Some(at) => item.split_at(at + 3),
        None => ("", item),
    };
    let Some(at) = rest.rfind('@') else {
        return item.to_owned();
    };
    let (userinfo, host) = (&rest[..at], &rest[at..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}{user}:{REDACTED}{host}"),
        None => format!("{scheme}{REDACTED}{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_redacted_user_and_host_kept() {
        for (url, shown) in [
            (
                "nats://u:secret@127.0.0.1:4222",
                "nats://u:***@127.0.0.1:4222",
            ),
            ("nats://s3cr3t-token@hub.example", "nats://***@hub.example"),
            ("tls://u:p@ss@w/rd@hub:7422", "tls://u:***@hub:7422"),
            ("u:secret@127.0.0.1:4222", "u:***@127.0.0.1:4222"),
            ("nats://u:@h", "nats://u:***@h"),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("tls://connect.ngs.global", "tls://connect.ngs.global"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn credentials_are_read_from_the_userinfo() {
        assert_eq!(
            url_credentials("nats://u:p%40ss:w@h:4222"),
            Some(UrlCredentials::UserPassword {
                user: "u".into(),
                password: "p@ss:w".into()
            })
        );
        assert_eq!(
            url_credentials("nats://h1,nats://t%2Fk@h2"),
            Some(UrlCredentials::Token("t/k".into()))
        );
        assert_eq!(url_credentials("nats://127.0.0.1:4222"), None);
        assert_eq!(
            url_credentials("a:100%@h"),
            Some(UrlCredentials::UserPassword {
                user: "a".into(),
                password: "100%".into()
            })
        );
    }

    #[test]
    fn lists_are_redacted_item_by_item() {
        assert_eq!(
            redact_url("nats://a:one@h1:4222,nats://h2:4222,nats://tok@h3"),
            "nats://a:***@h1:4222,nats://h2:4222,nats://***@h3"
        );
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        assert_eq!(
            redact_urls_in("cannot reach NATS at nats://u:secret@h:1: IO error (\"tls://t@x\") ok"),
            "cannot reach NATS at nats://u:***@h:1: IO error (\"tls://***@x\") ok"
        );
        assert_eq!(redact_urls_in("no url here"), "no url here");
        assert!(!redact_urls_in("x nats://u:secret@h,nats://v:secret@g y").contains("secret"));
    }
}
