//! A deploy request checked before the store is asked: size, manifest, version name.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{DeployError, DeployRequest, MAX_MANIFEST_BYTES, MAX_VERSION_BYTES};
use crate::host::hex;
use crate::reconciler::manifest::{self, FieldError, Manifest};

/// The version name of a manifest: `explicit`, else its `version` annotation, else
/// `sha-<first 12 hex of the text's sha256>` (deploying the same text twice is the same version).
pub fn version_of(explicit: Option<&str>, manifest: &Manifest, text: &str) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| manifest.version.clone())
        .unwrap_or_else(|| format!("sha-{}", hex(&Sha256::digest(text.as_bytes())[..6])))
}

/// A request checked as far as it can be without the store.
pub(super) struct Prepared {
    pub(super) manifest: Manifest,
    pub(super) version: String,
}

/// Checks what can be checked of `request` without the store: its size, its manifest (parsed,
/// artifacts bound) and its version name.
pub(super) fn prepare(request: &DeployRequest) -> Result<Prepared, DeployError> {
    if request.manifest.len() > MAX_MANIFEST_BYTES {
        return Err(FieldError::new(
            "spec",
            format!(
                "the manifest is {} bytes, more than the {MAX_MANIFEST_BYTES} bytes allowed",
                request.manifest.len()
            ),
        )
        .into());
    }
    let mut manifest = manifest::parse(&request.manifest, Path::new("/"))?;
    manifest.bind_artifacts(&request.images)?;
    let version = version_of(request.version.as_deref(), &manifest, &request.manifest);
    if version.is_empty() || version.chars().any(char::is_control) {
        return Err(FieldError::new(
            "metadata.annotations.version",
            format!("{version:?} is not a usable version name"),
        )
        .into());
    }
    if version.len() > MAX_VERSION_BYTES {
        return Err(FieldError::new(
            "metadata.annotations.version",
            format!("a version name has at most {MAX_VERSION_BYTES} bytes"),
        )
        .into());
    }
    Ok(Prepared { manifest, version })
}

/// `version` with a suffix naming the content of `request` (`+sha-<12 hex>`): a config-dir
/// file edited in place, or `lattice app deploy --refresh` whose tags moved, keeps its version
/// name with this suffix.
pub fn suffixed(version: &str, request: &DeployRequest) -> String {
    let mut hasher = Sha256::new();
    hasher.update(request.manifest.as_bytes());
    for (component, digest) in &request.images {
        hasher.update(format!("\n{component}={digest}").as_bytes());
    }
    format!("{version}+sha-{}", hex(&hasher.finalize()[..6]))
}

pub(super) fn version_exists(app: &str, version: String) -> DeployError {
    FieldError::new(
        "metadata.annotations.version",
        DeployError::VersionExists {
            app: app.to_owned(),
            version,
        }
        .to_string(),
    )
    .into()
}
