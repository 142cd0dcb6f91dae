//! Unit tests of manifest parsing: both wadm link forms, and errors naming their field.

use super::*;
use crate::providers::keyvalue::{BucketSpec, KeyValueLink, KvInterfaces};

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
        "ghcr.io/hello:a:b",
    ));
    assert!(e.reason.contains("nor an OCI reference"), "{e}");

    // A mistyped path is not a Docker Hub image; oci:// says it is one.
    for image in ["hello", "build/hello", "library/hello:1"] {
        let e = parse_err(&HELLO.replace("file://./build/http_hello_world_s.wasm", image));
        assert!(e.reason.contains("neither a path"), "{image}: {e}");
    }
    for image in [
        "oci://hello:1",
        "localhost/hello:1",
        "127.0.0.1:5000/hello:1",
    ] {
        parse_ok(&HELLO.replace("file://./build/http_hello_world_s.wasm", image));
    }

    let e = parse_err(&HELLO.replace("  name: hello-world\n", ""));
    assert_eq!(e.field, "metadata");
    assert!(e.reason.contains("missing field `name`"), "{e}");
}

const CAPABILITIES: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: kv-counter
spec:
  components:
    - name: counter
      type: component
      properties:
        image: ./counter.wasm
        config:
          - name: shared
            properties:
              greeting: hello
              colour: blue
          - name: override
            properties:
              colour: red
      traits:
        - type: spreadscaler
          properties:
            instances: 2
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store, atomics]
            target:
              name: kvnats
              config:
                - name: bucket-config
                  properties:
                    bucket: counters
                    enable_bucket_auto_create: 'true'
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store]
            name: local
            target: kvsled
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [outgoing-handler]
            target: client
            target_config:
              - name: hosts
                properties:
                  allowed_hosts: "127.0.0.1:8080, *.example.com"
    - name: kvnats
      type: capability
      properties:
        image: ghcr.io/wasmcloud/keyvalue-nats:0.3.1
    - name: kvsled
      type: capability
      properties:
        image: wasmcloud+builtin://keyvalue-sled
    - name: client
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-client:0.12.0
"#;

#[test]
fn component_links_grant_buckets_hosts_and_config_in_both_forms() {
    let m = parse_ok(CAPABILITIES);
    let c = &m.components[0];
    assert_eq!(
        c.config,
        BTreeMap::from([
            ("colour".to_owned(), "red".to_owned()),
            ("greeting".to_owned(), "hello".to_owned()),
        ])
    );
    assert_eq!(
        c.keyvalue,
        BTreeMap::from([
            (
                "default".to_owned(),
                KeyValueLink {
                    bucket: BucketSpec::Nats {
                        bucket: Name::new("counters").unwrap(),
                        auto_create: true
                    },
                    interfaces: KvInterfaces {
                        store: true,
                        atomics: true,
                        batch: false
                    },
                }
            ),
            (
                "local".to_owned(),
                KeyValueLink {
                    bucket: BucketSpec::Sled {
                        bucket: Name::new("kv-counter").unwrap()
                    },
                    interfaces: KvInterfaces {
                        store: true,
                        ..KvInterfaces::default()
                    },
                }
            ),
        ])
    );
    let allows = |uri: &str| c.allowed_hosts.allows_uri(&uri.parse().unwrap());
    assert!(allows("http://127.0.0.1:8080/x"));
    assert!(allows("https://api.example.com/"));
    assert!(!allows("http://127.0.0.1:8081/"));
    assert!(
        m.warnings.iter().all(|w| !w.contains("traits[")),
        "{:?}",
        m.warnings
    );
}

#[test]
fn a_named_config_without_properties_refers_to_one_defined_in_the_manifest() {
    let text = CAPABILITIES.replace(
        "          - name: override\n            properties:\n              colour: red\n",
        "          - name: bucket-config\n",
    );
    let m = parse_ok(&text);
    assert_eq!(m.components[0].config["bucket"], "counters");
    let e = parse_err(&CAPABILITIES.replace(
        "          - name: override\n            properties:\n              colour: red\n",
        "          - name: vault\n",
    ));
    assert_eq!(e.field, "spec.components[0].properties.config[1]");
    assert!(e.reason.contains("\"vault\""), "{e}");
}

