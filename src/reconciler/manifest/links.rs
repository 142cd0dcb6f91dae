//! Links of a wadm manifest and the config they carry: the http-server capability's links to
//! components (routes), and a component's links to the keyvalue and http-client capabilities
//! (its grants, DESIGN.md §5). Both wadm link forms are read: `target: {name, config}` with
//! `source: {config}`, and the older `target: NAME` with `target_config` / `source_config`.
//! A named config without `properties` refers to one given with properties elsewhere in the
//! manifest (wadm keeps named configs in a lattice config store, which we do not host).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::Deserialize;
use serde_yaml::Value;

use super::{FieldError, HttpLink, RawComponent, from_value};
use crate::name::Name;
use crate::providers::http_client::AllowedHosts;
use crate::providers::keyvalue::{BucketSpec, KeyValueLink, KvInterfaces, check_bucket_name};

/// The capabilities a node has built in, by what a manifest's `image` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Capability {
    /// wasmCloud's http-server: the node's ingress.
    HttpServer,
    /// wasmCloud's keyvalue-nats: JetStream KV buckets of the lattice.
    KeyValueNats,
    /// Node-local sled buckets.
    KeyValueSled,
    /// wasmCloud's http-client: outgoing HTTP to allowed hosts.
    HttpClient,
}

/// Which built-in capability `image` names: wasmCloud's provider images (any tag or digest) or
/// `wasmcloud+builtin://<name>`.
pub(super) fn capability(image: &str) -> Option<Capability> {
    let name = image.strip_prefix("wasmcloud+builtin://").or_else(|| {
        let rest = image.strip_prefix("ghcr.io/wasmcloud/")?;
        // `name:tag` or `name@sha256:…`
        rest.split([':', '@']).next()
    })?;
    match name {
        "http-server" => Some(Capability::HttpServer),
        "keyvalue-nats" => Some(Capability::KeyValueNats),
        "http-client" => Some(Capability::HttpClient),
        "keyvalue-sled" if image.starts_with("wasmcloud+builtin://") => {
            Some(Capability::KeyValueSled)
        }
        _ => None,
    }
}

/// The images accepted, for errors.
pub(super) const BUILT_IN: &str = "ghcr.io/wasmcloud/http-server:*, ghcr.io/wasmcloud/keyvalue-nats:*, \
    ghcr.io/wasmcloud/http-client:*, or wasmcloud+builtin:// http-server, keyvalue-nats, keyvalue-sled, http-client";

#[derive(Deserialize)]
struct LinkProps {
    target: Value,
    namespace: String,
    package: String,
    interfaces: Vec<String>,
    name: Option<String>,
    source: Option<LinkSide>,
    #[serde(default)]
    source_config: Vec<ConfigEntry>,
    #[serde(default)]
    target_config: Vec<ConfigEntry>,
}

impl LinkProps {
    /// The target's name and config, from either form, and the YAML path of that config (for
    /// errors: `target.config`, or `target_config` where the manifest used the older form);
    /// `field` is the YAML path of the link's properties.
    ///
    /// # Errors
    /// `target` is neither a name nor a mapping with `name` (and `config`).
    fn target(
        &mut self,
        field: &str,
        warnings: &mut Vec<String>,
    ) -> Result<(String, Vec<ConfigEntry>, String), FieldError> {
        let extra = std::mem::take(&mut self.target_config);
        let at = format!("{field}.target");
        let older = format!("{field}.target_config");
        match std::mem::take(&mut self.target) {
            Value::String(name) => Ok((name, extra, older)),
            value @ Value::Mapping(_) => {
                let target: LinkTarget = from_value(value, &at, warnings)?;
                let config_at = if target.config.is_empty() && !extra.is_empty() {
                    older
                } else {
                    format!("{at}.config")
                };
                Ok((
                    target.name,
                    target.config.into_iter().chain(extra).collect(),
                    config_at,
                ))
            }
            _ => Err(FieldError::new(
                at,
                "expected a name, or a mapping with `name` and optional `config`",
            )),
        }
    }

    /// The source's config, from either form, and its YAML path as [`LinkProps::target`] gives
    /// the target's.
    fn source_config(&mut self, field: &str) -> (Vec<ConfigEntry>, String) {
        let extra = std::mem::take(&mut self.source_config);
        let config = self.source.take().unwrap_or_default().config;
        let at = if config.is_empty() && !extra.is_empty() {
            format!("{field}.source_config")
        } else {
            format!("{field}.source.config")
        };
        (config.into_iter().chain(extra).collect(), at)
    }

