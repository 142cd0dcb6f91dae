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
    check_pins(&manifest, request)?;
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

/// Each OCI pin of `request` belongs to a component whose `image` is that reference, with a
/// digest of the form `sha256:<64 lowercase hex>`.
fn check_pins(manifest: &Manifest, request: &DeployRequest) -> Result<(), FieldError> {
    for (component, pin) in &request.oci {
        let Some(spec) = manifest.components.iter().find(|c| c.name == *component) else {
            return Err(FieldError::new(
                "spec.components",
                format!("an OCI pin names component {component:?}, which the manifest has not"),
            ));
        };
        let hex = pin.digest.strip_prefix("sha256:").unwrap_or_default();
        let digest_ok =
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if spec.image != manifest::Image::Oci(pin.reference.clone()) || !digest_ok {
            return Err(FieldError::new(
                &spec.image_field,
                format!("the OCI pin {pin} does not match this image (or is no sha256 digest)"),
            ));
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::reconciler::oci::OciPin;
    use crate::reconciler::store::Source;

    const TEXT: &str = "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata:\n  name: app\nspec:\n  components:\n    - name: web\n      type: component\n      properties:\n        image: reg.example/web:1\n";

    fn request(reference: &str, digest: &str) -> DeployRequest {
        DeployRequest {
            manifest: TEXT.to_owned(),
            version: None,
            images: BTreeMap::from([("web".to_owned(), "a".repeat(64))]),
            oci: BTreeMap::from([(
                "web".to_owned(),
                OciPin {
                    reference: reference.to_owned(),
                    digest: digest.to_owned(),
                },
            )]),
            source: Source::Cli,
        }
    }

    #[test]
    fn an_oci_pin_must_match_its_components_image() {
        let good = format!("sha256:{}", "b".repeat(64));
        let prepared = prepare(&request("reg.example/web:1", &good)).unwrap();
        assert!(matches!(
            prepared.manifest.components[0].image,
            manifest::Image::Artifact { .. }
        ));
        for (reference, digest) in [
            ("reg.example/other:1", good.as_str()),
            ("reg.example/web:1", "sha256:xyz"),
        ] {
            let Err(DeployError::Field(e)) = prepare(&request(reference, digest)) else {
                panic!("{reference} {digest} accepted");
            };
            assert_eq!(e.field, "spec.components[0].properties.image", "{e}");
        }
    }
}
