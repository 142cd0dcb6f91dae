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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

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
/// Largest manifest read, in bytes (a wasm artifact's is well under 1 KiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Deadline of connecting to a registry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one read from a registry's connection (a stalled transfer fails after it).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a whole pull or push, whatever its progress.
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
    /// The registry has no such tag, digest or repository.
    #[error("{reference}: unknown tag or digest: the registry has no such manifest")]
    NotFound {
        /// The reference.
        reference: String,
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
}

/// Static credentials by registry host, from docker `config.json` files (format:
/// <https://github.com/docker/cli/blob/master/man/docker-config-json.5.md>, the `auths` object:
/// `auth` = base64 of `user:password`, or `username` and `password`; `identitytoken` as a bearer
/// token).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Registry host (`ghcr.io`, `127.0.0.1:5000`) → its auth; the first file naming a host wins.
    by_host: BTreeMap<String, RegistryAuth>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

impl Credentials {
    /// The files read, in order: `creds_file`, `$DOCKER_CONFIG/config.json`,
    /// `~/.docker/config.json` (a missing one is skipped).
    pub fn default_files(creds_file: Option<&Path>) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = creds_file.map(Path::to_path_buf).into_iter().collect();
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            files.push(PathBuf::from(dir).join("config.json"));
        } else if let Some(home) = std::env::var_os("HOME") {
            files.push(PathBuf::from(home).join(".docker/config.json"));
        }
        files
    }

    /// Reads `files`; one that does not exist or is no docker config is skipped (the latter
    /// with a warning), unless it is `required`.
    ///
    /// # Errors
    /// The `required` file cannot be read or is not a docker config, or another file exists
    /// but cannot be read (the message names it).
    pub fn read(files: &[PathBuf], required: Option<&Path>) -> anyhow::Result<Credentials> {
        let mut credentials = Credentials::default();
        for file in files {
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && required != Some(file.as_path()) =>
                {
                    continue;
                }
                Err(e) => anyhow::bail!("registry credentials {}: {e}", file.display()),
            };
            if let Err(e) = credentials.add(&text) {
                // Only the file asked for stops a node or command; a docker config of
                // another shape (a tool's own fields) is skipped, with a warning.
                if required == Some(file.as_path()) {
                    anyhow::bail!("registry credentials {}: {e}", file.display());
                }
                tracing::warn!(file = %file.display(), error = e, "docker config not read; its registry credentials are not used");
            }
        }
        Ok(credentials)
    }

    /// Adds the `auths` of one docker `config.json` text, keeping hosts already known.
    ///
    /// # Errors
    /// Not JSON of that shape, or an `auth` that is not base64 of `user:password`.
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        let config: DockerConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for (key, entry) in config.auths {
            let auth = if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
                RegistryAuth::Bearer(token)
            } else if let Some(encoded) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|e| format!("auths.{key}.auth: not base64: {e}"))?;
                let decoded = String::from_utf8(decoded)
                    .map_err(|_| format!("auths.{key}.auth: not UTF-8"))?;
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key}.auth: not user:password"))?;
                RegistryAuth::Basic(user.to_owned(), password.to_owned())
            } else if let (Some(user), Some(password)) = (entry.username, entry.password) {
                RegistryAuth::Basic(user, password)
            } else {
                continue;
            };
            self.by_host.entry(host_of(&key)).or_insert(auth);
        }
        Ok(())
    }

    /// The auth for `registry` (a reference's registry); anonymous when none is known.
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        let docker_hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
        self.by_host
            .get(registry)
            .or_else(|| {
                docker_hub
                    .contains(&registry)
                    .then(|| docker_hub.iter().find_map(|h| self.by_host.get(*h)))
                    .flatten()
            })
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }
}