    fn interface_names(&self) -> String {
        format!(
            "{}:{}/{{{}}}",
            self.namespace,
            self.package,
            self.interfaces.join(",")
        )
    }
}

/// The mapping form of a link's `target`.
#[derive(Deserialize)]
struct LinkTarget {
    name: String,
    #[serde(default)]
    config: Vec<ConfigEntry>,
}

#[derive(Deserialize, Default)]
struct LinkSide {
    #[serde(default)]
    config: Vec<ConfigEntry>,
}

/// One entry of a `config` list: a named config, with its properties or referring to one.
#[derive(Deserialize)]
pub(super) struct ConfigEntry {
    name: String,
    #[serde(default)]
    properties: Option<BTreeMap<String, String>>,
}

/// The named configs given with properties anywhere in a manifest, by name.
#[derive(Default)]
pub(super) struct NamedConfigs(BTreeMap<String, BTreeMap<String, String>>);

impl NamedConfigs {
    /// Collects the named configs with properties of every component's `config` and every link
    /// trait's config lists. Malformed entries are skipped here: parsing reports them. A name
    /// given twice with different properties keeps the first, with a warning.
    pub(super) fn collect(components: &[RawComponent], warnings: &mut Vec<String>) -> NamedConfigs {
        let mut named = NamedConfigs::default();
        let mut add = |list: Option<&Value>| {
            let Some(Value::Sequence(entries)) = list else {
                return;
            };
            for entry in entries {
                if let Ok(ConfigEntry {
                    name,
                    properties: Some(properties),
                }) = serde_yaml::from_value::<ConfigEntry>(entry.clone())
                {
                    match named.0.get(&name) {
                        Some(first) if *first != properties => warnings.push(format!(
                            "named config {name:?} is given twice with different properties; \
                             the first is used wherever it is referred to by name"
                        )),
                        Some(_) => {}
                        None => {
                            named.0.insert(name, properties);
                        }
                    }
                }
            }
        };
        for c in components {
            add(c.properties.config.as_ref());
            for t in c.traits.iter().filter(|t| t.kind == "link") {
                let p = &t.properties;
                add(p.get("source_config"));
                add(p.get("target_config"));
                add(p.get("source").and_then(|s| s.get("config")));
                add(p.get("target").and_then(|s| s.get("config")));
            }
        }
        named
    }

    /// The properties of `entries` merged in order (a later key wins), each entry without
    /// properties looked up by name; `field` is the list's YAML path.
    ///
    /// # Errors
    /// A named config without properties that the manifest does not define.
    pub(super) fn resolve(
        &self,
        entries: Vec<ConfigEntry>,
        field: &str,
    ) -> Result<BTreeMap<String, String>, FieldError> {
        let mut merged = BTreeMap::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let properties = match entry.properties {
                Some(properties) => properties,
                None => self.0.get(&entry.name).cloned().ok_or_else(|| {
                    FieldError::new(
                        format!("{field}[{i}]"),
                        format!(
                            "named config {:?} has no properties and is not defined elsewhere in the \
                             manifest (a lattice config store is not hosted; give its properties here)",
                            entry.name
                        ),
                    )
                })?,
            };
            merged.extend(properties);
        }
        Ok(merged)
    }
}

/// A component's `config`: the properties of its named configs, merged in order.
pub(super) fn component_config(
    config: Option<&Value>,
    at: &str,
    named: &NamedConfigs,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, String>, FieldError> {
    let Some(config) = config else {
        return Ok(BTreeMap::new());
    };
    let field = format!("{at}.properties.config");
    let entries: Vec<ConfigEntry> = from_value(config.clone(), &field, warnings)?;
    named.resolve(entries, &field)
}

/// What a component's links grant it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ComponentLinks {
    /// Keyvalue links (bucket and interfaces) by link name.
    pub(super) keyvalue: BTreeMap<String, KeyValueLink>,
    /// Hosts of its http-client links, merged.
    pub(super) allowed_hosts: AllowedHosts,
}

