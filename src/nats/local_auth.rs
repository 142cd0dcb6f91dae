//! Authentication to the node's own nats-server: one nkeys user key the node generates into its
//! data dir, the only client identity that server admits (nats-server's nkey authentication,
//! <https://docs.nats.io/running-a-nats-service/configuration/securing_nats/auth_intro/nkey_auth>).
//!
//! The node and the `lattice` CLI present it; a user who cannot read the data dir (mode 0700)
//! cannot connect at all (`Authorization Violation`). The seed file is `<data-dir>/local.nk`
//! (mode 0600), written once and kept across restarts, next to `nats.url`.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// File in the data dir holding the seed (`SU…`) of the nkeys user the node's nats-server admits.
pub const LOCAL_KEY_FILE: &str = "local.nk";

/// Mode of the data dir: its owner only (it holds the node's keys and the store).
pub const DATA_DIR_MODE: u32 = 0o700;

/// Why the node's local credentials cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum LocalAuthError {
    /// The data dir cannot be created or restricted to its owner.
    #[error("data dir {path}: cannot {action}: {source}")]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// What was attempted (`create it`, `restrict it to mode 0700`).
        action: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The data dir (or a symlink to it) belongs to another user: the node does not take it
    /// over.
    #[error(
        "data dir {path}: owned by uid {owner}, not by this user (uid {euid}): run the node as \
         that user, or give it a data dir of its own (--data-dir)"
    )]
    NotOwner {
        /// The data dir, or the symlink naming it.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// An existing data dir open to others holds files that are not a node's: it is left as
    /// it is rather than restricted (it may be `/var/lib` or a home dir).
    #[error(
        "data dir {path}: mode {mode:o} lets other users in and it holds files that are not a \
         lattice node's (such as {example}): give the node an empty or new dir (--data-dir), or \
         restrict this one yourself (chmod 700)"
    )]
    NotNodeDir {
        /// The data dir.
        path: PathBuf,
        /// Its mode (permission bits).
        mode: u32,
        /// One entry that is not a node's.
        example: String,
    },
    /// The seed file exists but cannot be read, written or made private.
    #[error("{path}: cannot {action}: {source}")]
    File {
        /// The seed file.
        path: PathBuf,
        /// What was attempted.
        action: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The seed file does not hold an nkeys user seed.
    #[error(
        "{path}: not an nkeys user seed (SU…): {reason}; remove it and restart the node to make a new one"
    )]
    Malformed {
        /// The seed file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The nkeys user the node's nats-server admits: its seed (secret) and public key (`U…`).
#[derive(Clone)]
pub struct LocalUser {
    seed: String,
    public_key: String,
}

impl std::fmt::Debug for LocalUser {
    /// The public key only: the seed is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalUser")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl LocalUser {
    /// The seed, for [`async_nats::ConnectOptions::nkey`].
    pub fn seed(&self) -> &str {
        &self.seed
    }

    /// The public key (`U…`, 56 characters), for nats-server's `authorization.users`.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Parses `text` (the seed file's content, whitespace around it ignored), read from `path`.
    fn parse(path: &Path, text: &str) -> Result<LocalUser, LocalAuthError> {
        let malformed = |reason: String| LocalAuthError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let key = nkeys::KeyPair::from_seed(text.trim()).map_err(|e| malformed(e.to_string()))?;
        if key.key_pair_type() != nkeys::KeyPairType::User {
            return Err(malformed(format!(
                "it holds a {:?} key",
                key.key_pair_type()
            )));
        }
        Ok(LocalUser {
            seed: text.trim().to_owned(),
            public_key: key.public_key(),
        })
    }
}

/// Entries of a data dir a node makes: an existing dir holding one of them (or nothing) is a
/// node's, and may be restricted to its owner.
const NODE_ENTRIES: [&str; 5] = ["node.nk", "nats.url", LOCAL_KEY_FILE, "state", "nats"];

/// Creates the data dir (and its parents) if missing, mode 0700. An existing one must belong to
/// this process's effective user (and so must a symlink naming it); if it is open to others it
/// is restricted to mode 0700 only when it is empty or already holds a node's files
/// (`NODE_ENTRIES`), which is logged.
///
/// # Errors
/// It cannot be created or read, it (or the symlink naming it) belongs to another user, it is
/// open to others and holds other files, or its mode cannot be set.
pub fn prepare_data_dir(dir: &Path) -> Result<(), LocalAuthError> {
    use std::os::unix::fs::MetadataExt as _;
    let failed = |action, source| LocalAuthError::DataDir {
        path: dir.to_path_buf(),
        action,
        source,
    };
    let euid = nix::unistd::geteuid().as_raw();
    let not_owner = |owner| LocalAuthError::NotOwner {
        path: dir.to_path_buf(),
        owner,
        euid,
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DATA_DIR_MODE)
                .create(dir)
                .map_err(|e| failed("create it", e));
        }
        Err(e) => return Err(failed("read it", e)),
        // A symlink another user (root aside) may change could point the node anywhere.
        Ok(link) if link.file_type().is_symlink() && link.uid() != euid && link.uid() != 0 => {
            return Err(not_owner(link.uid()));
        }
        Ok(_) => {}
    }
    let meta = std::fs::metadata(dir).map_err(|e| failed("read it", e))?;
    if meta.uid() != euid {
        return Err(not_owner(meta.uid()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode == DATA_DIR_MODE {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| failed("list it", e))?;
    let mut example = None;
    let mut nodes = false;
    for entry in entries.by_ref() {
        let name = entry.map_err(|e| failed("list it", e))?.file_name();
        let name = name.to_string_lossy();
        if NODE_ENTRIES.contains(&name.as_ref()) {
            nodes = true;
            break;
        }
        example.get_or_insert_with(|| name.into_owned());
    }
    if let (false, Some(example)) = (nodes, example) {
        return Err(LocalAuthError::NotNodeDir {
            path: dir.to_path_buf(),
            mode,
            example,
        });
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DATA_DIR_MODE))
        .map_err(|e| failed("restrict it to mode 0700", e))?;
    tracing::info!(
        dir = %dir.display(),
        was = format!("{mode:o}"),
        "data dir restricted to its owner (mode 700)"
    );
    Ok(())
}

/// Returns the local user kept in `data_dir` ([`LOCAL_KEY_FILE`]), creating it on first start;
/// an existing file readable by others is made private again (mode 0600).
///
/// # Errors
/// The file cannot be read, written or made private, or does not hold a user seed (the message
/// names the file).
pub fn load_or_create(data_dir: &Path) -> Result<LocalUser, LocalAuthError> {
    let path = data_dir.join(LOCAL_KEY_FILE);
    let failed = |action, source| LocalAuthError::File {
        path: path.clone(),
        action,
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let user = LocalUser::parse(&path, &text)?;
            if let Some(was) = crate::private_file::restrict(&path)
                .map_err(|e| failed("make it private (mode 600)", e))?
            {
                tracing::warn!(
                    file = %path.display(),
                    was = format!("{was:o}"),
                    "the local NATS key was readable by others; made private (mode 600)"
                );
            }
            Ok(user)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = nkeys::KeyPair::new_user();
            let seed = key.seed().map_err(|e| LocalAuthError::Malformed {
                path: path.clone(),
                reason: format!("encoding a new seed: {e}"),
            })?;
            // Complete or absent: a concurrent CLI never reads it empty.
            crate::private_file::write(&path, format!("{seed}\n").as_bytes(), true)
                .map_err(|e| failed("create it", e))?;
            tracing::info!(user = key.public_key(), file = %path.display(), "new local NATS key created");
            Ok(LocalUser {
                seed,
                public_key: key.public_key(),
            })
        }
        Err(e) => Err(failed("read it", e)),
    }
}

