//! What a deploy checks on the node beyond the manifest itself: each component's artifact is
//! a `wasi:http` component this node can link, and the app's routes are free lattice-wide.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{AppStore, DeployError};
use crate::lattice::rpc::Resend;
use crate::providers::http::{Route, RouteKey, RouteTarget, Router};
use crate::reconciler::manifest::{FieldError, Image, Manifest};
use crate::reconciler::store::Source;

impl AppStore {
    /// Every component's artifact exists and is a `wasi:http` component this node can link.
    /// Returns warnings: components importing `wasi:keyvalue` without a keyvalue link, which
    /// are stored but will not start (their status says why).
    pub(super) async fn check_components(
        &self,
        manifest: &Manifest,
    ) -> Result<Vec<String>, DeployError> {
        let mut warnings = Vec::new();
        for spec in &manifest.components {
            let Image::Artifact { digest } = &spec.image else {
                continue;
            };
            let wasm = self
                .artifacts
                .fetch(digest)
                .await
                .map_err(|e| FieldError::new(&spec.image_field, format!("{e:#}")))?;
            let checked = self
                .host
                .check_http_component(wasm)
                .await
                .map_err(|e| FieldError::new(&spec.image_field, e.to_string()))?;
            if checked.code_source == crate::host::CodeSource::Compiled {
                tracing::info!(
                    app = manifest.name,
                    component = spec.name,
                    digest,
                    "component compiled (checked for the deploy)"
                );
            }
            let keyvalue = crate::host::keyvalue_imports(&checked.imports);
            if !keyvalue.is_empty() && spec.keyvalue.is_empty() {
                warnings.push(format!(
                    "component {:?} imports {} but has no keyvalue link: it will not start",
                    spec.name,
                    keyvalue.join(", ")
                ));
            }
        }
        Ok(warnings)
    }

    /// The manifest's routes are free: no other deployed app of the lattice holds one (an app
    /// deployed from the same file is being replaced and does not count).
    pub(super) fn check_routes(
        &self,
        manifest: &Manifest,
        source: &Source,
    ) -> Result<(), DeployError> {
        let desired = self.mirror.desired();
        let mut routes = Vec::new();
        for (name, app) in desired.iter() {
            if *name == manifest.name {
                continue;
            }
            let same_file = matches!(source, Source::File { .. })
                && app.record.deployed_version().map(|v| &v.source) == Some(source);
            if same_file {
                continue;
            }
            if let Ok(other) = &app.manifest {
                routes.extend(routes_of(other, self.ingress));
            }
        }
        let held = routes.len();
        routes.extend(routes_of(manifest, self.ingress));
        Router::build(routes.clone()).map(drop).map_err(|conflict| {
            // Name the link that claims the route.
            let field = routes[held..]
                .iter()
                .zip(&manifest.http_links)
                .find(|(route, _)| route.key.to_string() == conflict.route)
                .map_or_else(|| "spec".to_owned(), |(_, link)| link.field.clone());
            FieldError::new(field, conflict.to_string()).into()
        })
    }
}

/// The routes of `manifest` on a node whose shared ingress is `ingress`.
pub fn routes_of(manifest: &Manifest, ingress: SocketAddr) -> Vec<Route> {
    let app: Arc<str> = manifest.name.as_str().into();
    manifest
        .http_links
        .iter()
        .map(|link| Route {
            key: RouteKey::new(
                crate::reconciler::deployer::listener_for(link.address, ingress),
                link.host.as_deref(),
                link.path.as_deref(),
            ),
            target: RouteTarget {
                app: app.clone(),
                component: link.target.as_str().into(),
                resend: manifest
                    .components
                    .iter()
                    .find(|c| c.name == link.target)
                    .map_or(Resend::Idempotent, |c| Resend::of_config(&c.config)),
            },
        })
        .collect()
}