/// What a component's links are checked against: the manifest around them.
pub(super) struct LinkContext<'a> {
    /// The app's name (the default keyvalue-sled bucket).
    pub(super) app: &'a str,
    /// The component whose links these are, for errors.
    pub(super) component: &'a str,
    /// The manifest's built-in capabilities by name.
    pub(super) capabilities: &'a BTreeMap<&'a str, Capability>,
    /// The manifest's component names.
    pub(super) components: &'a BTreeSet<&'a str>,
    /// The manifest's named configs.
    pub(super) named: &'a NamedConfigs,
}

/// Reads the link trait at `at` of a component into `links`.
///
/// # Errors
/// A target that is not a built-in capability of the manifest, a package the target does not
/// provide, two keyvalue links with the same name, a missing `bucket`, a bucket name that is
/// not a [`Name`] or is the lattice's own
/// ([`check_bucket_name`]: the reason names the app, component and link), a bad
/// `enable_bucket_auto_create` or `allowed_hosts`.
pub(super) fn component_link(
    props: Value,
    at: &str,
    context: &LinkContext<'_>,
    links: &mut ComponentLinks,
    warnings: &mut Vec<String>,
) -> Result<(), FieldError> {
    let LinkContext {
        app,
        component,
        capabilities,
        components,
        named,
    } = context;
    let field = format!("{at}.properties");
    let mut link: LinkProps = from_value(props, &field, warnings)?;
    let (target, target_config, config_field) = link.target(&field, warnings)?;
    let target_field = format!("{field}.target");
    let kind = match capabilities.get(target.as_str()) {
        Some(kind) => *kind,
        None if components.contains(target.as_str()) => {
            return Err(FieldError::new(
                target_field,
                format!(
                    "{target:?} is a component: links between components are not supported \
                     (compose them into one component, e.g. with `wac plug`)"
                ),
            ));
        }
        None => {
            return Err(FieldError::new(
                target_field,
                format!("{target:?} is not a capability of this manifest"),
            ));
        }
    };
    let mut config = named.resolve(target_config, &config_field)?;
    let (source_config, source_field) = link.source_config(&field);
    if !source_config.is_empty() {
        warnings.push(format!(
            "{source_field}: source config is not used by {} links; ignored",
            link.package
        ));
    }
    match (link.namespace.as_str(), link.package.as_str(), kind) {
        ("wasi", "keyvalue", Capability::KeyValueNats | Capability::KeyValueSled) => {
            let interfaces = KvInterfaces::parse(link.interfaces.iter().map(String::as_str))
                .map_err(|bad| {
                    FieldError::new(
                        format!("{field}.interfaces"),
                        format!("{bad:?}: wasi:keyvalue links grant store, atomics and batch"),
                    )
                })?;
            if interfaces.is_empty() {
                return Err(FieldError::new(
                    format!("{field}.interfaces"),
                    "list the wasi:keyvalue interfaces this link grants: store, atomics, batch",
                ));
            }
            // The identifier `store.open` matches: never part of a subject or a bucket name,
            // so any text (not a `Name`), as always.
            let name = link.name.clone().unwrap_or_else(|| "default".to_owned());
            let bucket = config
                .remove("bucket")
                .map(|bucket| {
                    check_bucket_name(&bucket).map_err(|reason| {
                        FieldError::new(
                            format!("{config_field}.bucket"),
                            format!(
                                "app {app:?}, component {component:?}, keyvalue link {name:?}: {reason}"
                            ),
                        )
                    })
                })
                .transpose()?;
            let spec = if kind == Capability::KeyValueNats {
                let bucket = bucket.ok_or_else(|| {
                    FieldError::new(
                        &config_field,
                        "keyvalue-nats needs `bucket`: the JetStream KV bucket this link grants",
                    )
                })?;
                let auto_create = match config.remove("enable_bucket_auto_create") {
                    None => false,
                    // wasmCloud reads it case-insensitively.
                    Some(v) if v.eq_ignore_ascii_case("true") => true,
                    Some(v) if v.eq_ignore_ascii_case("false") => false,
                    Some(other) => {
                        return Err(FieldError::new(
                            format!("{config_field}.enable_bucket_auto_create"),
                            format!("expected 'true' or 'false', found {other:?}"),
                        ));
                    }
                };
                for key in config.keys() {
                    warnings.push(format!(
                        "{config_field}.{key}: ignored (the built-in keyvalue-nats uses the node's own NATS connection and JetStream domain)"
                    ));
                }
                BucketSpec::Nats {
                    bucket,
                    auto_create,
                }
            } else {
                for key in config.keys() {
                    warnings.push(format!(
                        "{config_field}.{key}: not used by keyvalue-sled; ignored"
                    ));
                }
                // Without `bucket`, the app's name: a bucket of the app's own whatever its
                // name (keyvalue-sled buckets are per app), so the reserved prefix is no
                // matter here.
                let bucket = match bucket {
                    Some(bucket) => bucket,
                    None => Name::new(*app).map_err(|e| {
                        FieldError::new(format!("{config_field}.bucket"), e.to_string())
                    })?,
                };
                BucketSpec::Sled { bucket }
            };
            let granted = KeyValueLink {
                bucket: spec,
                interfaces,
            };
            if links.keyvalue.insert(name.clone(), granted).is_some() {
                return Err(FieldError::new(
                    format!("{field}.name"),
                    format!(
                        "a second keyvalue link named {name:?}: store.open tells links apart by name"
                    ),
                ));
            }
        }
        ("wasi", "http", Capability::HttpClient) => {
            if link.interfaces.is_empty() || link.interfaces.iter().any(|i| i != "outgoing-handler")
            {
                return Err(FieldError::new(
                    format!("{field}.interfaces"),
                    "list [outgoing-handler]: the http-client capability grants \
                     wasi:http/outgoing-handler only",
                ));
            }
            match config.remove("allowed_hosts") {
                Some(text) => links
                    .allowed_hosts
                    .extend(AllowedHosts::parse(&text).map_err(|reason| {
                        FieldError::new(format!("{config_field}.allowed_hosts"), reason)
                    })?),
                None => warnings.push(format!(
                    "{config_field}: no allowed_hosts, so every outgoing request is denied"
                )),
            }
            for key in config.keys() {
                warnings.push(format!(
                    "{config_field}.{key}: not used by the built-in http-client; ignored"
                ));
            }
        }
        _ => {
            return Err(FieldError::new(
                &field,
                format!(
                    "{} cannot link to {target:?} ({kind:?}): components link wasi:keyvalue to \
                     keyvalue-nats or keyvalue-sled, and wasi:http/outgoing-handler to http-client",
                    link.interface_names()
                ),
            ));
        }
    }
    Ok(())
}

