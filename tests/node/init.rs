//! `lattice init DIR`, the real binary: the starter files it writes, its refusal to overwrite,
//! and a node started on the dir it wrote.

use std::path::Path;
use std::time::Duration;

use crate::common::{Node, example_wasm, lattice_cli};

const EXAMPLE_CONFIG: &str = include_str!("../../config/lattice.toml.example");

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn init_writes_a_starter_dir_refuses_to_overwrite_and_the_node_serves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/conf");
    let dir_arg = dir.to_str().unwrap();

    let out = lattice_cli(&["init", dir_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (toml, yaml) = (dir.join("lattice.toml"), dir.join("http-hello.yaml"));
    assert_eq!(read(&toml), EXAMPLE_CONFIG);
    assert!(read(&yaml).contains("image: file://http_hello.wasm"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("wrote {}", toml.display())),
        "{stdout}"
    );

    // A second init refuses by name, with status 1, and changes nothing: not the file that
    // exists (edited here, so a rewrite would show), nor the one that was removed.
    std::fs::write(&toml, "# mine\n").unwrap();
    std::fs::remove_file(&yaml).unwrap();
    let out = lattice_cli(&["init", dir_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&toml.display().to_string()) && stderr.contains("exists already"),
        "{stderr}"
    );
    assert_eq!(read(&toml), "# mine\n");
    assert!(
        !yaml.exists(),
        "init wrote {} after refusing",
        yaml.display()
    );

    // The written dir as a node's config dir: its lattice.toml is accepted and, with the wasm
    // its manifest asks for next to it, the example app answers.
    std::fs::remove_file(&toml).unwrap();
    assert!(lattice_cli(&["init", dir_arg]).status.success());
    std::fs::copy(example_wasm("http-hello"), dir.join("http_hello.wasm")).unwrap();
    let node = Node::start_in(&dir, &tmp.path().join("data"), &[]);
    let body = node.wait_for_status("/hello", 200, Duration::from_secs(30));
    assert!(body.starts_with("Hello from lattice: /hello"), "{body}");
    assert!(
        !node.log().contains("invalid node config"),
        "{}",
        node.log()
    );
}