#[test]
fn bad_component_links_name_their_field() {
    let e = parse_err(&CAPABILITIES.replace("                    bucket: counters\n", ""));
    assert_eq!(
        e.field,
        "spec.components[0].traits[1].properties.target.config"
    );
    assert!(e.reason.contains("bucket"), "{e}");

    let e = parse_err(&CAPABILITIES.replace("'true'", "'yes'"));
    assert_eq!(
        e.field,
        "spec.components[0].traits[1].properties.target.config.enable_bucket_auto_create"
    );

    let e = parse_err(&CAPABILITIES.replace("            name: local\n", ""));
    assert_eq!(e.field, "spec.components[0].traits[2].properties.name");
    assert!(e.reason.contains("\"default\""), "{e}");

    let e = parse_err(&CAPABILITIES.replace("target: kvsled", "target: counter"));
    assert_eq!(e.field, "spec.components[0].traits[2].properties.target");
    assert!(e.reason.contains("between components"), "{e}");

    let e = parse_err(&CAPABILITIES.replace("target: kvsled", "target: nothing"));
    assert!(e.reason.contains("not a capability"), "{e}");

    let e = parse_err(&CAPABILITIES.replace("target: client", "target: kvsled"));
    assert_eq!(e.field, "spec.components[0].traits[3].properties");
    assert!(e.reason.contains("wasi:http/{outgoing-handler}"), "{e}");

    let e = parse_err(&CAPABILITIES.replace("127.0.0.1:8080", "127.0.0.1:http"));
    assert_eq!(
        e.field, "spec.components[0].traits[3].properties.target_config.allowed_hosts",
        "the older form's errors name target_config"
    );
    let e = parse_err(&CAPABILITIES.replace("[outgoing-handler]", "[]"));
    assert_eq!(
        e.field,
        "spec.components[0].traits[3].properties.interfaces"
    );

    let e = parse_err(&CAPABILITIES.replace("interfaces: [store]", "interfaces: [watcher]"));
    assert_eq!(
        e.field,
        "spec.components[0].traits[2].properties.interfaces"
    );
    let e = parse_err(&CAPABILITIES.replace("interfaces: [store]", "interfaces: []"));
    assert_eq!(
        e.field,
        "spec.components[0].traits[2].properties.interfaces"
    );
    assert!(e.reason.contains("store, atomics, batch"), "{e}");

    let e = parse_err(
        &CAPABILITIES.replace("bucket: counters", &format!("bucket: {}", "b".repeat(129))),
    );
    assert_eq!(
        e.field,
        "spec.components[0].traits[1].properties.target.config.bucket"
    );
    assert!(e.reason.contains("at most 128"), "{e}");

    // The lattice's own buckets, in a keyvalue-nats or a keyvalue-sled link: refused, naming
    // the app, component, link and why.
    for (from, link) in [
        ("bucket: counters", "default"),
        (
            "            name: local\n            target: kvsled\n",
            "local",
        ),
    ] {
        let to = if link == "default" {
            "bucket: lattice_default_apps".to_owned()
        } else {
            "            name: local\n            target:\n              name: kvsled\n              \
             config:\n                - name: b\n                  properties:\n                    \
             bucket: LATTICE_default_artifacts\n"
                .to_owned()
        };
        let text = CAPABILITIES.replace(from, &to);
        assert_ne!(text, CAPABILITIES, "{from}");
        let e = parse_err(&text);
        assert!(e.field.ends_with(".target.config.bucket"), "{link}: {e}");
        assert!(
            e.reason
                .contains("app \"kv-counter\", component \"counter\"")
                && e.reason.contains(&format!("keyvalue link {link:?}"))
                && e.reason.contains("reserved for the lattice's own buckets"),
            "{e}"
        );
    }
    // Link names are what `store.open` matches, never a NATS token: any text, as before
    // names were checked (stored manifests with `cache.v1` keep parsing).
    let m = parse_ok(&CAPABILITIES.replace("name: local", "name: cache.v1"));
    assert!(m.components[0].keyvalue.contains_key("cache.v1"));

    let e = parse_err(&CAPABILITIES.replace(
        "wasmcloud+builtin://keyvalue-sled",
        "ghcr.io/wasmcloud/keyvalue-redis:0.28",
    ));
    assert_eq!(e.field, "spec.components[2].properties.image");
}

