//! The TLS client settings of outgoing HTTP: rustls (the `ring` provider wasmtime-wasi-http and
//! async-nats use too) trusting the system's roots (`rustls-native-certs`: the OpenSSL-style
//! bundle, `SSL_CERT_FILE` / `SSL_CERT_DIR` honoured) plus the node operator's `--ca-file`s.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A `--ca-file` cannot be read, or is not PEM.
    #[error("--ca-file {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        source: rustls::pki_types::pem::Error,
    },
    /// A `--ca-file` holds no `CERTIFICATE` block.
    #[error("--ca-file {}: no PEM CERTIFICATE in it", file.display())]
    Empty {
        /// The file.
        file: PathBuf,
    },
    /// A certificate of a `--ca-file` is not one rustls can trust as a root.
    #[error("--ca-file {}: certificate {index} (from 1) is not a usable CA certificate: {source}", file.display())]
    BadCertificate {
        /// The file.
        file: PathBuf,
        /// Which certificate of the file, from 1.
        index: usize,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// rustls refused the configuration (no safe protocol version).
    #[error("TLS client configuration: {0}")]
    Config(rustls::Error),
}

/// The system's trusted certificates, loaded once per process; unreadable ones are logged and
/// skipped.
static NATIVE_CERTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(error = %error, "cannot read some of the system's trusted certificates");
    }
    loaded.certs
});

/// The system's trusted roots ([`native_certs`]) as rustls's store.
static NATIVE_ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(native_certs().iter().cloned());
    tracing::debug!(
        added,
        ignored,
        "system trusted roots loaded for outgoing HTTPS"
    );
    Arc::new(roots)
});

/// The system's trusted certificates (`rustls-native-certs`), loaded on first use; empty on a
/// system without a CA bundle.
pub fn native_certs() -> &'static [CertificateDer<'static>] {
    &NATIVE_CERTS
}

/// The rustls client configuration of outgoing HTTPS: HTTP/1.1 by ALPN, the system's roots plus
/// every certificate of `ca_files` (PEM, any number of `CERTIFICATE` blocks each).
///
/// # Errors
/// [`TlsError`] naming the file that cannot be read, holds no certificate or holds one rustls
/// cannot use as a root.
pub fn client_config(ca_files: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::clone(&NATIVE_ROOTS);
    for file in ca_files {
        add_ca_file(&mut roots, file)?;
    }
    if roots.is_empty() {
        tracing::warn!(
            "no trusted roots for outgoing HTTPS (none in the system's store, no --ca-file): \
             every https request of a component will fail its certificate check"
        );
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of the `--ca-file` `file` (PEM, any number of `CERTIFICATE` blocks), each
/// one rustls can trust as a root.
///
/// # Errors
/// [`TlsError`] naming `file` when it cannot be read, holds no certificate or holds one rustls
/// cannot use as a root.
pub fn ca_file_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        file: file.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            file: file.to_path_buf(),
        });
    }
    let mut check = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        check
            .add(cert.clone())
            .map_err(|source| TlsError::BadCertificate {
                file: file.to_path_buf(),
                index: i + 1,
                source,
            })?;
    }
    Ok(certs)
}

fn add_ca_file(roots: &mut RootCertStore, file: &Path) -> Result<(), TlsError> {
    roots.add_parsable_certificates(ca_file_certs(file)?);
    tracing::debug!(file = %file.display(), "trusting the CA certificates of --ca-file");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(std::slice::from_ref(&missing)).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(std::slice::from_ref(&empty)).unwrap_err();
        assert!(matches!(err, TlsError::Empty { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client_config(std::slice::from_ref(&garbage)).unwrap_err();
        assert!(
            matches!(err, TlsError::BadCertificate { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("garbage.pem"), "{err}");
    }

    #[test]
    fn no_ca_file_is_fine() {
        let config = client_config(&[]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
