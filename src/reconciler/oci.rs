//! Components from OCI registries: pulling a component named by reference
//! (`REGISTRY/REPO:TAG`, `REGISTRY/REPO@sha256:…`, `oci://…`) and pushing one, through the ORAS
//! project's `oci-client` (the OCI distribution spec,
//! <https://github.com/opencontainers/distribution-spec/blob/main/spec.md>).
//!
//! Layouts accepted ([`wasm_layer`]): the CNCF wasm OCI artifact
//! (<https://tag-runtime.cncf.io/wgs/wasm/deliverables/wasm-oci-artifact/>: config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer), wasmCloud's
//! `application/vnd.module.wasm.content.layer.v1+wasm` layer (`wash push`), and any single-layer
//! image whose layer is a wasm component. [`Registry::push`] writes the CNCF layout.
//!
//! Credentials ([`Credentials`]): anonymous unless a docker `config.json` (`--registry-creds
//! FILE`, then `$DOCKER_CONFIG/config.json`, then `~/.docker/config.json`) has a static `auths`
//! entry for the registry (what `docker login`, `oras login`, `wash` and `spin registry login`
//! write; credential helpers are not run). HTTPS trusts the system's roots plus `--ca-file`;
//! plain HTTP only for the registries of `--insecure-registry HOST[:PORT]`.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

mod credentials;
pub use credentials::{Credentials, CredentialsError};

use super::artifacts::MAX_COMPONENT_BYTES;
use crate::host::hex;

/// The CNCF wasm artifact's layer media type.
pub const WASM_LAYER: &str = "application/wasm";
/// The CNCF wasm artifact's config media type.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// wasmCloud's component layer media type (`wash push`).
pub const WASMCLOUD_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's image manifest media type (schema 2), which registries may serve.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Largest OCI manifest accepted, in bytes (a wasm artifact's is well under 1 KiB). Checked
/// after `oci-client` has read the body: it bounds what is parsed and kept, not what is
/// downloaded (the connection's [`READ_TIMEOUT`] and the [`OPERATION_TIMEOUT`] bound that).
pub const MAX_OCI_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes allocated for a layer before it is read (its declared size is the registry's
/// word), in bytes.
const INITIAL_LAYER_CAPACITY: u64 = 1024 * 1024;
/// Deadline of connecting to a registry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one read from a registry's connection (a stalled transfer fails after it).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a whole pull or push, whatever its progress. A node's pull while it starts a
/// version is also bounded by `--start-timeout` (60 s by default), the shorter of the two; a
/// config-dir manifest's tag is resolved inline by the watcher's scan, which waits up to this
/// long per image.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);

/// A component pinned to the registry manifest it came from: what a stored version records for
/// a component whose `image` is an OCI reference (`PROTOCOL.md` §Desired state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciPin {
    /// The reference as the manifest writes it (without `oci://`), e.g.
    /// `ghcr.io/wasmcloud/components/http-hello-world-rust:0.1.0`.
    pub reference: String,
    /// Digest of the OCI manifest it resolved to: `sha256:<64 hex>`.
    pub digest: String,
}

impl OciPin {
    /// The reference pinned to the digest: `REGISTRY/REPO@sha256:…`.
    ///
    /// # Errors
    /// [`OciError::BadReference`]: the stored reference does not parse (not as stored).
    pub fn pinned(&self) -> Result<Reference, OciError> {
        let reference = parse_reference(&self.reference)?;
        Ok(Reference::with_digest(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            self.digest.clone(),
        ))
    }

    /// `REFERENCE@DIGEST` as errors name it, the digest written once when the reference
    /// already names it (`repo@sha256:…`).
    pub fn shown(&self) -> String {
        if self.reference.ends_with(&format!("@{}", self.digest)) {
            self.reference.clone()
        } else {
            format!("{}@{}", self.reference, self.digest)
        }
    }
}

impl std::fmt::Display for OciPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reference, self.digest)
    }
}

