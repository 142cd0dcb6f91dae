//! [`Name`]: the one rule for names that become NATS subject tokens or JetStream names: the
//! lattice's name, app and component names of a manifest, keyvalue bucket names, the
//! JetStream domain, app names at the control API.
//!
//! The rule is `[A-Za-z0-9_-]+`. NATS subjects are `.`-separated tokens where `*` and `>` are
//! wildcards and whitespace ends the subject (<https://docs.nats.io/nats-concepts/subjects>);
//! JetStream stream, KV bucket and object store names refuse `.`, `*`, `>`, whitespace and path
//! separators (NATS ADR-8 gives KV buckets `[a-zA-Z0-9_-]+`). A name of this set is therefore
//! one token of a subject, and a valid bucket or stream name whatever is put before it (`KV_`,
//! `OBJ_`, `lattice_<lattice>_`).
//!
//! Other rules that look alike are different things and stay where they are: label keys
//! (`config.rs`: they also take `.` and `/`, and never reach a subject), keyvalue-nats keys
//! (`providers::keyvalue::nats`: ADR-8 keys take `/`, `=` and `.`, several subject tokens).
//! Keyvalue link names (the identifier `store.open` matches) never leave the host, and take
//! any text.
//!
//! ```
//! use lattice::name::Name;
//!
//! let app: Name = "shop-2".parse().unwrap();
//! assert_eq!(app.as_str(), "shop-2");
//! assert_eq!(format!("lattice.{app}.evt"), "lattice.shop-2.evt");
//! let err = "a.b".parse::<Name>().unwrap_err();
//! assert!(err.to_string().contains("'.'"));
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

/// A name of `[A-Za-z0-9_-]+`: safe as one NATS subject token and as (part of) a JetStream
/// stream, KV bucket or object store name. Compares, orders and hashes as its text.
///
/// Made by [`Name::new`], `str::parse`, `TryFrom<String>` / `TryFrom<&str>`, or serde (a string,
/// checked while parsing: the error is the [`NameError`]'s text). Read by [`Name::as_str`],
/// `AsRef<str>`, `Borrow<str>` and `Display`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// Why a text is not a [`Name`]. The message is the reason only; callers say which field or flag
/// it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The text is empty.
    #[error("must not be empty")]
    Empty,
    /// The text has a character outside `[A-Za-z0-9_-]`.
    #[error(
        "{name:?}: {found:?} is not allowed: use letters, digits, '-' and '_' only (names become \
         NATS subject tokens and JetStream names)"
    )]
    Character {
        /// The text refused.
        name: String,
        /// The first character outside the set.
        found: char,
    },
}

impl Name {
    /// `text` as a name.
    ///
    /// # Errors
    /// [`NameError`]: `text` is empty or has a character outside `[A-Za-z0-9_-]`.
    pub fn new(text: impl Into<String>) -> Result<Name, NameError> {
        let text = text.into();
        Name::check(&text)?;
        Ok(Name(text))
    }

    /// Checks `text` against the rule without making a [`Name`]: for callers that keep a
    /// `String`.
    ///
    /// # Errors
    /// As [`Name::new`].
    pub fn check(text: &str) -> Result<(), NameError> {
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        match text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            Some(found) => Err(NameError::Character {
                name: text.to_owned(),
                found,
            }),
            None => Ok(()),
        }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name's text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for Name {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Name, NameError> {
        Name::new(text)
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;

    fn try_from(text: String) -> Result<Name, NameError> {
        Name::new(text)
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;

    fn try_from(text: &str) -> Result<Name, NameError> {
        Name::new(text)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_is_one_subject_token() {
        for good in ["a", "shop-2", "A_b-C", "0"] {
            assert_eq!(good.parse::<Name>().unwrap(), good);
        }
        assert_eq!(Name::new(""), Err(NameError::Empty));
        for (bad, found) in [
            ("a.b", '.'),
            ("a b", ' '),
            ("a*", '*'),
            ("a>", '>'),
            ("a/b", '/'),
            ("é", 'é'),
        ] {
            let err = Name::new(bad).unwrap_err();
            assert_eq!(
                err,
                NameError::Character {
                    name: bad.into(),
                    found
                }
            );
            assert!(err.to_string().contains("letters, digits"), "{err}");
        }
    }

    #[test]
    fn serde_checks_while_parsing() {
        #[derive(Debug, serde::Deserialize)]
        struct File {
            #[allow(dead_code)]
            name: Name,
        }
        let err = toml::from_str::<File>("name = \"a.b\"\n").unwrap_err();
        assert!(err.to_string().contains("'.' is not allowed"), "{err}");
        let ok: Name = serde_json::from_str("\"x-1\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"x-1\"");
    }
}