/// Reads a link trait of the http-server capability at `at`: a route to a component.
///
/// # Errors
/// Not a wasi:http/incoming-handler link, a target that is not a component of the manifest, a
/// bad `address` or `path`, an undefined named config.
pub(super) fn http_link(
    props: Value,
    at: &str,
    components: &BTreeSet<&str>,
    named: &NamedConfigs,
    warnings: &mut Vec<String>,
) -> Result<HttpLink, FieldError> {
    let field = format!("{at}.properties");
    let mut link: LinkProps = from_value(props, &field, warnings)?;
    if link.namespace != "wasi"
        || link.package != "http"
        || !link.interfaces.iter().any(|i| i == "incoming-handler")
    {
        return Err(FieldError::new(
            &field,
            format!(
                "the http-server provider links to wasi:http/incoming-handler only, found {}",
                link.interface_names()
            ),
        ));
    }
    let (target, target_config, _) = link.target(&field, warnings)?;
    if !components.contains(target.as_str()) {
        return Err(FieldError::new(
            format!("{field}.target"),
            format!("{target:?} is not a component of this manifest"),
        ));
    }
    if !target_config.is_empty() {
        warnings.push(format!(
            "{field}.target: target config is not used by http links; ignored"
        ));
    }
    if link.name.as_deref().is_some_and(|n| n != "default") {
        warnings.push(format!(
            "{field}.name: link names matter for keyvalue links only; ignored"
        ));
    }
    let (source_config, config_field) = link.source_config(&field);
    let mut settings = named.resolve(source_config, &config_field)?;
    let address = match settings.remove("address") {
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| {
            FieldError::new(
                format!("{config_field}.address"),
                format!("{text:?} is not an IP:PORT address: {e}"),
            )
        })?),
        None => None,
    };
    let host = settings.remove("host");
    let path = settings.remove("path");
    if let Some(p) = path.as_ref().filter(|p| !p.starts_with('/')) {
        return Err(FieldError::new(
            format!("{config_field}.path"),
            format!("{p:?} must start with '/'"),
        ));
    }
    for key in settings.keys() {
        warnings.push(format!(
            "{config_field}.{key}: not supported by the built-in http-server; ignored"
        ));
    }
    Ok(HttpLink {
        target,
        address,
        host,
        path,
        field,
    })
}