/// Why a pull or push failed. Each message is one line that starts with the reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciError {
    /// The reference does not parse.
    #[error("{reference}: not an OCI reference: {reason}")]
    BadReference {
        /// As written.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The registry is not one of `--allowed-registry`.
    #[error(
        "{reference}: registry {registry} is not allowed on this node (--allowed-registry {allowed})"
    )]
    NotAllowed {
        /// The reference.
        reference: String,
        /// Its registry.
        registry: String,
        /// The registries allowed, comma-separated.
        allowed: String,
    },
    /// The registry has no such tag, digest or repository.
    #[error("{reference}: unknown tag or digest: the registry has no such manifest")]
    NotFound {
        /// The reference.
        reference: String,
    },
    /// The registry has the manifest but not a blob it names.
    #[error("{reference}: blob {digest} unknown: the registry has the manifest but not this blob")]
    BlobNotFound {
        /// The reference.
        reference: String,
        /// The blob's digest.
        digest: String,
    },
    /// More bytes came than the manifest declared for the layer.
    #[error(
        "{reference}: layer {digest} is longer than the {declared} bytes its manifest declares; refused"
    )]
    LongerThanDeclared {
        /// The reference.
        reference: String,
        /// The layer's digest.
        digest: String,
        /// Its declared size, in bytes.
        declared: u64,
    },
    /// The registry refused the credentials used (or their absence).
    #[error("{reference}: unauthorized: {detail}")]
    Unauthorized {
        /// The reference.
        reference: String,
        /// What was tried.
        detail: String,
    },
    /// The registry cannot be reached (connection, TLS, timeout).
    #[error("{reference}: registry unreachable: {detail}")]
    Unreachable {
        /// The reference.
        reference: String,
        /// The transport's error.
        detail: String,
    },
    /// The manifest is not one of the wasm layouts accepted.
    #[error(
        "{reference}: wrong media type: {found}; expected a wasm component ({WASM_LAYER} layer with config {WASM_CONFIG}, {WASMCLOUD_LAYER}, or a single layer holding a component)"
    )]
    MediaType {
        /// The reference.
        reference: String,
        /// The media types found: manifest, config and layers.
        found: String,
    },
    /// The reference's digest uses an algorithm other than sha256.
    #[error("{reference}: unsupported digest algorithm {algorithm}: only sha256 is accepted")]
    UnsupportedDigest {
        /// The reference.
        reference: String,
        /// The algorithm named (`sha512`).
        algorithm: String,
    },
    /// The bytes served are not those the digest names.
    #[error("{reference}: digest mismatch: expected {expected}, got {actual}; refused")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// The digest asked for or declared.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
    /// The layer is larger than [`MAX_COMPONENT_BYTES`].
    #[error(
        "{reference}: too large: {bytes} bytes is more than the {MAX_COMPONENT_BYTES} bytes a component may have"
    )]
    TooLarge {
        /// The reference.
        reference: String,
        /// Declared (or read so far) size, in bytes.
        bytes: u64,
    },
    /// Anything else the registry answered.
    #[error("{reference}: registry error: {detail}")]
    Registry {
        /// The reference.
        reference: String,
        /// Its answer.
        detail: String,
    },
}

/// Parses a reference as manifests write it (`oci://` allowed).
///
/// # Errors
/// [`OciError::BadReference`].
pub fn parse_reference(text: &str) -> Result<Reference, OciError> {
    let bare = text.strip_prefix("oci://").unwrap_or(text);
    bare.parse::<Reference>()
        .map_err(|e| OciError::BadReference {
            reference: text.to_owned(),
            reason: e.to_string(),
        })
}

/// How a node or CLI talks to registries: `--registry-creds`, `--insecure-registry`,
/// `--ca-file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// A docker `config.json` read before `$DOCKER_CONFIG`'s and `~/.docker/config.json`.
    pub creds_file: Option<PathBuf>,
    /// Registries (`HOST` or `HOST:PORT`, as references name them) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// PEM files of CA certificates trusted besides the system's roots.
    pub ca_files: Vec<PathBuf>,
    /// The only registries pulled from (`HOST` or `HOST:PORT`; `docker.io` for Docker Hub),
    /// `--allowed-registry` of a node; empty: any.
    pub allowed: Vec<String>,
}

/// A component pulled: its bytes and where they came from.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The wasm, at most [`MAX_COMPONENT_BYTES`].
    pub wasm: Vec<u8>,
    /// The reference pinned to the manifest's digest.
    pub pin: OciPin,
}

