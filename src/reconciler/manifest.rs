//! wadm application manifests (`apiVersion: core.oam.dev/v1beta1`, `kind: Application`, see
//! <https://wasmcloud.com/docs/ecosystem/wadm/model>), parsed and validated into a [`Manifest`].
//!
//! Read as wadm reads them: `type: component` entries with an `image`, a `spreadscaler` or
//! `daemonscaler` trait, `config` (wasi:config) and `link` traits to capabilities; `type:
//! capability` entries for the providers a node has built in. The http-server's `link` traits
//! to `wasi:http/incoming-handler` become routes (`path`, `host`, `address`) on the built-in
//! ingress; a component's links to keyvalue-nats, keyvalue-sled and http-client are its grants
//! (`links`). What we do not support yet is a warning naming the field; errors name the field
//! by its YAML path.

mod links;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::name::Name;
use crate::providers::http_client::AllowedHosts;
use crate::providers::keyvalue::KeyValueLink;
use crate::reconciler::oci::OciPin;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// The API version of wadm manifests.
pub const API_VERSION: &str = "core.oam.dev/v1beta1";
/// The one `kind` of wadm manifests.
pub const KIND: &str = "Application";

/// Most replicas a scaler may ask for: a `spreadscaler`'s `instances` in all, a
/// `daemonscaler`'s per node. Far above what a lattice runs, low enough that the work any
/// manifest can cause (placement, status, the pools of a node) stays bounded.
pub const MAX_INSTANCES: u32 = 100_000;
/// Largest `weight` of a `spread` entry (wadm's default is 100).
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Most `spread` entries of one scaler: placement looks at every node for each of them.
pub const MAX_SPREAD_ENTRIES: usize = 100;

/// A manifest field is missing, malformed or refers to something that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// YAML path of the field, e.g. `spec.components[0].properties.image`; `.` for the document.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A validated application manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// `metadata.name`: the app's name, unique in the lattice.
    pub name: String,
    /// `metadata.annotations.version`, if given.
    pub version: Option<String>,
    /// The `type: component` entries.
    pub components: Vec<ComponentSpec>,
    /// Routes from http-server links to components.
    pub http_links: Vec<HttpLink>,
    /// What was accepted but is not supported (yet) or ignored, each naming its field.
    pub warnings: Vec<String>,
}

/// Where a component's wasm comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// A file on the machine that deploys the manifest, resolved against the manifest's
    /// directory (`image: ./x.wasm` or `file://…`).
    File(PathBuf),
    /// A component in an OCI registry (`REGISTRY/REPO:TAG`, `REGISTRY/REPO@sha256:…`,
    /// `oci://…`), as written without `oci://`: resolved to a digest by whoever deploys
    /// ([`crate::reconciler::oci`]).
    Oci(String),
    /// Bytes in the lattice's artifact store, by the sha256 of the wasm (lowercase hex): what a
    /// stored manifest names once its files were uploaded.
    Artifact {
        /// sha256 of the wasm, lowercase hex.
        digest: String,
    },
}

impl std::fmt::Display for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Image::File(path) => write!(f, "{}", path.display()),
            Image::Oci(reference) => f.write_str(reference),
            Image::Artifact { digest } => write!(f, "artifact sha256:{digest}"),
        }
    }
}

/// A `type: component` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentSpec {
    /// Component name, unique in the manifest.
    pub name: String,
    /// Its wasm.
    pub image: Image,
    /// YAML path of `image`, for errors about the file.
    pub image_field: String,
    /// The registry manifest its artifact came from, when `image` is an OCI reference: the
    /// node pulls it by this digest when the artifact store lacks the bytes.
    pub oci_pin: Option<OciPin>,
    /// How many replicas, where.
    pub scaler: Scaler,
    /// Its `wasi:config`: the properties of its `config` entries, merged in order.
    pub config: BTreeMap<String, String>,
    /// Its `wasi:keyvalue` links (bucket and granted interfaces), by link name (what
    /// `store.open` takes).
    pub keyvalue: BTreeMap<String, KeyValueLink>,
    /// Hosts its `wasi:http/outgoing-handler` may reach (its http-client links); empty: none.
    pub allowed_hosts: AllowedHosts,
}

