//! URLs as they may be shown: the secret part of their userinfo replaced, for every log line,
//! heartbeat, CLI output and error that names a NATS server or leaf remote.
//!
//! NATS URLs carry credentials in their userinfo (RFC 3986 §3.2.1): `nats://user:pass@host`
//! (user and password) or `nats://token@host` (a token alone, as nats.go and async-nats read
//! it). Both forms are redacted: the password becomes [`REDACTED`] and a user name is kept,
//! while userinfo without a `:` is taken for a token and replaced whole. The input is one URL
//! (async-nats 0.51 and nats-server's leaf remotes take one URL per string), so a `,` is part of
//! it: RFC 3986 allows it unescaped in userinfo (a sub-delim).
//!
//! async-nats (0.51) does not send a URL's userinfo in its CONNECT (nats-io/nats.rs#1623), so
//! [`url_credentials`] reads it for the caller to set on `ConnectOptions`, as nats.go does,
//! and [`without_userinfo`] is what the caller hands async-nats: it logs the server's
//! `url::Url` with `Debug` (password included) at debug on every connect.

/// What replaces a password or token.
pub const REDACTED: &str = "***";

/// `url` with its userinfo's secret replaced by [`REDACTED`]: `nats://u:secret@h:4222` →
/// `nats://u:***@h:4222`, `nats://token@h` → `nats://***@h`; scheme, user name, host, port and
/// anything after them are kept; text with no userinfo comes back unchanged. `url` is one URL:
/// a `,` in it is a character of its userinfo or host, not a list separator.
///
/// The userinfo ends at the last `@` (after the scheme), so a password holding `/`, `?`, `#`,
/// `,` or `@` unescaped is hidden too (nothing after the scheme is taken for a path before that
/// `@`).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = split_scheme(url);
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}{user}:{REDACTED}@{host}"),
        None => format!("{scheme}{REDACTED}@{host}"),
    }
}

/// `url` without its userinfo (and the `@` ending it): `nats://u:secret@h:4222` →
/// `nats://h:4222`, `u:secret@h:4222` → `h:4222`; the userinfo ends where [`redact_url`] says.
/// A URL without userinfo comes back unchanged.
pub fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = split_scheme(url);
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}{host}"),
        None => url.to_owned(),
    }
}

/// `url` split after its `scheme://` (`""` when it has none) and the rest.
fn split_scheme(url: &str) -> (&str, &str) {
    match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    }
}

