//! Tests of the layouts accepted, the docker config format and references.

use base64::Engine as _;

use super::*;

fn manifest(config: &str, layers: &[(&str, u64)]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(media_type, size)| {
            serde_json::json!({"mediaType": media_type, "size": size,
                "digest": format!("sha256:{}", "a".repeat(64))})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config, "size": 2, "digest": format!("sha256:{}", "b".repeat(64))},
        "layers": layers,
    }))
    .unwrap()
}

#[test]
fn the_wasm_layouts_in_use_are_accepted() {
    for (config, layer) in [
        (WASM_CONFIG, WASM_LAYER),
        (
            "application/vnd.wasmcloud.actor.archive.config",
            WASMCLOUD_LAYER,
        ),
        (
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar",
        ),
    ] {
        let found = wasm_layer("r", &manifest(config, &[(layer, 10)])).unwrap();
        assert_eq!(found.media_type, layer);
    }
    // A wasm layer beside other layers (wash's annotations, a signature) is the one.
    let found = wasm_layer(
        "r",
        &manifest(WASM_CONFIG, &[("text/plain", 1), (WASM_LAYER, 10)]),
    )
    .unwrap();
    assert_eq!(found.media_type, WASM_LAYER);
}

#[test]
fn another_layout_is_refused_naming_its_media_types() {
    let e = wasm_layer(
        "reg/app:1",
        &manifest(
            "application/vnd.oci.image.config.v1+json",
            &[("a/b", 1), ("c/d", 1)],
        ),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, OciError::MediaType { .. }), "{text}");
    assert!(text.starts_with("reg/app:1: wrong media type"), "{text}");
    assert!(text.contains("layers [a/b, c/d]"), "{text}");
    let index = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []});
    let e = wasm_layer("reg/app:1", &serde_json::to_vec(&index).unwrap()).unwrap_err();
    assert!(
        e.to_string()
            .contains("application/vnd.oci.image.index.v1+json"),
        "{e}"
    );
}

#[test]
fn a_layer_declared_too_large_is_refused_before_download() {
    let e = wasm_layer(
        "reg/big:1",
        &manifest(WASM_CONFIG, &[(WASM_LAYER, MAX_COMPONENT_BYTES + 1)]),
    )
    .unwrap_err();
    assert!(matches!(e, OciError::TooLarge { .. }), "{e}");
    assert!(e.to_string().starts_with("reg/big:1: too large"), "{e}");
}

#[test]
fn docker_config_auths_are_read_by_host() {
    let mut creds = Credentials::default();
    let auth = base64::engine::general_purpose::STANDARD.encode("ann:secret");
    creds
        .add(&format!(
            r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{auth}"}},
               "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}}}},
               "credsStore": "desktop"}}"#
        ))
        .unwrap();
    assert_eq!(
        creds.for_registry("127.0.0.1:5000"),
        RegistryAuth::Basic("ann".into(), "secret".into())
    );
    assert_eq!(
        creds.for_registry("docker.io"),
        RegistryAuth::Basic("bob".into(), "pw".into())
    );
    assert_eq!(creds.for_registry("ghcr.io"), RegistryAuth::Anonymous);
    assert!(creds.add(r#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
}

#[test]
fn an_identitytoken_is_not_sent_the_auth_is() {
    let mut creds = Credentials::default();
    let auth = base64::engine::general_purpose::STANDARD.encode("ann:secret");
    creds
        .add(&format!(
            r#"{{"auths": {{"acr.example": {{"auth": "{auth}", "identitytoken": "refresh-me"}},
               "only-token.example": {{"identitytoken": "refresh-me"}}}}}}"#
        ))
        .unwrap();
    assert_eq!(
        creds.for_registry("acr.example"),
        RegistryAuth::Basic("ann".into(), "secret".into())
    );
    assert_eq!(
        creds.for_registry("only-token.example"),
        RegistryAuth::Anonymous
    );
}