/// A scaler trait (wadm semantics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scaler {
    /// `spreadscaler`: `instances` replicas in all, split over the `spread` entries by weight.
    Spread {
        /// Total replicas, at most [`MAX_INSTANCES`].
        instances: u32,
        /// Where they go; empty means anywhere.
        spread: Vec<Spread>,
    },
    /// `daemonscaler`: `instances` replicas on every node matching any `spread` entry.
    Daemon {
        /// Replicas per matching node, at most [`MAX_INSTANCES`].
        instances: u32,
        /// Which nodes; empty means every node.
        spread: Vec<Spread>,
    },
}

/// One `spread` entry of a scaler.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    /// Name of the entry.
    pub name: String,
    /// Node labels that must all match.
    #[serde(default)]
    pub requirements: BTreeMap<String, String>,
    /// Relative share of the instances (default 100, as in wadm; see `plan::spread_counts`), at
    /// most [`MAX_WEIGHT`].
    pub weight: Option<u32>,
}

impl Manifest {
    /// Replaces every component's file image by the artifact `digests` names for it (component
    /// name → sha256 hex): the form in which a manifest is stored and run by the lattice.
    ///
    /// # Errors
    /// A component has no digest (the error names its `image` field), or a digest is not 64
    /// lowercase hex characters.
    pub fn bind_artifacts(&mut self, digests: &BTreeMap<String, String>) -> Result<(), FieldError> {
        for spec in &mut self.components {
            let digest = digests.get(&spec.name).ok_or_else(|| {
                FieldError::new(&spec.image_field, "no artifact stored for this component")
            })?;
            if digest.len() != 64
                || !digest
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(FieldError::new(
                    &spec.image_field,
                    format!("{digest:?} is not a sha256 digest (64 lowercase hex characters)"),
                ));
            }
            spec.image = Image::Artifact {
                digest: digest.clone(),
            };
        }
        Ok(())
    }

    /// Records, for each component `pins` names, the registry manifest its artifact came from
    /// ([`ComponentSpec::registry`]).
    pub fn bind_registry_pins(&mut self, pins: &BTreeMap<String, OciPin>) {
        for spec in &mut self.components {
            spec.oci_pin = pins.get(&spec.name).cloned();
        }
    }
}

/// A link from the http-server capability to a component's `wasi:http/incoming-handler`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLink {
    /// The component that answers.
    pub target: String,
    /// Own listener address (wasmCloud's default mode); `None` means the shared ingress.
    pub address: Option<SocketAddr>,
    /// Host to match, if any.
    pub host: Option<String>,
    /// Path prefix to match, if any.
    pub path: Option<String>,
    /// YAML path of the link's `properties`, for errors about it.
    pub field: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    api_version: String,
    kind: String,
    metadata: RawMetadata,
    spec: RawSpec,
}