#[test]
fn an_http_client_link_without_allowed_hosts_allows_nothing_and_says_so() {
    let text = CAPABILITIES.replace(
        "                  allowed_hosts: \"127.0.0.1:8080, *.example.com\"\n",
        "                  timeout: 5s\n",
    );
    let m = parse_ok(&text);
    assert!(m.components[0].allowed_hosts.is_empty());
    let w = m.warnings.join("\n");
    assert!(w.contains("no allowed_hosts"), "{w}");
    assert!(w.contains("properties.target_config.timeout"), "{w}");
}

#[test]
fn unknown_fields_in_a_target_are_warned_and_digest_images_are_built_in() {
    let text = CAPABILITIES
        .replace(
            "              name: kvnats\n",
            "              name: kvnats\n              secrets: []\n",
        )
        .replace(
            "ghcr.io/wasmcloud/keyvalue-nats:0.3.1",
            "ghcr.io/wasmcloud/keyvalue-nats@sha256:0123",
        )
        .replace("'true'", "'TRUE'");
    let m = parse_ok(&text);
    let w = m.warnings.join("\n");
    assert!(
        w.contains("spec.components[0].traits[1].properties.target.secrets: unknown field"),
        "{w}"
    );
    assert_eq!(
        m.components[0].keyvalue["default"].bucket,
        BucketSpec::Nats {
            bucket: Name::new("counters").unwrap(),
            auto_create: true
        }
    );
    let e = parse_err(&CAPABILITIES.replace("target: kvsled", "target: [kvsled]"));
    assert_eq!(e.field, "spec.components[0].traits[2].properties.target");
}

/// HELLO with the spreadscaler's properties replaced by `props` (lines indented by 12 spaces).
fn with_scaler(props: &str) -> String {
    HELLO.replace("            instances: 1\n", props)
}

#[test]
fn instances_beyond_the_bound_are_refused_naming_the_field() {
    let field = "spec.components[0].traits[0].properties.instances";
    for n in ["4000000000", "100001", "5000000000"] {
        let e = parse_err(&with_scaler(&format!("            instances: {n}\n")));
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains(n) && e.reason.contains("100000"), "{e}");
    }
    // The weight-0 manifest of issue 12.
    let e = parse_err(&with_scaler(
        "            instances: 4000000000\n            spread:\n              - name: a\n                weight: 0\n              - name: b\n                weight: 0\n",
    ));
    assert_eq!(e.field, field, "{e}");
    let daemon = with_scaler("            instances: 100001\n")
        .replace("type: spreadscaler", "type: daemonscaler");
    assert_eq!(parse_err(&daemon).field, field);

    let m = parse_ok(&with_scaler("            instances: 100000\n"));
    assert_eq!(
        m.components[0].scaler,
        Scaler::Spread {
            instances: MAX_INSTANCES,
            spread: vec![]
        }
    );
}

#[test]
fn weights_and_spread_entries_are_bounded() {
    let e = parse_err(&with_scaler(
        "            instances: 2\n            spread:\n              - name: a\n              - name: b\n                weight: 1000001\n",
    ));
    assert_eq!(
        e.field,
        "spec.components[0].traits[0].properties.spread[1].weight"
    );
    assert!(e.reason.contains("1000000"), "{e}");
    let e = parse_err(&with_scaler(
        "            instances: 2\n            spread:\n              - name: a\n                weight: 4294967296\n",
    ));
    assert_eq!(
        e.field,
        "spec.components[0].traits[0].properties.spread[0].weight"
    );

    let entries: String = (0..=MAX_SPREAD_ENTRIES)
        .map(|k| format!("              - name: s{k}\n"))
        .collect();
    let e = parse_err(&with_scaler(&format!(
        "            instances: 2\n            spread:\n{entries}"
    )));
    assert_eq!(e.field, "spec.components[0].traits[0].properties.spread");
    assert!(e.reason.contains("101 entries"), "{e}");

    let m = parse_ok(&with_scaler(
        "            instances: 2\n            spread:\n              - name: a\n                weight: 1000000\n",
    ));
    assert!(
        matches!(&m.components[0].scaler, Scaler::Spread { spread, .. } if spread[0].weight == Some(MAX_WEIGHT))
    );
}

