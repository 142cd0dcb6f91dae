//! The node's stable identity: an nkeys server key pair whose seed is kept in the data dir, so a
//! node keeps its id across restarts (as a wasmCloud host's id is an nkeys server key).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context, bail};

/// File in the data dir that holds the node's nkeys seed (mode 0600).
pub const NODE_KEY_FILE: &str = "node.nk";

/// Returns the node id (the public server key, `N…`, 56 characters) kept in `data_dir`, creating
/// the key on first start.
///
/// # Errors
/// The key file cannot be read or written, or does not hold a server seed (the message names
/// the file).
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(NODE_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = nkeys::KeyPair::from_seed(text.trim())
                .with_context(|| format!("{}: not an nkeys seed", path.display()))?;
            if key.key_pair_type() != nkeys::KeyPairType::Server {
                bail!(
                    "{}: holds a {:?} key, a server key (seed SN…) is expected",
                    path.display(),
                    key.key_pair_type()
                );
            }
            Ok(key.public_key())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = nkeys::KeyPair::new_server();
            let seed = key.seed().context("encoding the node key")?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", path.display()))?;
            writeln!(file, "{seed}").with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(id = key.public_key(), file = %path.display(), "new node identity created");
            Ok(key.public_key())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_stable_and_the_seed_private() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create(dir.path()).unwrap();
        assert!(id.starts_with('N') && id.len() == 56, "{id}");
        assert_eq!(load_or_create(dir.path()).unwrap(), id);
        let mode = std::fs::metadata(dir.path().join(NODE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(NODE_KEY_FILE), "garbage").unwrap();
        let err = format!("{:#}", load_or_create(dir.path()).unwrap_err());
        assert!(
            err.contains("node.nk") && err.contains("not an nkeys seed"),
            "{err}"
        );
    }
}
