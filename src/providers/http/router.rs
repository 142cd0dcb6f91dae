//! The route table: which app's component answers a request, by listener address, `host` and
//! `path` prefix. Pure and immutable ([`Router::build`] reports conflicts), as Spin's router.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::lattice::rpc::Resend;

/// Where a route listens and what it matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// The listener: the shared ingress, or an app's own `address`.
    pub listener: SocketAddr,
    /// Host name to match (lowercase, no port); `None` matches any host.
    pub host: Option<String>,
    /// Path prefix, normalized: starts with `/`, no trailing `/` except the root.
    pub path: String,
}

impl RouteKey {
    /// A key with `host` and `path` normalized (see the fields).
    pub fn new(listener: SocketAddr, host: Option<&str>, path: Option<&str>) -> RouteKey {
        RouteKey {
            listener,
            host: host
                .map(|h| normalize_host(h).into_owned())
                .filter(|h| !h.is_empty()),
            path: normalize_path(path.unwrap_or("/")),
        }
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{} on {}",
            self.host.as_deref().unwrap_or("*"),
            self.path,
            self.listener
        )
    }
}

/// What answers a route: a component of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    /// App (manifest `metadata.name`).
    pub app: Arc<str>,
    /// Component name in the manifest.
    pub component: Arc<str>,
    /// Whether a request forwarded to a replica elsewhere that none accepted in time may be
    /// sent again whatever its method (from the component's config, see
    /// [`Resend::of_config`]).
    pub resend: Resend,
}

/// A route of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// What it matches.
    pub key: RouteKey,
    /// Who answers.
    pub target: RouteTarget,
}

/// Two apps (or one app twice) claim the same listener, host and path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {route} is already held by app {holder:?}; app {claimant:?} cannot claim it too")]
pub struct RouteConflict {
    /// The contested route.
    pub route: String,
    /// The app that holds it (listed first).
    pub holder: String,
    /// The app that claimed it later.
    pub claimant: String,
}

/// The routes claimed so far, for checking app after app that none claims a route another
/// holds ([`RouteClaims::claim`]) in time linear in the routes, where building a [`Router`] of
/// every app so far for each app would be quadratic in the apps.
#[derive(Debug, Clone, Default)]
pub struct RouteClaims {
    held: HashMap<RouteKey, Arc<str>>,
}

impl RouteClaims {
    /// Claims all of `routes` (one app's), or none of them: as [`Router::build`] of the routes
    /// claimed so far followed by `routes` would judge them.
    ///
    /// # Errors
    /// [`RouteConflict`] for the first route of `routes` whose key is held already, by an
    /// earlier claim or by an earlier route of `routes`.
    pub fn claim(&mut self, routes: &[Route]) -> Result<(), RouteConflict> {
        for (i, route) in routes.iter().enumerate() {
            let earlier = routes[..i].iter().find(|r| r.key == route.key);
            let holder = self.held.get(&route.key).or(earlier.map(|r| &r.target.app));
            if let Some(holder) = holder {
                return Err(RouteConflict {
                    route: route.key.to_string(),
                    holder: holder.to_string(),
                    claimant: route.target.app.to_string(),
                });
            }
        }
        for route in routes {
            self.held
                .insert(route.key.clone(), route.target.app.clone());
        }
        Ok(())
    }
}

/// An immutable route table. A lookup costs one hash probe per `/` of the request path within
/// the longest route's length (and one for the host), whatever the number of routes or the
/// request path's length: a node with 10,000 apps routes as fast as one with one.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Every route, grouped by listener; within one, most specific first: a host before no
    /// host, then longer paths. A route's index here is its [`RouteId`].
    routes: Vec<Route>,
    /// Per listener, its routes by host and path.
    by_listener: BTreeMap<SocketAddr, ListenerRoutes>,
}

/// The routes of one listener, by their exact key: a lookup probes the request path's
/// prefixes, longest first.
#[derive(Debug, Clone, Default)]
struct ListenerRoutes {
    /// Routes with a host: host → their paths.
    by_host: HashMap<String, PathTable>,
    /// Routes for any host.
    any_host: PathTable,
}

/// One host's (or any host's) routes by path, with the length of the longest: a prefix of
/// the request path longer than that cannot be a route, so a lookup never hashes one. Without
/// that bound a path of n `/`s (hyper takes URIs up to 64 KiB) would cost n hashes of up to n
/// bytes each, O(n²) CPU per request.
#[derive(Debug, Clone, Default)]
struct PathTable {
    /// Path → route.
    paths: HashMap<String, RouteId>,
    /// Bytes of the longest key of `paths` (0 when empty).
    max_len: usize,
}