/// A client of OCI registries.
#[derive(Clone)]
pub struct Registry {
    /// `Err` with the reason when this machine trusts no CA certificate at all (no system
    /// roots, no `--ca-file`): every pull and push then fails with it, naming the reference,
    /// and nothing else of the node depends on it.
    client: Result<Client, String>,
    credentials: Credentials,
    /// `--allowed-registry`; empty: any.
    allowed: Vec<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// The client, or [`OciError::Unreachable`] for `reference` when this machine trusts no
    /// CA certificate.
    fn client(&self, reference: &str) -> Result<&Client, OciError> {
        self.client.as_ref().map_err(|why| OciError::Unreachable {
            reference: reference.to_owned(),
            detail: why.clone(),
        })
    }

    /// A client with `settings`, its credentials read now.
    ///
    /// # Errors
    /// `--registry-creds` or a docker config cannot be read, or a `--ca-file` is not readable.
    pub fn new(settings: &RegistrySettings) -> anyhow::Result<Registry> {
        // reqwest's rustls without a provider of its own: the process's (ring), as everywhere.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let files = Credentials::default_files(settings.creds_file.as_deref());
        let credentials = Credentials::read(&files, settings.creds_file.as_deref())?;
        Ok(Registry {
            client: build_client(settings)?,
            credentials,
            allowed: settings.allowed.clone(),
        })
    }

