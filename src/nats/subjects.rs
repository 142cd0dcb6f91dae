//! Every NATS subject and queue group the lattice uses, built in one place (as wasmCloud's
//! `broker.rs`). The wire contract is `PROTOCOL.md`; the version token `v1` changes only with an
//! incompatible change to a payload.
//!
//! Layout: `lattice.<lattice>.<area>.v1.<…>`, so several lattices share one NATS account without
//! seeing each other (`--lattice` names are `[A-Za-z0-9_-]+`, app and component names too).

/// Protocol version carried in every subject.
pub const VERSION: &str = "v1";

/// Host events of lattice `lattice`: `lattice.<lattice>.evt.v1.<event>`, for `event` one of
/// [`HOST_HEARTBEAT`], [`HOST_STARTED`], [`HOST_STOPPED`].
pub fn event(lattice: &str, event: &str) -> String {
    format!("lattice.{lattice}.evt.{VERSION}.{event}")
}

/// Every host event of `lattice`: `lattice.<lattice>.evt.v1.*`.
pub fn events(lattice: &str) -> String {
    format!("lattice.{lattice}.evt.{VERSION}.*")
}

/// The periodic heartbeat event.
pub const HOST_HEARTBEAT: &str = "host_heartbeat";
/// Published once when a node is up.
pub const HOST_STARTED: &str = "host_started";
/// Published once when a node stops in order.
pub const HOST_STOPPED: &str = "host_stopped";

/// The probe subject of node `node` (its id) in `lattice`: `lattice.<lattice>.node.v1.<node>.probe`,
/// answered by that node with an empty message ([`crate::lattice::probe`]).
pub fn probe(lattice: &str, node: &str) -> String {
    format!("lattice.{lattice}.node.{VERSION}.{node}.probe")
}

/// Prefix of the control API of `lattice`: `lattice.<lattice>.ctl.v1`; endpoints are
/// [`CTL_GET_HOSTS`] and [`CTL_GET_INVENTORY`] under it.
pub fn control(lattice: &str) -> String {
    format!("lattice.{lattice}.ctl.{VERSION}")
}

/// Control endpoint: the hosts of the lattice.
pub const CTL_GET_HOSTS: &str = "get.hosts";
/// Control endpoint: components and replicas per host.
pub const CTL_GET_INVENTORY: &str = "get.inventory";
/// Control endpoint: where the lattice keeps its state (JetStream domain, bucket names).
pub const CTL_GET_CONFIG: &str = "get.config";
/// Control endpoint: validate and store a manifest version, make it the deployed one.
pub const CTL_APP_DEPLOY: &str = "app.deploy";
/// Control endpoint: remove an app (every version) from the lattice.
pub const CTL_APP_UNDEPLOY: &str = "app.undeploy";
/// Control endpoint: every app with its state.
pub const CTL_APP_LIST: &str = "app.list";
/// Control endpoint: one app's state, per component.
pub const CTL_APP_STATUS: &str = "app.status";
/// Control endpoint: one app's stored versions.
pub const CTL_APP_HISTORY: &str = "app.history";

/// Published when an app's state changes (deployed, reconciling, failed), by one node.
pub const APP_STATUS: &str = "app_status";

/// JetStream KV bucket of lattice `lattice`'s desired state: one key per app, its versions
/// (`lattice_<lattice>_apps`).
pub fn apps_bucket(lattice: &str) -> String {
    format!("lattice_{lattice}_apps")
}

/// JetStream object store bucket of lattice `lattice`'s component artifacts, named by the
/// sha256 of their bytes (`lattice_<lattice>_artifacts`).
pub fn artifacts_bucket(lattice: &str) -> String {
    format!("lattice_{lattice}_artifacts")
}

/// Name of the control service (NATS service API, `$SRV.PING.<name>`) of `lattice`.
pub fn control_service(lattice: &str) -> String {
    format!("lattice-{lattice}")
}

/// HTTP invocations of component `component` of app `app`:
/// `lattice.<lattice>.rpc.v1.http.<app>.<component>`.
pub fn http_invoke(lattice: &str, app: &str, component: &str) -> String {
    format!("lattice.{lattice}.rpc.{VERSION}.http.{app}.{component}")
}

/// HTTP invocations of component `component` of app `app` for its replicas on node `node` (the
/// node's id) only, outside the queue group: what a saturated node sends a request it has no
/// room for to: `lattice.<lattice>.rpc.v1.http.<app>.<component>.<node>`.
pub fn http_invoke_on(lattice: &str, app: &str, component: &str, node: &str) -> String {
    format!("{}.{node}", http_invoke(lattice, app, component))
}

/// The queue group of a component's replicas: `<app>.<component>`. NATS hands each invocation
/// to one member, which is the lattice's load balancing and failover.
pub fn replica_queue(app: &str, component: &str) -> String {
    format!("{app}.{component}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_carry_the_lattice_and_version() {
        assert_eq!(
            event("blue", HOST_HEARTBEAT),
            "lattice.blue.evt.v1.host_heartbeat"
        );
        assert_eq!(events("blue"), "lattice.blue.evt.v1.*");
        assert_eq!(control("blue"), "lattice.blue.ctl.v1");
        assert_eq!(
            http_invoke("blue", "shop", "web"),
            "lattice.blue.rpc.v1.http.shop.web"
        );
        assert_eq!(replica_queue("shop", "web"), "shop.web");
        assert_eq!(
            http_invoke_on("blue", "shop", "web", "NABC"),
            "lattice.blue.rpc.v1.http.shop.web.NABC"
        );
        assert_eq!(apps_bucket("blue"), "lattice_blue_apps");
        assert_eq!(artifacts_bucket("blue"), "lattice_blue_artifacts");
    }
}