/// [`redact_url`] of every URL-like word (`scheme://…`, up to white space or a quote) inside
/// free `text`, such as an error chain that quotes a URL; the rest of the text is kept. A URL
/// right after a `"` runs to the next `"` not escaped by `\` (Go's `%q`, as nats-server quotes
/// a URL it cannot parse), so a password holding a space or a quote is hidden too.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `-` and `.` right before `://` (a byte index
        // after the last other character, which may be several bytes long).
        let start = rest[..at]
            .char_indices()
            .rfind(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let after = &rest[at + 3..];
        let len = if rest[..start].ends_with('"') {
            quoted_len(after)
        } else {
            after
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
                .unwrap_or(after.len())
        };
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..at + 3 + len]));
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Bytes of `text` before its first `"` not escaped by a `\` (all of it when there is none).
fn quoted_len(text: &str) -> usize {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return i,
            _ => escaped = false,
        }
    }
    text.len()
}

/// A URL as given by the user (a flag or env var), which may carry a password or token: its
/// `Debug` and `Display` show it [`redact_url`]ed, so a struct holding one can be logged or
/// printed whole. [`SecretUrl::as_str`] and [`SecretUrl::into_inner`] give the text itself.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL as given, secret included.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL as given, secret included.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(SecretUrl(text.to_owned()))
    }
}

impl From<&str> for SecretUrl {
    fn from(text: &str) -> Self {
        SecretUrl(text.to_owned())
    }
}

impl From<String> for SecretUrl {
    fn from(text: String) -> Self {
        SecretUrl(text)
    }
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

/// The credentials in the userinfo of the one URL `url` (up to its last `@`, as
/// [`redact_url`] reads it; the user name ends at the first `:`), `%XX` escapes decoded
/// (RFC 3986 §2.1; an invalid escape is kept as written); `None` when it has no userinfo.
pub fn url_credentials(url: &str) -> Option<UrlCredentials> {
    let (_, rest) = split_scheme(url);
    let (userinfo, _) = rest.rsplit_once('@')?;
    Some(match userinfo.split_once(':') {
        Some((user, password)) => UrlCredentials::UserPassword {
            user: percent_decoded(user),
            password: percent_decoded(password),
        },
        None => UrlCredentials::Token(percent_decoded(userinfo)),
    })
}

/// `text` with its valid `%XX` escapes decoded; bytes that do not form UTF-8 become U+FFFD.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // Two hex digits exactly: `u8::from_str_radix` alone would also take a sign (`%+1`).
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
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
            url_credentials("nats://t%2Fk@h2"),
            Some(UrlCredentials::Token("t/k".into()))
        );
        // A sign is no hex digit: `%+1` is kept as written.
        assert_eq!(
            url_credentials("nats://u:a%+1b%-fc@h"),
            Some(UrlCredentials::UserPassword {
                user: "u".into(),
                password: "a%+1b%-fc".into()
            })
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
    fn a_comma_is_part_of_the_one_url() {
        assert_eq!(
            redact_url("nats-leaf://u:pa,ss@hub"),
            "nats-leaf://u:***@hub"
        );
        assert_eq!(
            url_credentials("nats://u:pa,ss@hub"),
            Some(UrlCredentials::UserPassword {
                user: "u".into(),
                password: "pa,ss".into()
            })
        );
        assert_eq!(
            url_credentials("nats://to,ken@hub"),
            Some(UrlCredentials::Token("to,ken".into()))
        );
    }

    #[test]
    fn userinfo_is_removed_for_the_client() {
        for (url, bare) in [
            ("nats://u:secret@127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("u:secret@10.0.0.1:4222", "10.0.0.1:4222"),
            ("tls://t@k,n@hub:4222", "tls://hub:4222"),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("", ""),
        ] {
            assert_eq!(without_userinfo(url), bare, "{url}");
        }
    }

    #[test]
    fn a_secret_url_is_shown_redacted() {
        let url: SecretUrl = "u:it's a \"secret\"@10.0.0.1:4222".into();
        assert_eq!(format!("{url}"), "u:***@10.0.0.1:4222");
        assert_eq!(format!("{url:?}"), "\"u:***@10.0.0.1:4222\"");
        assert_eq!(url.as_str(), "u:it's a \"secret\"@10.0.0.1:4222");
    }

    #[test]
    fn non_ascii_before_a_scheme_does_not_panic() {
        assert_eq!(redact_urls_in("é://x"), "é://x");
        assert_eq!(redact_urls_in("é://u:secret@h"), "é://u:***@h");
        assert_eq!(redact_urls_in("→nats://t@h"), "→nats://***@h");
        assert_eq!(redact_urls_in("日本nats://u:p@h"), "日本nats://u:***@h");
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        assert_eq!(
            redact_urls_in("cannot reach NATS at nats://u:secret@h:1: IO error (\"tls://t@x\") ok"),
            "cannot reach NATS at nats://u:***@h:1: IO error (\"tls://***@x\") ok"
        );
        assert_eq!(redact_urls_in("no url here"), "no url here");
        assert!(!redact_urls_in("x nats://u:secret@h,nats://v:secret@g y").contains("secret"));
        assert!(!redact_urls_in("x nats-leaf://u:pa,ss@hub y").contains("ss"));
        // Quoted as Go's %q does: to the closing quote, escaped quotes included.
        assert_eq!(
            redact_urls_in(r#"error parsing leafnode url ["nats-leaf://u:se cr\"et@hub"] x"#),
            r#"error parsing leafnode url ["nats-leaf://u:***@hub"] x"#
        );
    }
}