    /// A client with no credentials, HTTPS only, the system's roots.
    ///
    /// # Errors
    /// The TLS or HTTP client cannot be built.
    pub fn anonymous() -> anyhow::Result<Registry> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Registry {
            client: build_client(&RegistrySettings::default())?,
            credentials: Credentials::default(),
            allowed: Vec::new(),
        })
    }

    /// Pulls the component `reference` names (a tag is resolved to its manifest's digest
    /// now), verified against the manifest's digests.
    ///
    /// # Errors
    /// [`OciError`], each naming `reference`.
    pub async fn pull(&self, reference: &str) -> Result<Pulled, OciError> {
        let parsed = parse_reference(reference)?;
        self.pull_parsed(reference, &parsed).await
    }

    /// Pulls the component `pin` names, by its digest (the tag is not looked at), verified.
    ///
    /// # Errors
    /// [`OciError`], each naming the pinned reference.
    pub async fn pull_pinned(&self, pin: &OciPin) -> Result<Pulled, OciError> {
        let pinned = pin.pinned()?;
        let shown = pin.shown();
        let mut pulled = self.pull_parsed(&shown, &pinned).await?;
        pulled.pin.reference = pin.reference.clone();
        Ok(pulled)
    }

    async fn pull_parsed(&self, shown: &str, reference: &Reference) -> Result<Pulled, OciError> {
        let registry = reference.resolve_registry();
        let docker_hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
        let allowed = |host: &String| {
            host == registry
                || host == reference.registry()
                || (docker_hub.contains(&host.as_str()) && docker_hub.contains(&registry))
        };
        if !self.allowed.is_empty() && !self.allowed.iter().any(allowed) {
            return Err(OciError::NotAllowed {
                reference: shown.to_owned(),
                registry: reference.registry().to_owned(),
                allowed: self.allowed.join(","),
            });
        }
        if let Some(digest) = reference.digest()
            && !digest.starts_with("sha256:")
        {
            return Err(OciError::UnsupportedDigest {
                reference: shown.to_owned(),
                algorithm: digest.split(':').next().unwrap_or(digest).to_owned(),
            });
        }
        let work = async {
            let auth = self.credentials.for_registry(reference.resolve_registry());
            let (bytes, digest) = self
                .client(shown)?
                .pull_manifest_raw(reference, &auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
                .await
                .map_err(|e| classify(shown, &auth, e))?;
            if bytes.len() > MAX_OCI_MANIFEST_BYTES {
                return Err(OciError::TooLarge {
                    reference: shown.to_owned(),
                    bytes: bytes.len() as u64,
                });
            }
            let actual = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
            let expected = reference.digest().unwrap_or(digest.as_str());
            if actual != expected {
                return Err(OciError::DigestMismatch {
                    reference: shown.to_owned(),
                    expected: expected.to_owned(),
                    actual,
                });
            }
            let layer = wasm_layer(shown, &bytes)?;
            let wasm = self.pull_layer(shown, reference, &auth, &layer).await?;
            if layer.media_type != WASM_LAYER
                && layer.media_type != WASMCLOUD_LAYER
                && !is_component(&wasm)
            {
                return Err(OciError::MediaType {
                    reference: shown.to_owned(),
                    found: format!(
                        "one layer of {} that is not a wasm component",
                        layer.media_type
                    ),
                });
            }
            Ok(Pulled {
                wasm,
                pin: OciPin {
                    reference: shown.to_owned(),
                    digest: actual,
                },
            })
        };
        tokio::time::timeout(OPERATION_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(OciError::Unreachable {
                    reference: shown.to_owned(),
                    detail: format!(
                        "not done within {}",
                        humantime::format_duration(OPERATION_TIMEOUT)
                    ),
                })
            })
    }

    /// Reads `layer`, within its declared size and [`MAX_COMPONENT_BYTES`], and checks its
    /// digest.
    async fn pull_layer(
        &self,
        shown: &str,
        reference: &Reference,
        auth: &RegistryAuth,
        layer: &OciDescriptor,
    ) -> Result<Vec<u8>, OciError> {
        let declared = u64::try_from(layer.size).unwrap_or(0);
        // Without `urls`: oci-client would try them (any http/https URL, unauthenticated)
        // when the registry's blob GET fails; only the registry itself is asked.
        let mut layer = layer.clone();
        layer.urls = None;
        let layer = &layer;
        let mut stream = self
            .client(shown)?
            .pull_blob_stream(reference, layer)
            .await
            .map_err(|e| classify_blob(shown, auth, &layer.digest, e))?;
        // The declared size is the registry's word: the first allocation is bounded.
        let mut wasm =
            Vec::with_capacity(usize::try_from(declared.min(INITIAL_LAYER_CAPACITY)).unwrap_or(0));
        let mut hasher = Sha256::new();
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    hasher.update(&chunk);
                    wasm.extend_from_slice(&chunk);
                    let read = wasm.len() as u64;
                    if read > MAX_COMPONENT_BYTES {
                        return Err(OciError::TooLarge {
                            reference: shown.to_owned(),
                            bytes: read,
                        });
                    }
                    if read > declared {
                        return Err(OciError::LongerThanDeclared {
                            reference: shown.to_owned(),
                            digest: layer.digest.clone(),
                            declared,
                        });
                    }
                }
                // oci-client's own check fails the stream's end when the digest differs:
                // ours, below, names both digests.
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if actual != layer.digest && (failed.is_none() || wasm.len() as u64 == declared) {
            return Err(OciError::DigestMismatch {
                reference: shown.to_owned(),
                expected: layer.digest.clone(),
                actual,
            });
        }
        if let Some(e) = failed {
            return Err(OciError::Unreachable {
                reference: shown.to_owned(),
                detail: format!("reading layer {}: {e}", layer.digest),
            });
        }
        Ok(wasm)
    }

    /// Pushes `wasm` as a CNCF wasm artifact (config [`WASM_CONFIG`], one [`WASM_LAYER`]
    /// layer) to `reference`; returns the pin (the manifest's digest).
    ///
    /// # Errors
    /// [`OciError`], naming `reference`; [`OciError::TooLarge`] above
    /// [`MAX_COMPONENT_BYTES`].
    pub async fn push(&self, reference: &str, wasm: Vec<u8>) -> Result<OciPin, OciError> {
        let parsed = parse_reference(reference)?;
        if wasm.len() as u64 > MAX_COMPONENT_BYTES {
            return Err(OciError::TooLarge {
                reference: reference.to_owned(),
                bytes: wasm.len() as u64,
            });
        }
        let layer = ImageLayer::new(wasm, WASM_LAYER.to_owned(), None);
        let config = Config::new(wasm_config(&layer), WASM_CONFIG.to_owned(), None);
        let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
        manifest.media_type = Some(OCI_MANIFEST.to_owned());
        manifest.artifact_type = Some(WASM_CONFIG.to_owned());
        let body = serde_json::to_vec(&manifest).map_err(|e| OciError::Registry {
            reference: reference.to_owned(),
            detail: e.to_string(),
        })?;
        let digest = format!("sha256:{}", hex(&Sha256::digest(&body)));
        let auth = self.credentials.for_registry(parsed.resolve_registry());
        let client = self.client(reference)?;
        let work = async {
            client
                .auth(&parsed, &auth, RegistryOperation::Push)
                .await
                .map_err(|e| classify(reference, &auth, e))?;
            let layer_digest = layer.sha256_digest();
            client
                .push_blob(&parsed, layer.data.clone(), &layer_digest)
                .await
                .map_err(|e| classify(reference, &auth, e))?;
            client
                .push_blob(&parsed, config.data.clone(), &config.sha256_digest())
                .await
                .map_err(|e| classify(reference, &auth, e))?;
            client
                .push_manifest_raw(&parsed, body, http::HeaderValue::from_static(OCI_MANIFEST))
                .await
                .map_err(|e| classify(reference, &auth, e))?;
            Ok(())
        };
        tokio::time::timeout(OPERATION_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(OciError::Unreachable {
                    reference: reference.to_owned(),
                    detail: "push not done in time".to_owned(),
                })
            })?;
        Ok(OciPin {
            reference: reference.to_owned(),
            digest,
        })
    }
}

