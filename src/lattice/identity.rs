//! The node's stable identity: an nkeys server key pair whose seed is kept in the data dir, so a
//! node keeps its id across restarts (as a wasmCloud host's id is an nkeys server key), and the
//! ed25519 signatures made and checked with it (`PROTOCOL.md` §Events).

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// File in the data dir that holds the node's nkeys seed (mode 0600).
pub const NODE_KEY_FILE: &str = "node.nk";

/// Returns the node's key pair kept in `data_dir` (with its seed; its public key, `N…`, 56
/// characters, is the node id), creating the key on first start (mode 0600); an existing
/// key file readable by others is made private again (mode 0600).
///
/// # Errors
/// The key file cannot be read or written, or does not hold a server seed (the message names
/// the file).
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<nkeys::KeyPair> {
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
            // Whoever reads the seed can speak for the node: a copy readable by others is made
            // private again, as the local NATS key is (`nats::local_auth`).
            if let Some(was) = crate::private_file::restrict(&path)
                .with_context(|| format!("making {} private (mode 600)", path.display()))?
            {
                tracing::warn!(
                    file = %path.display(),
                    was = format!("{was:o}"),
                    "the node key was readable by others; made private (mode 600)"
                );
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = nkeys::KeyPair::new_server();
            let seed = key.seed().context("encoding the node key")?;
            // Complete or absent, never a partial seed.
            crate::private_file::write(&path, format!("{seed}\n").as_bytes(), true)
                .with_context(|| format!("creating {}", path.display()))?;
            tracing::info!(id = key.public_key(), file = %path.display(), "new node identity created");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Why a signature was not accepted by [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The id is not the public key of an nkeys server key pair (`N…`).
    #[error("not an nkeys server public key")]
    NotAServerKey,
    /// The signature is not base64url (RFC 4648 §5, unpadded) of 64 bytes, or does not verify
    /// with the id's key over the given bytes.
    #[error("the signature does not verify with the id's key")]
    BadSignature,
}

/// Signs `bytes` with `key` (ed25519, as nkeys signs): the 64-byte signature as unpadded
/// base64url (RFC 4648 §5), 86 characters.
///
/// # Errors
/// `key` holds no seed (a public key only).
pub fn sign(key: &nkeys::KeyPair, bytes: &[u8]) -> anyhow::Result<String> {
    let signature = key
        .sign(bytes)
        .with_context(|| format!("signing with node key {}", key.public_key()))?;
    Ok(URL_SAFE_NO_PAD.encode(signature))
}

/// Checks that `signature` (as [`sign`] makes it) was made over `bytes` by the key whose
/// public key is `id` (a server key, `N…`).
///
/// # Errors
/// [`VerifyError::NotAServerKey`] for an `id` that is no server public key,
/// [`VerifyError::BadSignature`] for a signature that is not base64url or does not verify.
pub fn verify(id: &str, bytes: &[u8], signature: &str) -> Result<(), VerifyError> {
    let key = match nkeys::KeyPair::from_public_key(id) {
        Ok(key) if key.key_pair_type() == nkeys::KeyPairType::Server => key,
        _ => return Err(VerifyError::NotAServerKey),
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| VerifyError::BadSignature)?;
    key.verify(bytes, &signature)
        .map_err(|_| VerifyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_id_is_stable_and_the_seed_private() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create(dir.path()).unwrap().public_key();
        assert!(id.starts_with('N') && id.len() == 56, "{id}");
        assert_eq!(load_or_create(dir.path()).unwrap().public_key(), id);
        let mode = std::fs::metadata(dir.path().join(NODE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let file = dir.path().join(NODE_KEY_FILE);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap().public_key(), id);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(NODE_KEY_FILE), "garbage").unwrap();
        let err = format!("{:#}", load_or_create(dir.path()).unwrap_err());
        assert!(
            err.contains("node.nk") && err.contains("not an nkeys seed"),
            "{err}"
        );
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_over_its_bytes() {
        let key = nkeys::KeyPair::new_server();
        let other = nkeys::KeyPair::new_server();
        let signature = sign(&key, b"payload").unwrap();
        assert_eq!(signature.len(), 86, "{signature}");
        assert_eq!(verify(&key.public_key(), b"payload", &signature), Ok(()));
        assert_eq!(
            verify(&key.public_key(), b"payload!", &signature),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(&other.public_key(), b"payload", &signature),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(&key.public_key(), b"payload", "not base64!"),
            Err(VerifyError::BadSignature)
        );
        let user = nkeys::KeyPair::new_user();
        let by_user = sign(&user, b"payload").unwrap();
        assert_eq!(
            verify(&user.public_key(), b"payload", &by_user),
            Err(VerifyError::NotAServerKey)
        );
        assert_eq!(
            verify("Nnot-a-key", b"payload", &signature),
            Err(VerifyError::NotAServerKey)
        );
        let public_only = nkeys::KeyPair::from_public_key(&key.public_key()).unwrap();
        assert!(sign(&public_only, b"payload").is_err());
    }
}