#[test]
fn every_example_manifest_parses_within_the_bounds() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let dir = entry.unwrap().path();
        for file in ["wadm.yaml", "wadm-sled.yaml"] {
            let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
                continue;
            };
            parse(&text, &dir).unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()));
            seen += 1;
        }
    }
    assert!(seen >= 10, "{seen} example manifests");
}

/// [`HELLO`] with `config` entries (YAML lines of properties, 14 spaces in) on its component.
fn hello_with_config(properties: &str) -> String {
    let with = HELLO.replace(
        "        image: file://./build/http_hello_world_s.wasm\n",
        &format!(
            "        image: file://./build/http_hello_world_s.wasm\n        config:\n          - name: tuning\n            properties:\n{properties}"
        ),
    );
    assert_ne!(with, HELLO);
    with
}

#[test]
fn instance_reuse_keys_are_read_without_warnings() {
    let m = parse_ok(&hello_with_config(
        "              lattice.max-instance-reuse-count: \"128\"\n              lattice.max-instance-concurrent-reuse-count: \"1\"\n              lattice.idle-instance-timeout: 5s\n              lattice.retry-safe: \"true\"\n",
    ));
    let config = &m.components[0].config;
    assert_eq!(
        crate::host::Reuse::from_config(config),
        Ok(Some(crate::host::Reuse {
            max_requests: 128,
            idle_timeout: std::time::Duration::from_secs(5)
        }))
    );
    assert!(
        m.warnings.iter().all(|w| !w.contains("lattice.")),
        "{:?}",
        m.warnings
    );
}

#[test]
fn bad_instance_reuse_values_are_refused_naming_app_component_and_key() {
    for (line, key, reason) in [
        (
            "lattice.max-instance-reuse-count: \"0\"",
            "lattice.max-instance-reuse-count",
            "must be from 1",
        ),
        (
            "lattice.max-instance-reuse-count: lots",
            "lattice.max-instance-reuse-count",
            "not a whole number",
        ),
        (
            "lattice.max-instance-concurrent-reuse-count: \"16\"",
            "lattice.max-instance-concurrent-reuse-count",
            "only 1 is supported",
        ),
        (
            "lattice.idle-instance-timeout: forever",
            "lattice.idle-instance-timeout",
            "not a duration",
        ),
    ] {
        let error = parse_err(&hello_with_config(&format!("              {line}\n")));
        assert_eq!(
            error.field, "spec.components[0].properties.config",
            "{line}"
        );
        for needle in ["app hello-world", "component http-component", key, reason] {
            assert!(error.reason.contains(needle), "{line}: {error}");
        }
    }
}

#[test]
fn an_unknown_lattice_key_is_warned_about() {
    let m = parse_ok(&hello_with_config(
        "              lattice.max-instance-reuse: \"8\"\n              greeting: hi\n",
    ));
    let warned: Vec<_> = m
        .warnings
        .iter()
        .filter(|w| w.contains("lattice.max-instance-reuse "))
        .collect();
    assert_eq!(warned.len(), 1, "{:?}", m.warnings);
    assert!(
        warned[0].contains("lattice.max-instance-reuse-count"),
        "{}",
        warned[0]
    );
    assert!(m.warnings.iter().all(|w| !w.contains("greeting")));
}

#[test]
fn oci_references_are_images() {
    for (written, kept) in [
        (
            "ghcr.io/wasmcloud/components/http-hello-world-rust:0.1.0",
            "ghcr.io/wasmcloud/components/http-hello-world-rust:0.1.0",
        ),
        ("oci://127.0.0.1:5000/hello:v1", "127.0.0.1:5000/hello:v1"),
        (
            "localhost:5000/hello@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "localhost:5000/hello@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
    ] {
        let m = parse(
            &HELLO.replace("file://./build/http_hello_world_s.wasm", written),
            Path::new("/base"),
        )
        .unwrap();
        assert_eq!(
            m.components[0].image,
            Image::Oci(kept.to_owned()),
            "{written}"
        );
    }
}