/// The registry client of `settings`: `Ok(Err(reason))` when this machine trusts no CA
/// certificate (a minimal system without `ca-certificates`, and no `--ca-file`).
///
/// # Errors
/// A `--ca-file` cannot be read, or the client cannot be built from the certificates.
fn build_client(settings: &RegistrySettings) -> anyhow::Result<Result<Client, String>> {
    let roots = trust_roots(&settings.ca_files)?;
    if roots.is_empty() {
        let why = "this machine trusts no CA certificate (install Debian's ca-certificates, or \
                   pass --ca-file)";
        tracing::warn!("components named by OCI reference cannot be pulled: {why}");
        return Ok(Err(why.to_owned()));
    }
    // Not `Client::new`: it falls back to a default client (no CA, no timeouts, no insecure
    // list) when the configuration fails.
    let client = Client::try_from(client_config(settings, roots)).map_err(|e| {
        let files: Vec<String> = settings
            .ca_files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        if files.is_empty() {
            anyhow::anyhow!("registry client: {}", one_line(&error_chain(&e)))
        } else {
            anyhow::anyhow!(
                "--ca-file {}: not usable as CA certificates: {}",
                files.join(", "),
                one_line(&error_chain(&e))
            )
        }
    })?;
    Ok(Ok(client))
}

/// The certificates a registry's TLS certificate may chain to: the system's roots and every
/// certificate of each of `ca_files`, as outgoing HTTPS trusts them (`http_client::tls`), all
/// handed to reqwest as the only roots. reqwest's own loading of the system's roots fails
/// outright on a machine that has none, and takes one certificate per PEM file.
///
/// # Errors
/// A `--ca-file` cannot be read, holds no certificate, or holds one that is not a usable CA
/// certificate (the error names the file).
fn trust_roots(ca_files: &[PathBuf]) -> anyhow::Result<Vec<oci_client::client::Certificate>> {
    use crate::providers::http_client::tls;
    let der = |cert: &rustls::pki_types::CertificateDer<'_>| oci_client::client::Certificate {
        encoding: oci_client::client::CertificateEncoding::Der,
        data: cert.to_vec(),
    };
    let mut roots: Vec<_> = tls::native_certs().iter().map(der).collect();
    for file in ca_files {
        // Checked as outgoing HTTPS checks them (reqwest would skip what is not a certificate):
        // a bad file stops the command or node instead of failing every pull later.
        roots.extend(tls::ca_file_certs(file)?.iter().map(der));
    }
    Ok(roots)
}

/// The `oci-client` configuration of `settings`, trusting `roots` only.
fn client_config(
    settings: &RegistrySettings,
    roots: Vec<oci_client::client::Certificate>,
) -> ClientConfig {
    ClientConfig {
        protocol: if settings.insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(settings.insecure.clone())
        },
        tls_certs_only: roots,
        // An index names platforms of containers, not components: refused by media type.
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: concat!("lattice/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    }
}

/// The config blob of a CNCF wasm artifact: `architecture: wasm`, `os: wasip2`,
/// `layerDigests` (no `created`: the same bytes always give the same config, hence digest).
fn wasm_config(layer: &ImageLayer) -> Vec<u8> {
    serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer.sha256_digest()],
    })
    .to_string()
    .into_bytes()
}

/// Whether `bytes` start as a wasm component (`\0asm`, version 0x0d, layer 1), not a core
/// module or anything else.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm\x0d\x00\x01\x00")
}

