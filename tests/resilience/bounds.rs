//! Tests: manifests that ask for unbounded work, and starts that must not block each other.

use std::time::Duration;

use crate::common::example_wasm;
use crate::common::lattice::{standalone, write};

/// The YAML path of the first component's scaler `instances`.
const INSTANCES_FIELD: &str = "spec.components[0].traits[0].properties.instances";

/// Issue 12's manifest: 4e9 instances over spread entries that all weigh 0 (before the bound,
/// every node spun a core on it on every tick).
fn spinning_manifest(app: &str, wasm: &std::path::Path) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
spec:
  components:
    - name: web
      type: component
      properties:
        image: file://{wasm}
      traits:
        - type: spreadscaler
          properties:
            instances: 4000000000
            spread:
              - name: one
                weight: 0
              - name: two
                weight: 0
    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.2
      traits:
        - type: link
          properties:
            target:
              name: web
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            source:
              config:
                - name: default-http
                  properties:
                    path: /{app}
"#,
        wasm = wasm.display()
    )
}

#[test]
fn a_manifest_asking_for_4e9_instances_is_refused_at_deploy_naming_the_field() {
    let node = standalone("solo");
    let wasm = example_wasm("http-hello");
    let file = write(
        node.config_dir.parent().unwrap(),
        "spin.yaml",
        &spinning_manifest("spin", &wasm),
    );

    // The CLI.
    let out = node.cli(&["app", "deploy", &file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(INSTANCES_FIELD) && stderr.contains("100000"),
        "{stderr}"
    );

    // The node itself, asked by a client that does not validate first.
    let url = std::fs::read_to_string(node.data_dir.join("nats.url")).unwrap();
    let request = serde_json::json!({
        "manifest": spinning_manifest("spin", &wasm),
        "version": null,
        "images": {"web": "0".repeat(64)},
        "source": {"kind": "cli"},
    });
    let reply: serde_json::Value = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = async_nats::connect(url.trim()).await.unwrap();
        let message = client
            .request(
                "lattice.default.ctl.v1.app.deploy",
                serde_json::to_vec(&request).unwrap().into(),
            )
            .await
            .unwrap();
        serde_json::from_slice(&message.payload).unwrap()
    });
    assert_eq!(reply["success"], false, "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(message.contains(INSTANCES_FIELD), "{reply}");

    // In the config dir: one error naming the field, nothing stored, the node keeps serving.
    std::fs::copy(&file, node.config_dir.join("spin.yaml")).unwrap();
    node.wait_for_log(&["spin.yaml", INSTANCES_FIELD], Duration::from_secs(10));
    let apps = node.app_names().unwrap();
    assert!(!apps.contains(&"spin".to_owned()), "{apps:?}");
    node.write_manifest("hello.yaml", "hello", "http-hello", "/hello");
    node.wait_for_status("/hello", 200, Duration::from_secs(20));
}
