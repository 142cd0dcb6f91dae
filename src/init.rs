//! `lattice init DIR`: writes a starter config dir, `lattice.toml` with every key of `lattice up`
//! commented and one example manifest, and overwrites nothing.
//!
//! The `lattice.toml` written is [`EXAMPLE_CONFIG`], the text of `config/lattice.toml.example`,
//! which the Debian package also installs as `/etc/lattice/lattice.toml`: one source for both.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::CONFIG_FILE_NAME;

/// The commented example node config (`config/lattice.toml.example`): every key of
/// `lattice.toml`, each a flag of `lattice up`, with its default or an example value.
pub const EXAMPLE_CONFIG: &str = include_str!("../config/lattice.toml.example");

/// File name of the example manifest `lattice init` writes.
pub const EXAMPLE_MANIFEST_NAME: &str = "http-hello.yaml";

/// The example manifest (wadm `core.oam.dev/v1beta1` Application): the repository's
/// `examples/http-hello` component on every path of the shared ingress, its wasm file
/// (`http_hello.wasm`) next to the manifest. Its comments say how to get that file.
pub const EXAMPLE_MANIFEST: &str = r#"# An example app for `lattice up --config-dir <this dir>`: the http-hello component of the
# lattice repository (examples/http-hello) answering every path on the shared ingress
# (http-addr, default 127.0.0.1:8000): `curl localhost:8000/hello` answers
# `Hello from lattice: /hello`. Every *.yaml file in this dir is deployed the same way.
#
# `image` is read relative to this file's directory: until http_hello.wasm is here, the node
# logs that the file is missing and serves nothing. Build it in a checkout of the lattice
# repository and copy it here:
#   cargo build --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml
#   cp examples/target/wasm32-wasip2/release/http_hello.wasm <this dir>/
# or point `image` at the file's absolute path (file:///...), or at a wasi:http component of
# your own (and rename the app and component).
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: http-hello
  annotations:
    version: v0.1.0
    description: "Hello world over wasi:http, served by lattice"
spec:
  components:
    - name: http-hello
      type: component
      properties:
        image: file://http_hello.wasm
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
              name: http-hello
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            source:
              config:
                - name: default-http
                  properties:
                    path: /
"#;

/// The files `lattice init` writes: (name in DIR, content).
const STARTER_FILES: [(&str, &str); 2] = [
    (CONFIG_FILE_NAME, EXAMPLE_CONFIG),
    (EXAMPLE_MANIFEST_NAME, EXAMPLE_MANIFEST),
];

