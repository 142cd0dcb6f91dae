//! Issue 13: the node's own NATS admits only the node and the `lattice` CLI run by a user who
//! can read the node's data dir; another Unix user gets `Authorization Violation` on the port
//! and a clear error from the CLI.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use crate::common::{self, NatsLogin, Node, lattice::array};

/// `nobody`'s ids on Debian.
const NOBODY: (u32, u32) = (65534, 65534);

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn only_the_nodes_user_reaches_its_nats() {
    // A parent others may traverse, and a data dir that exists already, open to all: the node
    // must close it itself.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (config, data) = (tmp.path().join("config"), tmp.path().join("data"));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = Node::start_in(&config, &data, &[]);
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(20));
    assert_eq!(mode(&data), 0o700, "the data dir");
    assert_eq!(mode(&data.join("local.nk")), 0o600, "the local key");
    // It can name the leaf remote's URL.
    let conf = data.join("nats").join("nats-server.conf");
    assert_eq!(mode(&conf), 0o600, "{}", conf.display());

    // A plain client without the node's key: refused.
    let (url, login) = common::node_nats(&data);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime
        .block_on(common::nats_connect(&url, &NatsLogin::Anonymous))
        .map(drop)
        .unwrap_err();
    assert_eq!(
        refused.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{refused}"
    );
    // With it: admitted.
    runtime
        .block_on(common::nats_connect(&url, &login))
        .unwrap();

    // Another Unix user, who found the port: Authorization Violation.
    let (uid, gid) = NOBODY;
    let out = common::lattice_cli_as(uid, gid, &["get", "hosts", "--nats-url", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Authorization Violation") && stderr.contains(&url),
        "{stderr}"
    );

    // That user's deploy through the node's data dir: a clear error naming the file and why.
    let manifest = tmp.path().join("hello.yaml");
    std::fs::write(
        &manifest,
        common::manifest("hello", &common::example_wasm("http-hello"), "/"),
    )
    .unwrap();
    std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data_arg = data.to_string_lossy().into_owned();
    let manifest_arg = manifest.to_string_lossy().into_owned();
    let out = common::lattice_cli_as(
        uid,
        gid,
        &["app", "deploy", &manifest_arg, "--data-dir", &data_arg],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read {}/nats.url: permission denied",
            data.display()
        )) && stderr.contains("--nats-url with --creds"),
        "{stderr}"
    );

    // The owner's CLI works, and nothing of the other user's attempts was stored.
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--data-dir", &data_arg, "-o", "json"]);
        let out = common::lattice_cli(&all);
        assert!(
            out.status.success(),
            "lattice {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.log()
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert!(array(cli(&["app", "list"])).unwrap().is_empty());
    assert_eq!(cli(&["app", "deploy", &manifest_arg])["name"], "hello");
    node.wait_for_status("/", 200, Duration::from_secs(20));
    let hosts = array(cli(&["get", "hosts"])).unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
}

/// A server on the node's port that is not the node's nats-server (a local user bound the port
/// while the node was down): the CLI refuses it before signing its nonce with the node's key.
#[test]
fn the_cli_does_not_sign_for_a_server_of_another_user() {
    use std::io::{BufRead as _, BufReader, Write as _};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // The fake server: this test's uid, not the node's (the data dir's owner, nobody).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::fs::write(data.join("nats.url"), format!("nats://127.0.0.1:{port}\n")).unwrap();
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    std::fs::write(data.join("local.nk"), format!("{seed}\n")).unwrap();
    for path in [data.join("nats.url"), data.join("local.nk"), data.clone()] {
        std::os::unix::fs::chown(&path, Some(NOBODY.0), Some(NOBODY.1)).unwrap();
    }
    let fake = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .write_all(
                b"INFO {\"server_id\":\"FAKE\",\"version\":\"2.9.10\",\"proto\":1,\"max_payload\":1048576,\"auth_required\":true,\"nonce\":\"abcdefgh\"}\r\n",
            )
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut line = String::new();
        let _ = BufReader::new(stream).read_line(&mut line);
        line
    });
    let dir = data.to_string_lossy().into_owned();
    let out = common::lattice_cli(&["get", "hosts", "--data-dir", &dir, "--timeout", "3s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let received = fake.join().unwrap();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        !received.contains("\"sig\""),
        "the CLI signed the fake server's nonce: {received}"
    );
    assert!(
        stderr.contains("not the node's nats-server") && stderr.contains("uid 65534"),
        "{stderr}"
    );
}
