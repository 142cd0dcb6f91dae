//! Registry credentials from docker `config.json` files (static `auths`), as `docker login`,
//! `oras login`, `wash` and `spin registry login` write them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Static credentials by registry host, from docker `config.json` files (format:
/// <https://github.com/docker/cli/blob/master/man/docker-config-json.5.md>, the `auths` object:
/// `auth` = base64 of `user:password`, or `username` and `password`). An `identitytoken` is an
/// OAuth2 refresh token to exchange at the registry's token service, not a bearer token: it is
/// not used (a warning says so), and the entry's `auth` or `username`/`password` are.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Registry host (`ghcr.io`, `127.0.0.1:5000`) → its auth; the first file naming a host wins.
    by_host: BTreeMap<String, RegistryAuth>,
}

/// Why a docker `config.json` text is not used. No variant holds a value of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Not JSON, or not of a docker config's shape.
    #[error("{category} at line {line}, column {column}")]
    Shape {
        /// What is wrong (serde's category: not JSON, not a docker config, cut short).
        category: &'static str,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// An `auth` that is not base64 of `user:password`.
    #[error("auths.{key}.auth: {reason}")]
    Auth {
        /// The `auths` key (a registry).
        key: String,
        /// Why.
        reason: &'static str,
    },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

impl Credentials {
    /// The files read, in order: `creds_file`, `$DOCKER_CONFIG/config.json`,
    /// `~/.docker/config.json` (a missing one is skipped).
    pub fn default_files(creds_file: Option<&Path>) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = creds_file.map(Path::to_path_buf).into_iter().collect();
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            files.push(PathBuf::from(dir).join("config.json"));
        } else if let Some(home) = std::env::var_os("HOME") {
            files.push(PathBuf::from(home).join(".docker/config.json"));
        }
        files
    }

    /// Reads `files`; one that does not exist, cannot be read or is no docker config is
    /// skipped (with a warning unless missing), unless it is `required`.
    ///
    /// # Errors
    /// The `required` file cannot be read or is not a docker config (the message names it).
    pub fn read(files: &[PathBuf], required: Option<&Path>) -> anyhow::Result<Credentials> {
        let mut credentials = Credentials::default();
        for file in files {
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e) if required == Some(file.as_path()) => {
                    anyhow::bail!("registry credentials {}: {e}", file.display())
                }
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(file = %file.display(), error = %e, "docker config not read; its registry credentials are not used");
                    }
                    continue;
                }
            };
            if let Err(e) = credentials.add(&text) {
                // Only the file asked for stops a node or command; a docker config of
                // another shape (a tool's own fields) is skipped, with a warning.
                if required == Some(file.as_path()) {
                    anyhow::bail!("registry credentials {}: {e}", file.display());
                }
                tracing::warn!(file = %file.display(), error = %e, "docker config not read; its registry credentials are not used");
            }
        }
        Ok(credentials)
    }

    /// Adds the `auths` of one docker `config.json` text, keeping hosts already known.
    ///
    /// # Errors
    /// Not JSON of that shape, or an `auth` that is not base64 of `user:password`. No message
    /// quotes the file's values (they are secrets): serde's own text does, so only its
    /// category and position are kept.
    pub fn add(&mut self, text: &str) -> Result<(), CredentialsError> {
        let config: DockerConfig =
            serde_json::from_str(text).map_err(|e| CredentialsError::Shape {
                category: match e.classify() {
                    serde_json::error::Category::Io => "unreadable",
                    serde_json::error::Category::Syntax => "not JSON",
                    serde_json::error::Category::Data => "not a docker config",
                    serde_json::error::Category::Eof => "JSON cut short",
                },
                line: e.line(),
                column: e.column(),
            })?;
        for (key, entry) in config.auths {
            if entry.identitytoken.as_ref().is_some_and(|t| !t.is_empty()) {
                tracing::warn!(
                    registry = host_of(&key),
                    "docker config: an identitytoken (OAuth2 refresh token) is not used; the entry's auth or username/password are"
                );
            }
            let bad_auth = |reason: &'static str| CredentialsError::Auth {
                key: key.clone(),
                reason,
            };
            let auth = if let Some(encoded) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| bad_auth("not base64"))?;
                let decoded = String::from_utf8(decoded).map_err(|_| bad_auth("not UTF-8"))?;
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| bad_auth("not user:password"))?;
                RegistryAuth::Basic(user.to_owned(), password.to_owned())
            } else if let (Some(user), Some(password)) = (entry.username, entry.password) {
                RegistryAuth::Basic(user, password)
            } else {
                continue;
            };
            self.by_host.entry(host_of(&key)).or_insert(auth);
        }
        Ok(())
    }

    /// The auth for `registry` (a reference's registry); anonymous when none is known.
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        let docker_hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
        self.by_host
            .get(registry)
            .or_else(|| {
                docker_hub
                    .contains(&registry)
                    .then(|| docker_hub.iter().find_map(|h| self.by_host.get(*h)))
                    .flatten()
            })
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }
}

/// The host of an `auths` key: `https://index.docker.io/v1/` → `index.docker.io`.
fn host_of(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest).to_owned()
}