/// Arguments of `lattice init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Directory to write `lattice.toml` and `http-hello.yaml` into; created if missing. If
    /// either file exists, nothing is written.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Why `lattice init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A file `init` would write exists already (a dangling symlink counts).
    #[error("{}: exists already; lattice init overwrites nothing (nothing was written)", .0.display())]
    Exists(PathBuf),
    /// Whether a file exists could not be found out.
    #[error("{}: cannot check whether it exists", path.display())]
    Check {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The directory could not be created.
    #[error("{}: cannot create the directory", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written; the files written before it were removed again.
    #[error("{}: cannot write it (nothing was left written)", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Writes the starter files into `dir` (created with its parents if missing): `lattice.toml`
/// ([`EXAMPLE_CONFIG`]) and [`EXAMPLE_MANIFEST_NAME`] ([`EXAMPLE_MANIFEST`]). Returns their paths.
///
/// Every file is checked before any is written, and each is created with `O_EXCL`, so an
/// existing file (or symlink) is never overwritten, even one that appears meanwhile.
///
/// # Errors
/// [`InitError::Exists`] naming the first file that exists, with nothing written; else the
/// directory or a file that could not be made, with nothing left written.
pub fn write_starter(dir: &Path) -> Result<Vec<PathBuf>, InitError> {
    let files: Vec<(PathBuf, &str)> = STARTER_FILES
        .iter()
        .map(|(name, text)| (dir.join(name), *text))
        .collect();
    for (path, _) in &files {
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Err(InitError::Exists(path.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(InitError::Check {
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| InitError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::with_capacity(files.len());
    for (path, text) in files {
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        if let Err(source) = result {
            // A file we created before this one goes again; one that create_new refused is
            // someone else's and stays.
            if source.kind() != std::io::ErrorKind::AlreadyExists {
                let _ = std::fs::remove_file(&path);
            }
            for done in &written {
                let _ = std::fs::remove_file(done);
            }
            return Err(match source.kind() {
                std::io::ErrorKind::AlreadyExists => InitError::Exists(path),
                _ => InitError::Write { path, source },
            });
        }
        written.push(path);
    }
    Ok(written)
}

/// `lattice init DIR`: [`write_starter`], then prints the files written and what to do next.
///
/// # Errors
/// As [`write_starter`]; `main` prints it and exits with status 1.
pub fn run(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let written = write_starter(&args.dir)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    println!(
        "next: put http_hello.wasm next to {EXAMPLE_MANIFEST_NAME} (its first lines say how), \
         then run `lattice up --config-dir {}`",
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use std::collections::BTreeSet;

    use super::*;
    use crate::cli::UpArgs;
    use crate::config::NodeConfig;
    use crate::reconciler::manifest::{self, Image};

    /// Keys other parts of issue 14 add to `lattice.toml` (the admin endpoint, the log format,
    /// traces): the example lists them already; until `FileConfig` has them too,
    /// [`every_key_of_the_example_is_known_and_its_value_parses`] leaves them out. Once merged,
    /// they are checked like every other key and this list has no effect.
    const KEYS_OF_OTHER_PARTS: [&str; 3] = ["admin-addr", "log-format", "otlp-endpoint"];

    #[test]
    fn writes_both_files_into_a_new_nested_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/conf");
        let written = write_starter(&dir).unwrap();
        assert_eq!(
            written,
            vec![dir.join("lattice.toml"), dir.join("http-hello.yaml")]
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("lattice.toml")).unwrap(),
            EXAMPLE_CONFIG
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("http-hello.yaml")).unwrap(),
            EXAMPLE_MANIFEST
        );
    }

    #[test]
    fn an_existing_file_is_refused_by_name_and_nothing_is_written() {
        for existing in ["lattice.toml", "http-hello.yaml"] {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join(existing);
            std::fs::write(&path, "mine\n").unwrap();
            let err = write_starter(tmp.path()).unwrap_err();
            assert!(matches!(&err, InitError::Exists(p) if *p == path), "{err}");
            assert!(err.to_string().contains(existing), "{err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine\n");
            let left: Vec<_> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, vec![std::ffi::OsString::from(existing)]);
        }
    }

    #[test]
    fn a_dangling_symlink_counts_as_existing_and_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere.toml");
        std::os::unix::fs::symlink(&target, tmp.path().join("lattice.toml")).unwrap();
        let err = write_starter(tmp.path()).unwrap_err();
        assert!(matches!(err, InitError::Exists(_)), "{err}");
        assert!(!target.exists());
        assert!(!tmp.path().join("http-hello.yaml").exists());
    }

    #[test]
    fn a_dir_that_is_a_file_is_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("conf");
        std::fs::write(&file, "").unwrap();
        let err = write_starter(&file).unwrap_err();
        // Checking `conf/lattice.toml` already fails: `conf` is not a directory.
        assert!(
            matches!(&err, InitError::Check { path, .. } if path.starts_with(&file)),
            "{err:?}"
        );
        assert!(err.to_string().contains("conf"), "{err}");
    }

    #[test]
    fn the_example_manifest_routes_every_path_to_the_wasm_next_to_it() {
        let dir = Path::new("/etc/lattice-example");
        let parsed = manifest::parse(EXAMPLE_MANIFEST, dir).unwrap();
        assert_eq!(parsed.name, "http-hello");
        assert_eq!(parsed.components.len(), 1);
        assert_eq!(
            parsed.components[0].image,
            Image::File(dir.join("http_hello.wasm"))
        );
        assert_eq!(parsed.http_links.len(), 1, "{:?}", parsed.http_links);
        assert_eq!(parsed.http_links[0].path.as_deref(), Some("/"));
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    /// Resolves a node config from a config dir holding `toml` as `lattice.toml`.
    fn resolve_with(toml: &str) -> anyhow::Result<NodeConfig> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE_NAME), toml).unwrap();
        NodeConfig::resolve(UpArgs {
            config_dir: Some(dir.path().to_path_buf()),
            ..UpArgs::default()
        })
    }

    /// The keys `lattice.toml` accepts (`FileConfig`'s, private to `config.rs`), as serde lists
    /// them when it refuses an unknown key: "unknown field `x`, expected one of `a`, `b`, …".
    fn file_config_keys() -> BTreeSet<String> {
        let err = format!("{:#}", resolve_with("zz-no-such-key = 1\n").err().unwrap());
        let (_, expected) = err
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("serde's unknown-field error changed its form: {err}"));
        let keys: BTreeSet<String> = expected
            .split(", ")
            .filter_map(|k| k.trim().strip_prefix('`')?.split('`').next())
            .map(str::to_owned)
            .collect();
        // The list is the real one: the keys the rest of this crate reads from the file.
        for known in ["data-dir", "creds", "labels", "allowed-buckets"] {
            assert!(
                keys.contains(known),
                "{known} missing from {keys:?} ({err})"
            );
        }
        keys
    }

    /// The example with its key lines and table headers uncommented, each key's first line
    /// only (`creds` has two alternatives).
    fn uncommented_example() -> String {
        let mut seen = BTreeSet::new();
        let mut table = String::new();
        let mut out = String::new();
        for line in EXAMPLE_CONFIG.lines() {
            let Some(rest) = line.strip_prefix("# ") else {
                continue;
            };
            if let Some(name) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                table = name.to_owned();
                out.push_str(rest);
                out.push('\n');
            } else if let Some((key, _)) = rest.split_once(" = ")
                && !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && seen.insert(format!("{table}.{key}"))
            {
                out.push_str(rest);
                out.push('\n');
            }
        }
        out
    }

    /// The example's top-level keys (tables included).
    fn example_keys() -> BTreeSet<String> {
        let table: toml::Table = toml::from_str(&uncommented_example()).unwrap();
        table.keys().cloned().collect()
    }

    #[test]
    fn every_key_of_lattice_toml_is_in_the_example() {
        let example = example_keys();
        let missing: Vec<_> = file_config_keys()
            .into_iter()
            .filter(|k| !example.contains(k))
            .collect();
        assert!(
            missing.is_empty(),
            "config/lattice.toml.example lacks {missing:?}"
        );
    }

    #[test]
    fn every_key_of_the_example_is_known_and_its_value_parses() {
        let known = file_config_keys();
        let example = example_keys();
        for key in &example {
            assert!(
                known.contains(key) || KEYS_OF_OTHER_PARTS.contains(&key.as_str()),
                "config/lattice.toml.example has {key}, which lattice.toml does not accept"
            );
        }
        // Every value of the example as the node reads it (types, durations, lists), without
        // the keys not merged yet. What follows the parse (creds file exists, one of nats-url
        // and leaf-url, …) may fail: only the parse is the example's business.
        let text: String = uncommented_example()
            .lines()
            .filter(|line| {
                !KEYS_OF_OTHER_PARTS
                    .iter()
                    .any(|k| line.starts_with(&format!("{k} = ")) && !known.contains(*k))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        if let Err(err) = resolve_with(&text) {
            let err = format!("{err:#}");
            assert!(!err.contains("invalid node config"), "{err}\n{text}");
        }
    }
}
