//! Credentials handed over by systemd (`LoadCredential=`, `SetCredential=`): `--creds
//! credential:NAME` names the file `$CREDENTIALS_DIRECTORY/NAME`, and without `--creds` (nor a
//! `creds` key in `lattice.toml`) the credential [`DEFAULT_CREDENTIAL`] is used when the unit
//! loaded one.
//!
//! systemd places a unit's credentials in a directory of their own
//! (`/run/credentials/<unit>/`) that only the service's processes can read, on a memory file
//! system (ramfs where it can, so never swapped out); the files are read-only (mode 0400 or
//! 0440), owned by root or the service user, possibly with an ACL granting the service user
//! access
//! (<https://systemd.io/CREDENTIALS/>). So the file stays root-only where it lives on disk
//! (`/etc/credstore/lattice.creds`, mode 0600, for the shipped unit) and the service, even a `DynamicUser=` one, can read
//! its copy. Whether group or others could read the copy says nothing about who can (the
//! directory decides), so a credential is not held to the mode check that a creds file given
//! by path is ([`crate::config::check_creds_file`]); it must still be a readable, regular NATS
//! creds file.
//!
//! Why a default: a unit that loads a credential named `default.creds` has said which NATS
//! identity the node is, and the credentials directory holds only what the unit loaded, so
//! nothing found there by accident can change the node's mode. It does not say which lattice,
//! though: the default credential requires an explicit leaf or NATS URL (checked by
//! [`crate::config`]), so that it never makes the node a leaf of the default leaf URL, a public
//! service. Outside systemd (`$CREDENTIALS_DIRECTORY` unset) there is no default.

use std::path::{Path, PathBuf};

/// How `--creds` (or the `creds` key) names a systemd credential: `credential:NAME`. A creds
/// file whose path starts so is given as `./credential:…`.
pub const PREFIX: &str = "credential:";

/// The credential used when no creds are given and systemd loaded one of this name.
pub const DEFAULT_CREDENTIAL: &str = "default.creds";

/// The environment variable systemd sets to the unit's credentials directory.
pub const DIRECTORY_VAR: &str = "CREDENTIALS_DIRECTORY";

/// A `credential:NAME` that names no readable credential.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// `$CREDENTIALS_DIRECTORY` is not set: not under systemd, or the unit loads no credential.
    #[error(
        "{origin} credential:{name}: $CREDENTIALS_DIRECTORY is not set (systemd sets it for a unit \
         with LoadCredential={name}:/path/to/file; outside systemd, give the creds file's path)"
    )]
    NoDirectory {
        /// Where it was given, e.g. `--creds`.
        origin: String,
        /// The credential's name.
        name: String,
    },
    /// The name is not one file name.
    #[error(
        "{origin} credential:{name:?}: a credential's name is one file name (not empty, no `/`, \
         not `.` or `..`)"
    )]
    BadName {
        /// Where it was given.
        origin: String,
        /// The name as given.
        name: String,
    },
    /// The directory has no file of that name.
    #[error(
        "{origin} credential:{name}: no credential {name} in $CREDENTIALS_DIRECTORY ({}): does \
         the unit have LoadCredential={name}:/path/to/file?",
        directory.display()
    )]
    Missing {
        /// Where it was given.
        origin: String,
        /// The credential's name.
        name: String,
        /// `$CREDENTIALS_DIRECTORY`.
        directory: PathBuf,
    },
}

/// The credential name in `value` if it is `credential:NAME`, else `None` (a path).
pub fn credential_name(value: &Path) -> Option<&str> {
    value.to_str()?.strip_prefix(PREFIX)
}

/// The path of credential `name` in the unit's credentials directory.
///
/// # Errors
/// [`CredentialError`]: `$CREDENTIALS_DIRECTORY` unset or empty, `name` not one file name
/// (empty, with a `/`, `.` or `..`), or no such file there.
pub fn resolve(name: &str, origin: &str) -> Result<PathBuf, CredentialError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(CredentialError::BadName {
            origin: origin.to_owned(),
            name: name.to_owned(),
        });
    }
    let directory = directory().ok_or_else(|| CredentialError::NoDirectory {
        origin: origin.to_owned(),
        name: name.to_owned(),
    })?;
    let path = directory.join(name);
    if !path.exists() {
        return Err(CredentialError::Missing {
            origin: origin.to_owned(),
            name: name.to_owned(),
            directory,
        });
    }
    Ok(path)
}

/// `$CREDENTIALS_DIRECTORY/default.creds`, when systemd set the variable and that file exists.
pub fn default_credential() -> Option<PathBuf> {
    let path = directory()?.join(DEFAULT_CREDENTIAL);
    path.exists().then_some(path)
}

fn directory() -> Option<PathBuf> {
    std::env::var_os(DIRECTORY_VAR)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_file_names() {
        for bad in ["", "a/b", "..", ".", "../x", "/etc/passwd"] {
            let err = resolve(bad, "--creds").unwrap_err();
            assert!(
                matches!(err, CredentialError::BadName { .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().starts_with("--creds credential:"), "{err}");
        }
        assert_eq!(
            credential_name(Path::new("credential:default.creds")),
            Some("default.creds")
        );
        assert_eq!(credential_name(Path::new("./credential:x")), None);
        assert_eq!(credential_name(Path::new("/etc/lattice/x.creds")), None);
    }
}