#[derive(Deserialize)]
struct RawMetadata {
    name: String,
    #[serde(default)]
    annotations: BTreeMap<String, Value>,
    #[serde(default)]
    labels: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RawSpec {
    components: Vec<RawComponent>,
    #[serde(default)]
    policies: Vec<Value>,
}

#[derive(Deserialize)]
struct RawComponent {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    properties: RawProperties,
    #[serde(default)]
    traits: Vec<RawTrait>,
}

#[derive(Deserialize, Default)]
struct RawProperties {
    image: Option<String>,
    id: Option<String>,
    config: Option<Value>,
    secrets: Option<Value>,
    application: Option<Value>,
}

#[derive(Deserialize)]
struct RawTrait {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    properties: Value,
}

#[derive(Deserialize)]
struct ScalerProps {
    // Read wider than the model's u32 so a value beyond the bound gets the bound's error.
    #[serde(alias = "replicas")]
    instances: u64,
    #[serde(default)]
    spread: Vec<Spread>,
}

impl ScalerProps {
    /// `instances` and the `spread` entries within [`MAX_INSTANCES`], [`MAX_WEIGHT`] and
    /// [`MAX_SPREAD_ENTRIES`]; `at` is the YAML path of the properties.
    fn checked(self, at: &str) -> Result<(u32, Vec<Spread>), FieldError> {
        let instances = u32::try_from(self.instances)
            .ok()
            .filter(|n| *n <= MAX_INSTANCES)
            .ok_or_else(|| {
                FieldError::new(
                    format!("{at}.instances"),
                    format!(
                        "{} replicas asked for; at most {MAX_INSTANCES} are allowed",
                        self.instances
                    ),
                )
            })?;
        if self.spread.len() > MAX_SPREAD_ENTRIES {
            return Err(FieldError::new(
                format!("{at}.spread"),
                format!(
                    "{} entries; at most {MAX_SPREAD_ENTRIES} are allowed",
                    self.spread.len()
                ),
            ));
        }
        for (k, entry) in self.spread.iter().enumerate() {
            if let Some(weight) = entry.weight
                && weight > MAX_WEIGHT
            {
                return Err(FieldError::new(
                    format!("{at}.spread[{k}].weight"),
                    format!("{weight} is above the largest weight allowed, {MAX_WEIGHT}"),
                ));
            }
        }
        Ok((instances, self.spread))
    }
}

/// Deserializes `T` from `value`, errors and ignored fields named under the YAML path `prefix`.
fn from_value<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    warnings: &mut Vec<String>,
) -> Result<T, FieldError> {
    let mut ignored = Vec::new();
    let result = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        value,
        &mut |path: serde_ignored::Path<'_>| ignored.push(path.to_string()),
    ));
    match result {
        Ok(v) => {
            warnings.extend(
                ignored
                    .into_iter()
                    .map(|p| format!("{}: unknown field, ignored", join(prefix, &p))),
            );
            Ok(v)
        }
        Err(e) => Err(FieldError::new(
            join(prefix, &e.path().to_string()),
            e.into_inner().to_string(),
        )),
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty() || path == ".") {
        (true, true) => ".".to_owned(),
        (true, false) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// Parses and validates a manifest; relative image paths resolve against `base_dir`.
///
/// # Errors
/// [`FieldError`] naming the first bad field: YAML syntax (`.`, with line and column), a missing
/// or mistyped field, a wrong `apiVersion` or `kind`, duplicate component names, an image that
/// is neither a path nor an OCI reference, a capability that is not built in, a link whose
/// target is not a component of the manifest, a bad `address`, a scaler beyond
/// [`MAX_INSTANCES`], [`MAX_WEIGHT`] or [`MAX_SPREAD_ENTRIES`].
pub fn parse(text: &str, base_dir: &Path) -> Result<Manifest, FieldError> {
    let value: Value = serde_yaml::from_str(text)
        .map_err(|e| FieldError::new(".", format!("invalid YAML: {e}")))?;
    let mut warnings = Vec::new();
    let raw: RawManifest = from_value(value, "", &mut warnings)?;
    if raw.api_version != API_VERSION {
        return Err(FieldError::new(
            "apiVersion",
            format!("expected {API_VERSION:?}, found {:?}", raw.api_version),
        ));
    }
    if raw.kind != KIND {
        return Err(FieldError::new(
            "kind",
            format!("expected {KIND:?}, found {:?}", raw.kind),
        ));
    }
    check_name(&raw.metadata.name).map_err(|reason| FieldError::new("metadata.name", reason))?;
    let version = raw.metadata.annotations.get("version").map(|v| match v {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    });
    let _ = raw.metadata.labels;
    if !raw.spec.policies.is_empty() {
        warnings.push("spec.policies: policies are not supported yet; ignored".to_owned());
    }

    let mut names = BTreeSet::new();
    for (i, c) in raw.spec.components.iter().enumerate() {
        check_name(&c.name)
            .map_err(|r| FieldError::new(format!("spec.components[{i}].name"), r))?;
        if !names.insert(c.name.as_str()) {
            return Err(FieldError::new(
                format!("spec.components[{i}].name"),
                format!("duplicate component name {:?}", c.name),
            ));
        }
    }
    let component_names: BTreeSet<&str> = raw
        .spec
        .components
        .iter()
        .filter(|c| c.kind == "component")
        .map(|c| c.name.as_str())
        .collect();
    let mut capabilities = BTreeMap::new();
    for (i, c) in raw.spec.components.iter().enumerate() {
        if c.kind != "capability" {
            continue;
        }
        let field = format!("spec.components[{i}].properties.image");
        let image = c
            .properties
            .image
            .as_deref()
            .ok_or_else(|| FieldError::new(&field, "missing"))?;
        let kind = links::capability(image).ok_or_else(|| {
            FieldError::new(
                &field,
                format!(
                    "capability {image:?} is not a provider lattice has built in (built in: {})",
                    links::BUILT_IN
                ),
            )
        })?;
        capabilities.insert(c.name.as_str(), kind);
    }
    let named = links::NamedConfigs::collect(&raw.spec.components, &mut warnings);

    let mut components = Vec::new();
    let mut http_links = Vec::new();
    for (i, c) in raw.spec.components.iter().enumerate() {
        let at = format!("spec.components[{i}]");
        for (field, present) in [
            ("secrets", c.properties.secrets.is_some()),
            ("application", c.properties.application.is_some()),
        ] {
            if present {
                warnings.push(format!(
                    "{at}.properties.{field}: not supported yet; ignored"
                ));
            }
        }
        match c.kind.as_str() {
            "component" => {
                let context = links::LinkContext {
                    app: &raw.metadata.name,
                    component: &c.name,
                    capabilities: &capabilities,
                    components: &component_names,
                    named: &named,
                };
                components.push(component(c, &at, base_dir, &context, &mut warnings)?);
            }
            "capability" => {
                let kind = capabilities.get(c.name.as_str()).copied();
                if c.properties.config.is_some() {
                    warnings.push(format!(
                        "{at}.properties.config: provider config is not used by built-in providers; ignored"
                    ));
                }
                for (j, t) in c.traits.iter().enumerate() {
                    let tat = format!("{at}.traits[{j}]");
                    match t.kind.as_str() {
                        "link" if kind == Some(links::Capability::HttpServer) => {
                            http_links.push(links::http_link(
                                t.properties.clone(),
                                &tat,
                                &component_names,
                                &named,
                                &mut warnings,
                            )?)
                        }
                        "link" => {
                            return Err(FieldError::new(
                                tat,
                                "only the http-server capability links to components; a component links to this capability",
                            ));
                        }
                        "spreadscaler" | "daemonscaler" => warnings.push(format!(
                            "{tat}: built-in providers run in every node; the scaler is ignored"
                        )),
                        other => warnings.push(format!(
                            "{tat}.type: trait {other:?} is not supported; ignored"
                        )),
                    }
                }
            }
            other => {
                return Err(FieldError::new(
                    format!("{at}.type"),
                    format!("expected \"component\" or \"capability\", found {other:?}"),
                ));
            }
        }
    }
    for c in &components {
        if !http_links.iter().any(|l| l.target == c.name) {
            warnings.push(format!(
                "component {:?}: no http-server link targets it, so it gets no requests",
                c.name
            ));
        }
    }
    Ok(Manifest {
        name: raw.metadata.name,
        version,
        components,
        http_links,
        warnings,
    })
}

fn component(
    c: &RawComponent,
    at: &str,
    base_dir: &Path,
    context: &links::LinkContext<'_>,
    warnings: &mut Vec<String>,
) -> Result<ComponentSpec, FieldError> {
    let image_field = format!("{at}.properties.image");
    let image = c
        .properties
        .image
        .as_deref()
        .ok_or_else(|| FieldError::new(&image_field, "missing"))?;
    let image = resolve_image(image, base_dir).map_err(|r| FieldError::new(&image_field, r))?;
    let config =
        links::component_config(c.properties.config.as_ref(), at, context.named, warnings)?;
    check_lattice_keys(&config, at, context, warnings)?;
    if c.properties.id.is_some() {
        warnings.push(format!(
            "{at}.properties.id: ignored (components are named by `name`)"
        ));
    }
    let mut scaler = None;
    let mut grants = links::ComponentLinks::default();
    for (j, t) in c.traits.iter().enumerate() {
        let tat = format!("{at}.traits[{j}]");
        match t.kind.as_str() {
            kind @ ("spreadscaler" | "daemonscaler") => {
                if scaler.is_some() {
                    return Err(FieldError::new(
                        format!("{tat}.type"),
                        "a component takes one scaler trait",
                    ));
                }
                let at = format!("{tat}.properties");
                let props: ScalerProps = from_value(t.properties.clone(), &at, warnings)?;
                let (instances, spread) = props.checked(&at)?;
                scaler = Some(if kind == "spreadscaler" {
                    Scaler::Spread { instances, spread }
                } else {
                    Scaler::Daemon { instances, spread }
                });
            }
            "link" => {
                links::component_link(t.properties.clone(), &tat, context, &mut grants, warnings)?
            }
            other => warnings.push(format!(
                "{tat}.type: trait {other:?} is not supported; ignored"
            )),
        }
    }
    let scaler = scaler.unwrap_or_else(|| {
        warnings.push(format!(
            "{at}.traits: no spreadscaler or daemonscaler; running 1 replica"
        ));
        Scaler::Spread {
            instances: 1,
            spread: Vec::new(),
        }
    });
    Ok(ComponentSpec {
        name: c.name.clone(),
        image,
        image_field,
        oci_pin: None,
        scaler,
        config,
        keyvalue: grants.keyvalue,
        allowed_hosts: grants.allowed_hosts,
    })
}

/// Checks the config keys lattice reads itself (`lattice.*`): the instance reuse keys'
/// values ([`crate::host::Reuse::from_config`]), and a warning for a `lattice.` key lattice does
/// not know (a typo would otherwise pass silently as plain `wasi:config`).
///
/// # Errors
/// A reuse key with a bad value: the field is the component's `properties.config`, the reason
/// names the app, the component, the key, its value and why.
fn check_lattice_keys(
    config: &BTreeMap<String, String>,
    at: &str,
    context: &links::LinkContext<'_>,
    warnings: &mut Vec<String>,
) -> Result<(), FieldError> {
    let field = format!("{at}.properties.config");
    crate::host::Reuse::from_config(config).map_err(|e| {
        FieldError::new(
            &field,
            format!("app {}, component {}: {e}", context.app, context.component),
        )
    })?;
    let known: Vec<&str> = crate::host::REUSE_KEYS
        .into_iter()
        .chain([crate::lattice::rpc::RETRY_SAFE_KEY])
        .collect();
    for key in config.keys() {
        if key.starts_with("lattice.") && !known.contains(&key.as_str()) {
            warnings.push(format!(
                "{field}: {key} is not a key lattice reads (it knows {}); passed to the \
                 component as wasi:config only",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

/// A path or `file://` URL (relative to the manifest's directory), else an OCI reference:
/// what ends in `.wasm` or starts with `/` or `.` is a path. Without `oci://`, a reference
/// must name its registry host (a first segment with `.` or `:`, or `localhost`), so a
/// mistyped path (`build/hello`) is not pulled from Docker Hub.
fn resolve_image(image: &str, base_dir: &Path) -> Result<Image, String> {
    let path = if let Some(rest) = image.strip_prefix("file://") {
        rest
    } else if image.starts_with('/') || image.starts_with('.') || image.ends_with(".wasm") {
        image
    } else {
        let explicit = image.strip_prefix("oci://");
        let reference = explicit.unwrap_or(image);
        if explicit.is_none() && !names_registry_host(reference) {
            return Err(format!(
                "{image:?} is neither a path to a .wasm file (or file://) nor an OCI reference: \
                 a reference names its registry host (`docker.io/library/hello:1`, \
                 `localhost:5000/hello:1`) or starts with oci://"
            ));
        }
        crate::reconciler::oci::parse_reference(reference).map_err(|e| match e {
            crate::reconciler::oci::OciError::BadReference { reason, .. } => format!(
                "{image:?} is neither a path to a .wasm file (or file://) nor an OCI reference: {reason}"
            ),
            other => other.to_string(),
        })?;
        return Ok(Image::Oci(reference.to_owned()));
    };
    if path.is_empty() {
        return Err("empty path".to_owned());
    }
    Ok(Image::File(base_dir.join(path)))
}

/// Whether `reference`'s first segment is a registry host: it has a `.` or a `:` (port), or is
/// `localhost`.
fn names_registry_host(reference: &str) -> bool {
    match reference.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

/// App and component names are [`Name`]s: they become NATS subject tokens.
fn check_name(name: &str) -> Result<(), String> {
    Name::check(name).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