#[test]
fn credential_errors_quote_no_value() {
    let mut creds = Credentials::default();
    let secret = base64::engine::general_purpose::STANDARD.encode("ann:hunter2");
    for text in [
        format!(r#"{{"auths": {{"reg": {{"auth": ["{secret}"]}}}}}}"#),
        format!(r#"{{"auths": {{"reg": {{"auth": "{secret}", "username": 7}}}}}}"#),
        format!(r#"{{"auths": "{secret}"}}"#),
        format!(r#"{{"auths": {{"reg": {{"auth": "{secret}!"}}}}}}"#),
    ] {
        let e = creds.add(&text).unwrap_err().to_string();
        assert!(!e.contains(&secret) && !e.contains("hunter2"), "{e}");
    }
    let e = creds.add("{\"auths\": 1}").unwrap_err();
    assert!(
        matches!(
            e,
            CredentialsError::Shape {
                category: "not a docker config",
                line: 1,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn references_parse_with_or_without_oci_scheme() {
    let r = parse_reference("oci://127.0.0.1:5000/hello:v1").unwrap();
    assert_eq!(r.registry(), "127.0.0.1:5000");
    assert_eq!(r.repository(), "hello");
    assert_eq!(r.tag(), Some("v1"));
    let pin = OciPin {
        reference: "ghcr.io/wasmcloud/components/x:0.1.0".into(),
        digest: format!("sha256:{}", "c".repeat(64)),
    };
    let pinned = pin.pinned().unwrap();
    assert_eq!(pinned.digest(), Some(pin.digest.as_str()));
    assert_eq!(pinned.repository(), "wasmcloud/components/x");
    assert!(matches!(
        parse_reference("ghcr.io/x:a:b"),
        Err(OciError::BadReference { .. })
    ));
}

#[test]
fn only_components_count_as_components() {
    assert!(is_component(b"\0asm\x0d\x00\x01\x00rest"));
    assert!(!is_component(b"\0asm\x01\x00\x00\x00"));
    assert!(!is_component(b"tar"));
}

#[test]
fn only_the_file_asked_for_must_be_a_readable_docker_config() {
    let dir = tempfile::tempdir().unwrap();
    let asked = dir.path().join("creds.json");
    let other = dir.path().join("other.json");
    std::fs::write(&other, "not json").unwrap();
    let e = Credentials::read(&[asked.clone(), other.clone()], Some(&asked)).unwrap_err();
    assert!(e.to_string().contains("creds.json"), "{e}");
    std::fs::write(
        &asked,
        r#"{"auths": {"reg:5000": {"username": "u", "password": "p"}}}"#,
    )
    .unwrap();
    let creds = Credentials::read(&[asked.clone(), other], Some(&asked)).unwrap();
    assert_eq!(
        creds.for_registry("reg:5000"),
        RegistryAuth::Basic("u".into(), "p".into())
    );
    std::fs::write(&asked, "not json").unwrap();
    assert!(Credentials::read(std::slice::from_ref(&asked), Some(&asked)).is_err());
}

#[test]
fn a_pin_of_a_digest_reference_names_its_digest_once() {
    let digest = format!("sha256:{}", "c".repeat(64));
    let by_tag = OciPin {
        reference: "reg:5000/x:v1".into(),
        digest: digest.clone(),
    };
    assert_eq!(by_tag.shown(), format!("reg:5000/x:v1@{digest}"));
    let by_digest = OciPin {
        reference: format!("reg:5000/x@{digest}"),
        digest: digest.clone(),
    };
    assert_eq!(by_digest.shown(), format!("reg:5000/x@{digest}"));
}

#[tokio::test]
async fn a_sha512_reference_is_an_unsupported_algorithm_not_a_mismatch() {
    let registry = Registry::anonymous().unwrap();
    let reference = format!("127.0.0.1:9/x@sha512:{}", "d".repeat(128));
    let e = registry.pull(&reference).await.unwrap_err();
    assert!(
        matches!(&e, OciError::UnsupportedDigest { algorithm, .. } if algorithm == "sha512"),
        "{e}"
    );
}

#[test]
fn a_ca_file_that_holds_no_certificate_stops_the_client_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("garbage.pem", "not a certificate\n"),
        (
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let settings = RegistrySettings {
            ca_files: vec![file],
            ..RegistrySettings::default()
        };
        let e = Registry::new(&settings).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("--ca-file {}", dir.path().join(name).display())),
            "{e:#}"
        );
    }
}

#[tokio::test]
async fn only_the_allowed_registries_are_pulled_from() {
    let settings = RegistrySettings {
        allowed: vec!["127.0.0.1:9".into(), "docker.io".into()],
        ..RegistrySettings::default()
    };
    let registry = Registry::new(&settings).unwrap();
    let e = registry.pull("ghcr.io/x/y:1").await.unwrap_err();
    assert!(matches!(e, OciError::NotAllowed { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("ghcr.io/x/y:1: registry ghcr.io is not allowed"),
        "{e}"
    );
    // Allowed: tried (nothing listens there), not refused.
    let e = registry.pull("127.0.0.1:9/x:1").await.unwrap_err();
    assert!(!matches!(e, OciError::NotAllowed { .. }), "{e}");
    let pin = OciPin {
        reference: "index.docker.io/library/x:1".into(),
        digest: format!("sha256:{}", "e".repeat(64)),
    };
    let e = Registry::new(&RegistrySettings {
        allowed: vec!["127.0.0.1:9".into()],
        ..RegistrySettings::default()
    })
    .unwrap()
    .pull_pinned(&pin)
    .await
    .unwrap_err();
    assert!(matches!(e, OciError::NotAllowed { .. }), "{e}");
}

/// A registry on loopback that answers every request from `answers` (path → content type and
/// body; anything else 404) over plain HTTP, one request per connection.
async fn fake_registry(answers: Vec<(String, &'static str, Vec<u8>)>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (status, content_type, body) = match answers.iter().find(|(p, _, _)| *p == path) {
                Some((_, content_type, body)) => ("200 OK", *content_type, body.clone()),
                None if path == "/v2/" => ("200 OK", "application/json", b"{}".to_vec()),
                None => (
                    "404 Not Found",
                    "application/json",
                    br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#
                        .to_vec(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
        }
    });
    host
}

#[tokio::test]
async fn a_layer_longer_than_its_manifest_declares_is_refused_as_such() {
    let wasm = b"\0asm\x0d\x00\x01\x00 and more than declared".to_vec();
    let layer_digest = format!("sha256:{}", hex(&Sha256::digest(&wasm)));
    let config = b"{}".to_vec();
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": WASM_CONFIG, "size": config.len(),
            "digest": format!("sha256:{}", hex(&Sha256::digest(&config)))},
        "layers": [{"mediaType": WASM_LAYER, "size": 8, "digest": layer_digest}],
    }))
    .unwrap();
    let host = fake_registry(vec![
        ("/v2/x/manifests/1".into(), OCI_MANIFEST, body),
        (
            format!("/v2/x/blobs/{layer_digest}"),
            "application/octet-stream",
            wasm,
        ),
    ])
    .await;
    let registry = Registry::new(&RegistrySettings {
        insecure: vec![host.clone()],
        ..RegistrySettings::default()
    })
    .unwrap();
    let reference = format!("{host}/x:1");
    let e = registry.pull(&reference).await.unwrap_err();
    assert!(
        matches!(&e, OciError::LongerThanDeclared { declared: 8, .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("{reference}: layer sha256:")),
        "{e}"
    );

    // A manifest whose layer the registry does not have: that blob, not the manifest, unknown.
    let e = registry
        .pull(&format!("{host}/x:missing"))
        .await
        .unwrap_err();
    assert!(matches!(&e, OciError::NotFound { .. }), "{e}");
}

#[tokio::test]
async fn a_blob_the_registry_lacks_is_named_not_the_manifest() {
    let config = b"{}".to_vec();
    let missing = format!("sha256:{}", "f".repeat(64));
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": WASM_CONFIG, "size": config.len(),
            "digest": format!("sha256:{}", hex(&Sha256::digest(&config)))},
        "layers": [{"mediaType": WASM_LAYER, "size": 8, "digest": missing}],
    }))
    .unwrap();
    let host = fake_registry(vec![("/v2/x/manifests/1".into(), OCI_MANIFEST, body)]).await;
    let registry = Registry::new(&RegistrySettings {
        insecure: vec![host.clone()],
        ..RegistrySettings::default()
    })
    .unwrap();
    let e = registry.pull(&format!("{host}/x:1")).await.unwrap_err();
    assert!(
        matches!(&e, OciError::BlobNotFound { digest, .. } if *digest == missing),
        "{e}"
    );
}