/// The host of an `auths` key: `https://index.docker.io/v1/` → `index.docker.io`.
fn host_of(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest).to_owned()
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
    client: Client,
    credentials: Credentials,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A client with `settings`, its credentials read now.
    ///
    /// # Errors
    /// `--registry-creds` or a docker config cannot be read, or a `--ca-file` is not readable.
    pub fn new(settings: &RegistrySettings) -> anyhow::Result<Registry> {
        // reqwest's rustls without a provider of its own: the process's (ring), as everywhere.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let files = Credentials::default_files(settings.creds_file.as_deref());
        let credentials = Credentials::read(&files, settings.creds_file.as_deref())?;
        let mut extra_root_certificates = Vec::new();
        for file in &settings.ca_files {
            let data = std::fs::read(file)
                .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", file.display()))?;
            extra_root_certificates.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data,
            });
        }
        let config = client_config(settings, extra_root_certificates);
        Ok(Registry {
            client: Client::new(config),
            credentials,
        })
    }

    /// A client with no credentials, HTTPS only, the system's roots.
    pub fn anonymous() -> Registry {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registry {
            client: Client::new(client_config(&RegistrySettings::default(), Vec::new())),
            credentials: Credentials::default(),
        }
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
        let shown = format!("{}@{}", pin.reference, pin.digest);
        let mut pulled = self.pull_parsed(&shown, &pinned).await?;
        pulled.pin.reference = pin.reference.clone();
        Ok(pulled)
    }

    async fn pull_parsed(&self, shown: &str, reference: &Reference) -> Result<Pulled, OciError> {
        let work = async {
            let auth = self.credentials.for_registry(reference.resolve_registry());
            let (bytes, digest) = self
                .client
                .pull_manifest_raw(reference, &auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
                .await
                .map_err(|e| classify(shown, &auth, e))?;
            if bytes.len() > MAX_MANIFEST_BYTES {
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
        let mut stream = self
            .client
            .pull_blob_stream(reference, layer)
            .await
            .map_err(|e| classify(shown, auth, e))?;
        let mut wasm = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
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
                        break;
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
        let work = async {
            self.client
                .auth(&parsed, &auth, RegistryOperation::Push)
                .await
                .map_err(|e| classify(reference, &auth, e))?;
            let layer_digest = layer.sha256_digest();
            self.client
                .push_blob(&parsed, layer.data.clone(), &layer_digest)
                .await
                .map_err(|e| classify(reference, &auth, e))?;
            self.client
                .push_blob(&parsed, config.data.clone(), &config.sha256_digest())
                .await
                .map_err(|e| classify(reference, &auth, e))?;
            self.client
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

/// The `oci-client` configuration of `settings`, trusting `extra_root_certificates` too.
fn client_config(
    settings: &RegistrySettings,
    extra_root_certificates: Vec<oci_client::client::Certificate>,
) -> ClientConfig {
    ClientConfig {
        protocol: if settings.insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(settings.insecure.clone())
        },
        extra_root_certificates,
        // An index names platforms of containers, not components: refused by media type.
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: concat!("lattice/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    }
}

/// The config blob of a CNCF wasm artifact: `created`, `architecture: wasm`, `os: wasip2`,
/// `layerDigests`.
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
            } else if any(&["ManifestUnknown", "NameUnknown", "BlobUnknown"]) {
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
        OciDistributionError::DigestError(e) => OciError::DigestMismatch {
            reference,
            expected: "the digest asked for".to_owned(),
            actual: e.to_string(),
        },
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
mod tests {
    use super::*;

    fn manifest(config: &str, layers: &[(&str, u64)]) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(media_type, size)| {
                serde_json::json!({"mediaType": media_type, "size": size,
                    "digest": format!("sha256:{}", "a".repeat(64))})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config, "size": 2, "digest": format!("sha256:{}", "b".repeat(64))},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn the_wasm_layouts_in_use_are_accepted() {
        for (config, layer) in [
            (WASM_CONFIG, WASM_LAYER),
            (
                "application/vnd.wasmcloud.actor.archive.config",
                WASMCLOUD_LAYER,
            ),
            (
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar",
            ),
        ] {
            let found = wasm_layer("r", &manifest(config, &[(layer, 10)])).unwrap();
            assert_eq!(found.media_type, layer);
        }
        // A wasm layer beside other layers (wash's annotations, a signature) is the one.
        let found = wasm_layer(
            "r",
            &manifest(WASM_CONFIG, &[("text/plain", 1), (WASM_LAYER, 10)]),
        )
        .unwrap();
        assert_eq!(found.media_type, WASM_LAYER);
    }

    #[test]
    fn another_layout_is_refused_naming_its_media_types() {
        let e = wasm_layer(
            "reg/app:1",
            &manifest(
                "application/vnd.oci.image.config.v1+json",
                &[("a/b", 1), ("c/d", 1)],
            ),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, OciError::MediaType { .. }), "{text}");
        assert!(text.starts_with("reg/app:1: wrong media type"), "{text}");
        assert!(text.contains("layers [a/b, c/d]"), "{text}");
        let index = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []});
        let e = wasm_layer("reg/app:1", &serde_json::to_vec(&index).unwrap()).unwrap_err();
        assert!(
            e.to_string()
                .contains("application/vnd.oci.image.index.v1+json"),
            "{e}"
        );
    }

    #[test]
    fn a_layer_declared_too_large_is_refused_before_download() {
        let e = wasm_layer(
            "reg/big:1",
            &manifest(WASM_CONFIG, &[(WASM_LAYER, MAX_COMPONENT_BYTES + 1)]),
        )
        .unwrap_err();
        assert!(matches!(e, OciError::TooLarge { .. }), "{e}");
        assert!(e.to_string().starts_with("reg/big:1: too large"), "{e}");
    }

    #[test]
    fn docker_config_auths_are_read_by_host() {
        let mut creds = Credentials::default();
        let auth = base64::engine::general_purpose::STANDARD.encode("ann:secret");
        creds
            .add(&format!(
                r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{auth}"}},
                   "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}}}},
                   "credsStore": "desktop"}}"#
            ))
            .unwrap();
        assert_eq!(
            creds.for_registry("127.0.0.1:5000"),
            RegistryAuth::Basic("ann".into(), "secret".into())
        );
        assert_eq!(
            creds.for_registry("docker.io"),
            RegistryAuth::Basic("bob".into(), "pw".into())
        );
        assert_eq!(creds.for_registry("ghcr.io"), RegistryAuth::Anonymous);
        assert!(creds.add(r#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
    }

    #[test]
    fn references_parse_with_or_without_oci_scheme() {
        let r = parse_reference("oci://127.0.0.1:5000/hello:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "hello");
        assert_eq!(r.tag(), Some("v1"));
        let pin = OciPin {
            reference: "ghcr.io/wasmcloud/components/x:0.1.0".into(),
            digest: format!("sha256:{}", "c".repeat(64)),
        };
        let pinned = pin.pinned().unwrap();
        assert_eq!(pinned.digest(), Some(pin.digest.as_str()));
        assert_eq!(pinned.repository(), "wasmcloud/components/x");
        assert!(matches!(
            parse_reference("ghcr.io/x:a:b"),
            Err(OciError::BadReference { .. })
        ));
    }

    #[test]
    fn only_components_count_as_components() {
        assert!(is_component(b"\0asm\x0d\x00\x01\x00rest"));
        assert!(!is_component(b"\0asm\x01\x00\x00\x00"));
        assert!(!is_component(b"tar"));
    }
}