impl ListenerRoutes {
    fn insert(&mut self, key: &RouteKey, id: RouteId) {
        let paths = match &key.host {
            Some(host) => self.by_host.entry(host.clone()).or_default(),
            None => &mut self.any_host,
        };
        paths.max_len = paths.max_len.max(key.path.len());
        paths.paths.insert(key.path.clone(), id);
    }
}

impl PathTable {
    /// The route whose path is the longest prefix of `path` on a segment boundary
    /// ([`RouteKey`]'s paths are normalized: no trailing `/` but the root's, which matches all).
    fn longest_prefix(&self, path: &str) -> Option<RouteId> {
        self.probes(path)
            .find_map(|prefix| self.paths.get(prefix))
            .copied()
    }

    /// The keys [`PathTable::longest_prefix`] looks up, in order: `path` itself, its prefixes
    /// ending before a `/` (longest first), then the root; those longer than any key left out.
    /// At most `max_len` + 2 probes of at most `max_len` bytes each, whatever `path`'s length.
    fn probes<'p>(&self, path: &'p str) -> impl Iterator<Item = &'p str> {
        let whole = (path.len() <= self.max_len).then_some(path);
        // A `/` at byte i ends the prefix `path[..i]`; `/` is ASCII, so i is a char boundary.
        let window = &path.as_bytes()[..path.len().min(self.max_len + 1)];
        let cuts = window
            .iter()
            .enumerate()
            .rev()
            .filter(|&(i, &b)| b == b'/' && i > 0)
            .map(move |(i, _)| &path[..i]);
        whole.into_iter().chain(cuts).chain(std::iter::once("/"))
    }
}

/// The order of a listener's routes in [`Router::routes`]: a host before no host, then longer
/// paths first.
fn most_specific_first(a: &Route, b: &Route) -> std::cmp::Ordering {
    b.key
        .host
        .is_some()
        .cmp(&a.key.host.is_some())
        .then(b.key.path.len().cmp(&a.key.path.len()))
}

/// A route's position in its [`Router`] ([`Router::routes`]): what the server keeps per-route
/// state by (a `Vec` indexed by it), so that a request finds that state without a map lookup.
pub type RouteId = usize;

impl Router {
    /// Builds the table. Routes listed earlier hold their keys; a later route with an equal key
    /// is a conflict naming both apps.
    ///
    /// # Errors
    /// [`RouteConflict`] for the first duplicate key.
    pub fn build(routes: impl IntoIterator<Item = Route>) -> Result<Router, RouteConflict> {
        let mut seen: BTreeMap<RouteKey, Arc<str>> = BTreeMap::new();
        let mut grouped: BTreeMap<SocketAddr, Vec<Route>> = BTreeMap::new();
        for route in routes {
            if let Some(holder) = seen.get(&route.key) {
                return Err(RouteConflict {
                    route: route.key.to_string(),
                    holder: holder.to_string(),
                    claimant: route.target.app.to_string(),
                });
            }
            seen.insert(route.key.clone(), route.target.app.clone());
            grouped.entry(route.key.listener).or_default().push(route);
        }
        let mut flat = Vec::with_capacity(seen.len());
        let mut by_listener = BTreeMap::new();
        for (listener, mut routes) in grouped {
            routes.sort_by(most_specific_first);
            let index: &mut ListenerRoutes = by_listener.entry(listener).or_default();
            for route in routes {
                index.insert(&route.key, flat.len());
                flat.push(route);
            }
        }
        Ok(Router {
            routes: flat,
            by_listener,
        })
    }

    /// The most specific route on `listener` matching `host` (as sent, any case, port allowed)
    /// and `path`.
    pub fn lookup(&self, listener: SocketAddr, host: Option<&str>, path: &str) -> Option<&Route> {
        self.lookup_id(listener, host, path).map(|(_, route)| route)
    }

    /// As [`Router::lookup`], with the route's [`RouteId`].
    pub fn lookup_id(
        &self,
        listener: SocketAddr,
        host: Option<&str>,
        path: &str,
    ) -> Option<(RouteId, &Route)> {
        let index = self.by_listener.get(&listener)?;
        let hosted = host
            .filter(|_| !index.by_host.is_empty())
            .and_then(|host| index.by_host.get(normalize_host(host).as_ref()))
            .and_then(|paths| paths.longest_prefix(path));
        let id = hosted.or_else(|| index.any_host.longest_prefix(path))?;
        Some((id, &self.routes[id]))
    }