/// The layer of `manifest` (a raw OCI or docker image manifest) holding the component: the one
/// layer of media type [`WASM_LAYER`] or [`WASMCLOUD_LAYER`], else the only layer of a
/// single-layer image (its bytes are checked to be a component once read). Its declared size is
/// checked against [`MAX_COMPONENT_BYTES`] before anything is downloaded.
///
/// # Errors
/// [`OciError::MediaType`] naming the media types found (an index, several layers, none),
/// [`OciError::TooLarge`].
pub fn wasm_layer(reference: &str, manifest: &[u8]) -> Result<OciDescriptor, OciError> {
    let wrong = |found: String| OciError::MediaType {
        reference: reference.to_owned(),
        found,
    };
    let value: serde_json::Value = serde_json::from_slice(manifest)
        .map_err(|e| wrong(format!("a manifest that is not JSON ({e})")))?;
    let media_type = value["mediaType"].as_str().unwrap_or("(none)").to_owned();
    let manifest: OciImageManifest = serde_json::from_value(value)
        .map_err(|_| wrong(format!("manifest {media_type}, not an image manifest")))?;
    let layers: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    let found = || {
        format!(
            "manifest {media_type}, config {}, layers [{}]",
            manifest.config.media_type,
            layers.join(", ")
        )
    };
    let wasm: Vec<&OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == WASM_LAYER || l.media_type == WASMCLOUD_LAYER)
        .collect();
    let layer = match (wasm.as_slice(), manifest.layers.as_slice()) {
        ([one], _) => *one,
        ([], [only]) => only,
        _ => return Err(wrong(found())),
    };
    let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
    if size > MAX_COMPONENT_BYTES {
        return Err(OciError::TooLarge {
            reference: reference.to_owned(),
            bytes: size,
        });
    }
    Ok(layer.clone())
}

/// The [`OciError`] of an `oci-client` error while `reference` was asked for with `auth`.
fn classify(reference: &str, auth: &RegistryAuth, e: OciDistributionError) -> OciError {
    let reference = reference.to_owned();
    let unauthorized = |reference: String| OciError::Unauthorized {
        reference,
        detail: match auth {
            RegistryAuth::Anonymous => {
                "no credentials for this registry (docker config.json `auths`, --registry-creds)"
                    .to_owned()
            }
            _ => "the registry refused the credentials of the docker config.json".to_owned(),
        },
    };
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => unauthorized(reference),
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => unauthorized(reference),
        OciDistributionError::ImageManifestNotFoundError(_)
        | OciDistributionError::ServerError { code: 404, .. } => OciError::NotFound { reference },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}", e.code))
                .collect();
            let any = |names: &[&str]| codes.iter().any(|c| names.iter().any(|n| c == n));
            if any(&["Unauthorized", "Denied"]) {
                unauthorized(reference)
            } else if any(&[
                "ManifestUnknown",
                "NameUnknown",
                "ManifestBlobUnknown",
                // Some registries answer a manifest by digest they lack so; a blob's GET is
                // told apart by `classify_blob`.
                "BlobUnknown",
            ]) {
                OciError::NotFound { reference }
            } else {
                OciError::Registry {
                    reference,
                    detail: envelope
                        .errors
                        .iter()
                        .map(|e| format!("{:?}: {}", e.code, e.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                }
            }
        }
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            OciError::DigestMismatch {
                reference,
                expected,
                actual,
            }
        }
        OciDistributionError::DigestError(DigestError::UnsupportedAlgorithm(algorithm)) => {
            OciError::UnsupportedDigest {
                reference,
                algorithm,
            }
        }
        OciDistributionError::RequestError(e) => OciError::Unreachable {
            reference,
            detail: one_line(&error_chain(&e)),
        },
        OciDistributionError::UnsupportedMediaTypeError(found)
        | OciDistributionError::IncompatibleLayerMediaTypeError(found) => {
            OciError::MediaType { reference, found }
        }
        OciDistributionError::ImageIndexParsingNoPlatformResolverError => OciError::MediaType {
            reference,
            found: "an image index (multi-platform list), not an image manifest".to_owned(),
        },
        other => OciError::Registry {
            reference,
            detail: one_line(&other.to_string()),
        },
    }
}

/// [`classify`] for the GET of blob `digest`: a 404 or `BLOB_UNKNOWN` is a missing blob, not
/// a missing manifest.
fn classify_blob(
    reference: &str,
    auth: &RegistryAuth,
    digest: &str,
    e: OciDistributionError,
) -> OciError {
    let blob_unknown = match &e {
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| format!("{:?}", e.code) == "BlobUnknown"),
        _ => false,
    };
    if blob_unknown {
        OciError::BlobNotFound {
            reference: reference.to_owned(),
            digest: digest.to_owned(),
        }
    } else {
        classify(reference, auth, e)
    }
}

/// `e` with its sources, `: `-joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