/// Removes a local key left in `data_dir` by an earlier run with its own nats-server, so that
/// the CLI does not present it to an external NATS (external mode records that URL instead).
///
/// # Errors
/// The file exists but cannot be removed.
pub fn remove(data_dir: &Path) -> Result<(), LocalAuthError> {
    let path = data_dir.join(LOCAL_KEY_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LocalAuthError::File {
            path,
            action: "remove it",
            source: e,
        }),
    }
}

/// The local user of the node whose data dir is `data_dir`, for a client (the CLI): `None` when
/// that node keeps none (external mode, or a version before local authentication).
///
/// # Errors
/// The file exists but cannot be read (the message says that only the node's user, who can read
/// the data dir, may connect, and what to do instead), or is malformed.
pub fn read(data_dir: &Path) -> Result<Option<LocalUser>, LocalAuthError> {
    let path = data_dir.join(LOCAL_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => LocalUser::parse(&path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LocalAuthError::File {
            path,
            action: "read it",
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/data");
        prepare_data_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        let user = load_or_create(&data).unwrap();
        assert!(user.public_key().starts_with('U'), "{user:?}");
        assert!(!format!("{user:?}").contains(user.seed()));
        let file = data.join(LOCAL_KEY_FILE);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            load_or_create(&data).unwrap().public_key(),
            user.public_key()
        );
        assert_eq!(
            read(&data).unwrap().unwrap().public_key(),
            user.public_key()
        );

        // Opened up by someone: tightened again, the key kept.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_data_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(
            load_or_create(&data).unwrap().public_key(),
            user.public_key()
        );
        assert_eq!(mode(&file), 0o600);

        remove(&data).unwrap();
        assert!(read(&data).unwrap().is_none());
        remove(&data).unwrap();
    }

    #[test]
    fn an_open_dir_is_restricted_only_when_it_is_a_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let open = |path: &Path| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap()
        };
        // Empty: restricted.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        open(&empty);
        prepare_data_dir(&empty).unwrap();
        assert_eq!(mode(&empty), 0o700);
        // A node's (one of its files): restricted.
        let node = dir.path().join("node");
        std::fs::create_dir_all(node.join("state")).unwrap();
        std::fs::write(node.join("other"), "x").unwrap();
        open(&node);
        prepare_data_dir(&node).unwrap();
        assert_eq!(mode(&node), 0o700);
        // Someone's dir of other files (a home dir, /var/lib): left alone, named.
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join(".bashrc"), "x").unwrap();
        open(&home);
        let err = prepare_data_dir(&home).unwrap_err().to_string();
        assert!(
            err.contains("home") && err.contains(".bashrc") && err.contains("755"),
            "{err}"
        );
        assert_eq!(mode(&home), 0o755);
    }

    #[test]
    fn a_dir_of_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let euid = nix::unistd::geteuid().as_raw();
        let other = if euid == 65534 { 65533 } else { 65534 };
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        if std::os::unix::fs::chown(&theirs, Some(other), None).is_err() {
            eprintln!("skipped: cannot chown (not root)");
            return;
        }
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = prepare_data_dir(&theirs).unwrap_err().to_string();
        assert!(
            err.contains("theirs") && err.contains(&format!("uid {other}")),
            "{err}"
        );
        assert_eq!(mode(&theirs), 0o755);
        // A symlink of another user to a dir of ours.
        let ours = dir.path().join("ours");
        std::fs::create_dir(&ours).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&ours, &link).unwrap();
        prepare_data_dir(&link).unwrap();
        std::os::unix::fs::lchown(&link, Some(other), None).unwrap();
        assert_eq!(std::fs::symlink_metadata(&link).unwrap().uid(), other);
        let err = prepare_data_dir(&link).unwrap_err().to_string();
        assert!(err.contains("link") && err.contains("owned by"), "{err}");
    }

    #[test]
    fn a_file_without_a_user_seed_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(LOCAL_KEY_FILE);
        std::fs::write(&file, "garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("local.nk") && err.contains("not an nkeys user seed"),
            "{err}"
        );
        let server = nkeys::KeyPair::new_server().seed().unwrap();
        std::fs::write(&file, server).unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Server"), "{err}");
    }
}