    /// Every route, in [`RouteId`] order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Every listener address some route uses.
    pub fn listeners(&self) -> BTreeSet<SocketAddr> {
        self.by_listener.keys().copied().collect()
    }
}

/// Lowercase, without a `:port` suffix (IPv6 literals keep their brackets); borrowed when
/// `host` has no uppercase letter (as clients send it), so a lookup allocates nothing.
fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.trim();
    let host = match host.rfind(':') {
        Some(colon)
            if !host.ends_with(']') && host[colon + 1..].chars().all(|c| c.is_ascii_digit()) =>
        {
            &host[..colon]
        }
        _ => host,
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Leading `/`, no trailing `/` except the root, no empty segments.
fn normalize_path(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INGRESS: &str = "127.0.0.1:8000";

    fn route(app: &str, host: Option<&str>, path: &str) -> Route {
        Route {
            key: RouteKey::new(INGRESS.parse().unwrap(), host, Some(path)),
            target: RouteTarget {
                app: app.into(),
                component: "c".into(),
                resend: Resend::Idempotent,
            },
        }
    }

    fn app_of(router: &Router, host: Option<&str>, path: &str) -> Option<String> {
        router
            .lookup(INGRESS.parse().unwrap(), host, path)
            .map(|r| r.target.app.to_string())
    }

    #[test]
    fn longest_prefix_on_segment_boundaries_and_hosts_first() {
        let router = Router::build([
            route("root", None, "/"),
            route("api", None, "/api/"),
            route("api-v2", None, "/api/v2"),
            route("example", Some("Example.COM"), "/"),
        ])
        .unwrap();
        assert_eq!(app_of(&router, None, "/").as_deref(), Some("root"));
        assert_eq!(app_of(&router, None, "/api").as_deref(), Some("api"));
        assert_eq!(app_of(&router, None, "/api/x").as_deref(), Some("api"));
        assert_eq!(app_of(&router, None, "/apix").as_deref(), Some("root"));
        assert_eq!(app_of(&router, None, "/api/").as_deref(), Some("api"));
        assert_eq!(app_of(&router, None, "/api//v2").as_deref(), Some("api"));
        assert_eq!(app_of(&router, None, "*").as_deref(), Some("root"));
        assert_eq!(
            app_of(&router, Some("example.com"), "/api/v2").as_deref(),
            Some("example")
        );
        assert_eq!(
            app_of(&router, None, "/api/v2/users").as_deref(),
            Some("api-v2")
        );
        assert_eq!(
            app_of(&router, Some("example.com:8000"), "/api").as_deref(),
            Some("example")
        );
        assert_eq!(
            app_of(&router, Some("other.org"), "/api").as_deref(),
            Some("api")
        );
    }

    /// The matching rule as a linear scan of the routes, most specific first: what the hash
    /// probes must agree with.
    fn linear_scan(routes: &[Route], host: Option<&str>, path: &str) -> Option<String> {
        let mut sorted: Vec<&Route> = routes.iter().collect();
        sorted.sort_by(|a, b| most_specific_first(a, b));
        let host = host.map(|h| normalize_host(h).into_owned());
        sorted
            .into_iter()
            .find(|r| {
                let p = r.key.path.as_str();
                let host_ok = r.key.host.is_none() || r.key.host == host;
                let path_ok = p == "/"
                    || path == p
                    || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'));
                host_ok && path_ok
            })
            .map(|r| r.target.app.to_string())
    }

    #[test]
    fn probes_agree_with_a_linear_scan() {
        let routes = vec![
            route("root", None, "/"),
            route("a", None, "/a"),
            route("ab", None, "/ab"),
            route("a-b-c", None, "/a/b/c"),
            route("pct", None, "/x%2Fy"),
            route("upper", None, "/Case"),
            route("h-a", Some("h.example"), "/a/b"),
            route("h-deep", Some("h.example"), "/a/b/c/d/e"),
            route("other", Some("o.example"), "/z"),
        ];
        let router = Router::build(routes.clone()).unwrap();
        let paths = [
            "/",
            "",
            "*",
            "/a",
            "/a/",
            "/ab",
            "/abc",
            "/a/b",
            "/a/b/",
            "/a/b/c",
            "/a/b/c/",
            "/a//b/c",
            "//a",
            "/a/b/c/d/e/f",
            "/a/b/c/d/ef",
            "/x%2Fy",
            "/x/y",
            "/x%2fy",
            "/case",
            "/Case/x",
            "/ä/a",
            "/a/ä",
            "/z",
            "/z/1",
        ];
        for host in [
            None,
            Some("h.example"),
            Some("H.Example:80"),
            Some("o.example"),
        ] {
            for path in paths {
                assert_eq!(
                    app_of(&router, host, path),
                    linear_scan(&routes, host, path),
                    "host {host:?} path {path:?}"
                );
            }
        }
    }

    #[test]
    fn a_path_of_many_slashes_costs_probes_bounded_by_the_longest_route() {
        let routes: Vec<Route> = (0..1_000)
            .map(|i| route(&format!("app{i}"), None, &format!("/app{i}/x")))
            .chain([route("root", None, "/")])
            .collect();
        let router = Router::build(routes).unwrap();
        let table = &router.by_listener[&INGRESS.parse().unwrap()].any_host;
        assert_eq!(table.max_len, "/app999/x".len());
        for path in [
            "/".repeat(65_000),
            format!("/app7/x{}", "/".repeat(65_000)),
            format!("/app7{}", "/".repeat(65_000)),
        ] {
            let probes: Vec<&str> = table.probes(&path).collect();
            assert!(probes.len() <= table.max_len + 2, "{} probes", probes.len());
            assert!(probes.iter().all(|p| p.len() <= table.max_len));
        }
        let deep = format!("/app7/x{}", "/".repeat(65_000));
        assert_eq!(app_of(&router, None, &deep).as_deref(), Some("app7"));
        assert_eq!(
            app_of(&router, None, &"/".repeat(65_000)).as_deref(),
            Some("root")
        );
        assert_eq!(
            app_of(&router, None, &format!("/app7{}", "/".repeat(65_000))).as_deref(),
            Some("root")
        );
    }

    #[test]
    fn route_ids_index_routes() {
        let other: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let mut elsewhere = route("elsewhere", None, "/");
        elsewhere.key.listener = other;
        let router = Router::build([
            route("root", None, "/"),
            elsewhere,
            route("api", None, "/api"),
        ])
        .unwrap();
        assert_eq!(router.routes().len(), 3);
        for (listener, path, app) in [
            (INGRESS.parse().unwrap(), "/api/x", "api"),
            (INGRESS.parse().unwrap(), "/x", "root"),
            (other, "/api", "elsewhere"),
        ] {
            let (id, route) = router.lookup_id(listener, None, path).unwrap();
            assert_eq!(&*route.target.app, app);
            assert_eq!(router.routes()[id].target.app, route.target.app);
        }
    }

    #[test]
    fn no_route_is_none() {
        let router = Router::build([route("api", None, "/api")]).unwrap();
        assert_eq!(app_of(&router, None, "/"), None);
        assert!(
            router
                .lookup("127.0.0.1:9".parse().unwrap(), None, "/api")
                .is_none()
        );
    }

    #[test]
    fn duplicate_route_names_both_apps() {
        let err = Router::build([
            route("first", None, "/hello/"),
            route("second", None, "/hello"),
        ])
        .unwrap_err();
        assert_eq!(err.holder, "first");
        assert_eq!(err.claimant, "second");
        assert!(
            err.to_string().contains("*/hello on 127.0.0.1:8000"),
            "{err}"
        );
    }

    #[test]
    fn claims_judge_as_a_build_of_every_route_so_far() {
        let mut claims = RouteClaims::default();
        claims.claim(&[route("first", None, "/hello")]).unwrap();
        // The second app's free route is not claimed when another of its routes conflicts.
        let err = claims
            .claim(&[
                route("second", None, "/free"),
                route("second", None, "/hello/"),
            ])
            .unwrap_err();
        assert_eq!(
            (err.holder.as_str(), err.claimant.as_str()),
            ("first", "second")
        );
        claims.claim(&[route("third", None, "/free")]).unwrap();
        let twice = claims
            .claim(&[route("fourth", None, "/x"), route("fourth", None, "/x/")])
            .unwrap_err();
        assert_eq!(
            (twice.holder.as_str(), twice.claimant.as_str()),
            ("fourth", "fourth")
        );
        claims
            .claim(&[route("fifth", Some("a.example"), "/hello")])
            .unwrap();
    }

    #[test]
    fn normalizes_hosts_and_paths() {
        assert_eq!(normalize_host("Foo.Example:8080"), "foo.example");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("a//b/"), "/a/b");
    }
}
