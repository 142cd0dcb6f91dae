//! Unit tests of manifest parsing: both wadm link forms, and errors naming their field.

use super::*;

const HELLO: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: hello-world
  annotations:
    version: v0.0.1
    description: 'HTTP hello world demo'
spec:
  components:
    - name: http-component
      type: component
      properties:
        image: file://./build/http_hello_world_s.wasm
      traits:
        - type: spreadscaler
          properties:
            instances: 1
    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.2
      traits:
        - type: link
          properties:
            target:
              name: http-component
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            source:
              config:
                - name: default-http
                  properties:
                    address: 0.0.0.0:8000
"#;

fn parse_ok(text: &str) -> Manifest {
    parse(text, Path::new("/apps")).unwrap()
}

fn parse_err(text: &str) -> FieldError {
    parse(text, Path::new("/apps")).unwrap_err()
}

#[test]
fn wasmcloud_hello_world_parses() {
    let m = parse_ok(HELLO);
    assert_eq!(m.name, "hello-world");
    assert_eq!(m.version.as_deref(), Some("v0.0.1"));
    assert_eq!(m.components.len(), 1);
    assert_eq!(
        m.components[0].image,
        Image::File(PathBuf::from("/apps/./build/http_hello_world_s.wasm"))
    );
    assert_eq!(
        m.components[0].scaler,
        Scaler::Spread {
            instances: 1,
            spread: vec![]
        }
    );
    assert_eq!(
        m.http_links,
        vec![HttpLink {
            target: "http-component".into(),
            address: Some("0.0.0.0:8000".parse().unwrap()),
            host: None,
            path: None,
            field: "spec.components[1].traits[0].properties".into(),
        }]
    );
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
}

#[test]
fn older_link_form_with_source_config() {
    let text = HELLO.replace(
        "            target:\n              name: http-component\n",
        "            target: http-component\n",
    )
    .replace(
        "            source:\n              config:\n                - name: default-http\n                  properties:\n                    address: 0.0.0.0:8000\n",
        "            source_config:\n              - name: default-http\n                properties:\n                  path: /hello\n                  host: Example.com\n",
    );
    let m = parse_ok(&text);
    assert_eq!(m.http_links[0].target, "http-component");
    assert_eq!(m.http_links[0].path.as_deref(), Some("/hello"));
    assert_eq!(m.http_links[0].host.as_deref(), Some("Example.com"));
    assert_eq!(m.http_links[0].address, None);
}

#[test]
fn unsupported_things_are_warnings_naming_the_field() {
    let text = HELLO
        .replace(
            "spec:\n",
            "spec:\n  policies:\n    - name: p\n      type: policy.secret.wasmcloud.dev/v1alpha1\n",
        )
        .replace(
            "        - type: spreadscaler\n",
            "        - type: autoscaler\n          properties: {}\n        - type: spreadscaler\n",
        )
        .replace(
            "            instances: 1\n",
            "            instances: 1\n            colour: blue\n",
        );
    let m = parse_ok(&text);
    let w = m.warnings.join("\n");
    assert!(w.contains("spec.policies"), "{w}");
    assert!(
        w.contains("spec.components[0].traits[0].type: trait \"autoscaler\""),
        "{w}"
    );
    assert!(
        w.contains("spec.components[0].traits[1].properties.colour: unknown field"),
        "{w}"
    );
}

#[test]
fn errors_name_the_yaml_path() {
    let e = parse_err("apiVersion: [unclosed");
    assert_eq!(e.field, ".");
    assert!(e.reason.contains("invalid YAML"), "{e}");

    let e = parse_err(&HELLO.replace(
        "        image: file://./build/http_hello_world_s.wasm\n",
        "",
    ));
    assert_eq!(
        e.to_string(),
        "spec.components[0].properties.image: missing"
    );

    let e = parse_err(&HELLO.replace("instances: 1", "instances: many"));
    assert_eq!(e.field, "spec.components[0].traits[0].properties.instances");

    let e = parse_err(&HELLO.replace(
        "              name: http-component",
        "              name: nobody",
    ));
    assert_eq!(e.field, "spec.components[1].traits[0].properties.target");
    assert!(e.reason.contains("\"nobody\""), "{e}");

    let e = parse_err(&HELLO.replace("kind: Application", "kind: Deployment"));
    assert_eq!(e.field, "kind");

    let e = parse_err(&HELLO.replace("address: 0.0.0.0:8000", "address: localhost"));
    assert_eq!(
        e.field,
        "spec.components[1].traits[0].properties.source.config.address"
    );

    let e = parse_err(&HELLO.replace(
        "ghcr.io/wasmcloud/http-server:0.23.2",
        "ghcr.io/wasmcloud/keyvalue-redis:0.28",
    ));
    assert_eq!(e.field, "spec.components[1].properties.image");

    let e = parse_err(&HELLO.replace(
        "file://./build/http_hello_world_s.wasm",
        "ghcr.io/wasmcloud/components/hello:0.1",
    ));
    assert!(e.reason.contains("OCI"), "{e}");

    let e = parse_err(&HELLO.replace("  name: hello-world\n", ""));
    assert_eq!(e.field, "metadata");
    assert!(e.reason.contains("missing field `name`"), "{e}");
}
