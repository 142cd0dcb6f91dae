//! Test certificates made with the `openssl` CLI: a CA and a server certificate it signed for
//! IP 127.0.0.1, for TLS servers a test starts on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA (`<name>-ca.pem`) and a certificate it signed for IP 127.0.0.1 (`<name>.pem`, key
/// `<name>.key`) in `dir`: `(ca, cert, key)`.
pub fn ca_and_server_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let path = |suffix: &str| dir.join(format!("{name}{suffix}"));
    let (ca_key, ca, key, csr, cert, ext) = (
        path("-ca.key"),
        path("-ca.pem"),
        path(".key"),
        path(".csr"),
        path(".pem"),
        path(".ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let run = |args: &[&Path]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = Path::new;
    let ec = [
        p("-newkey"),
        p("ec"),
        p("-pkeyopt"),
        p("ec_paramgen_curve:prime256v1"),
    ];
    let subject = format!("/CN=lattice test CA {name}");
    let mut args = vec![p("req"), p("-x509"), p("-nodes"), p("-days"), p("2")];
    args.extend(ec);
    args.extend([
        p("-keyout"),
        &ca_key,
        p("-out"),
        &ca,
        p("-subj"),
        p(&subject),
    ]);
    args.extend([p("-addext"), p("basicConstraints=critical,CA:TRUE")]);
    args.extend([p("-addext"), p("keyUsage=critical,keyCertSign,cRLSign")]);
    run(&args);
    let mut args = vec![p("req"), p("-nodes")];
    args.extend(ec);
    args.extend([
        p("-keyout"),
        &key,
        p("-out"),
        &csr,
        p("-subj"),
        p("/CN=127.0.0.1"),
    ]);
    run(&args);
    run(&[
        p("x509"),
        p("-req"),
        p("-in"),
        &csr,
        p("-CA"),
        &ca,
        p("-CAkey"),
        &ca_key,
        p("-set_serial"),
        p("2"),
        p("-days"),
        p("2"),
        p("-extfile"),
        &ext,
        p("-out"),
        &cert,
    ]);
    (ca, cert, key)
}
