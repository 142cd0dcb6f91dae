//! A real OCI registry for the tests: Debian's `docker-registry` (the CNCF distribution
//! registry) on 127.0.0.1 with a temp storage dir and a config file written here, optionally
//! with htpasswd basic auth (a bcrypt entry made here); OCI image layouts written by hand and
//! copied in with `skopeo`; the `lattice` CLI with a chosen docker config.

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use crate::common::free_port;

/// A `docker-registry serve` this test started, stopped (by its pid) when dropped.
pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:<port>`: how references name it.
    pub host: String,
    /// Holds the config, the storage and the htpasswd file.
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry without auth, over plain HTTP; waits until it answers `/v2/`.
    pub fn start() -> Registry {
        Registry::start_with(None, None)
    }

    /// Starts a registry requiring basic auth of `(user, password)` when given, over HTTPS
    /// with `tls` (certificate and key, PEM) when given.
    pub fn start_with(auth: Option<(&str, &str)>, tls: Option<(&Path, &Path)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: lattice-test\n",
            dir.path().join("storage").display()
        );
        if let Some((cert, key)) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((user, password)) = auth {
            let hash = bcrypt::hash(password, 5).unwrap();
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lattice-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry (Debian package docker-registry; packaging/install-deps.sh)");
        let registry = Registry {
            child: Some(child),
            host,
            dir,
        };
        registry.wait_until_up();
        registry
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect(&self.host) {
                use std::io::Write as _;
                // A registry that accepts but does not answer must not hold the wait past its
                // deadline.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = write!(stream, "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host);
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry on {} did not answer: {}",
            self.host,
            self.log()
        );
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Stops it (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    /// The file holding blob `digest` (`sha256:<hex>`) in its storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// `--insecure-registry HOST:PORT` of this registry.
    pub fn insecure(&self) -> Vec<String> {
        vec!["--insecure-registry".into(), self.host.clone()]
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the `lattice` binary with `args` and `env` set (a 60 s limit); `DOCKER_CONFIG` is an
/// empty dir unless `env` sets it ([`crate::common::lattice_cli_with`]), so no credentials of
/// this machine are used.
pub fn lattice(args: &[&str], env: &[(&str, &Path)]) -> Output {
    crate::common::lattice_cli_with(args, env, Duration::from_secs(60))
}

/// A docker config dir whose `config.json` has a static `auths` entry of `host`.
pub fn docker_config(host: &str, user: &str, password: &str) -> tempfile::TempDir {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    dir
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// One blob of a hand-written image.
pub struct Blob<'a> {
    /// Its media type.
    pub media_type: &'a str,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) into `dir` holding
/// one image, tagged `tag`, of `config` and `layers`; returns the image manifest's digest.
/// This is no lattice code: the JSON is spelled out here as the image-layout spec describes it.
pub fn write_layout(dir: &Path, tag: &str, config: &Blob<'_>, layers: &[Blob<'_>]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = digest(bytes);
        std::fs::write(blobs.join(d.strip_prefix("sha256:").unwrap()), bytes).unwrap();
        d
    };
    let descriptor = |blob: &Blob<'_>, d: String| serde_json::json!({"mediaType": blob.media_type, "digest": d, "size": blob.bytes.len()});
    let config_descriptor = descriptor(config, put(&config.bytes));
    let layer_descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| descriptor(l, put(&l.bytes)))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_descriptor,
        "layers": layer_descriptors,
        "annotations": {"org.opencontainers.image.title": "written by hand"},
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    manifest_digest
}

/// `skopeo copy` of the image `tag` of the layout `dir` to `reference` (plain HTTP), its
/// digests kept.
pub fn skopeo_copy(dir: &Path, tag: &str, reference: &str) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{tag}", dir.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("running skopeo (Debian package skopeo; packaging/install-deps.sh)");
    assert!(
        out.status.success(),
        "skopeo copy to {reference} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
