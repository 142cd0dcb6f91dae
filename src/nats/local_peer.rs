//! Is the server on the node's client port the node's own nats-server? While that server is in
//! backoff, or the node is down, any local user can bind the fixed loopback port and wait for
//! the node's client (reconnecting forever) or the owner's CLI. Before either signs the
//! server's nonce with the local key ([`super::local_auth`]), it checks on Linux that every
//! socket a connection to `127.0.0.1:<port>` could reach (the listener and the connections it
//! accepted, as `/proc/net/tcp` and `/proc/net/tcp6` list them,
//! <https://www.kernel.org/doc/html/latest/networking/proc_net_tcp.html>) belongs to the node's
//! user; otherwise it refuses the server and sends nothing. Every state but TIME_WAIT counts: a
//! half-closed socket (FIN_WAIT) of another user can still read what the client writes. The
//! client takes no servers from the INFO it is sent (a fake server's `connect_urls` would be
//! dialled, and checked on the wrong port, later). On other systems there is no check.

use super::local_auth::LocalUser;

/// The `/proc/net/tcp` state of a socket that can no longer receive (its uid reads 0): TIME_WAIT.
const TIME_WAIT: &str = "06";

/// Local addresses, as `/proc/net/tcp{,6}` print them (IPv4 as one little-endian word, IPv6 as
/// four), at which a connection to `127.0.0.1` arrives: `127.0.0.1`, `0.0.0.0`, `::` (a
/// dual-stack socket; `/proc` does not show V6ONLY, so it counts) and `::ffff:127.0.0.1`.
const REACHABLE_FROM_LOOPBACK: [&str; 4] = [
    "0100007F",
    "00000000",
    "00000000000000000000000000000000",
    "0000000000000000FFFF00000100007F",
];

/// Sockets whose local address is `127.0.0.1:port` or one a connection to it reaches
/// ([`REACHABLE_FROM_LOOPBACK`]) in `table` (the text of `/proc/net/tcp` or `/proc/net/tcp6`),
/// in any state but TIME_WAIT: their owners' uids.
fn owners(table: &str, port: u16) -> Vec<u32> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
            let (address, local_port) = fields.get(1)?.split_once(':')?;
            let state = fields.get(3)?;
            let uid = fields.get(7)?.parse().ok()?;
            let local_port = u16::from_str_radix(local_port, 16).ok()?;
            (local_port == port
                && *state != TIME_WAIT
                && REACHABLE_FROM_LOOPBACK
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(address)))
            .then_some(uid)
        })
        .collect()
}

/// Checks that every socket a connection to `127.0.0.1:port` could reach (`owners`) belongs
/// to uid `expected` (the node's user).
///
/// # Errors
/// One belongs to another uid (the message names the port and both uids), or, with none
/// found, that nothing of that user listens there. `/proc/net/tcp` unreadable is no error.
#[cfg(target_os = "linux")]
pub fn check(port: u16, expected: u32) -> Result<(), String> {
    let mut found = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Some(text) = read_table(table) else {
            continue;
        };
        for uid in owners(&text, port) {
            if uid != expected {
                return Err(format!(
                    "the server on port {port} is not the node's nats-server: a socket there \
                     belongs to uid {uid}, the node runs as uid {expected}"
                ));
            }
            found = true;
        }
    }
    if found || !std::path::Path::new("/proc/net/tcp").exists() {
        Ok(())
    } else {
        Err(format!(
            "no socket of uid {expected} (the node's user) on port {port}"
        ))
    }
}

/// The whole text of `/proc/net/tcp{,6}` at `path` (read to its end; `None` on any error,
/// and the caller skips that table). The kernel walks its TCP hash table again for each read
/// (to find where the last one ended: about 10 ms on a machine with a large table), so the
/// reads should be few: the buffer's capacity makes `read_to_end` ask for as much as it has
/// room for from the first read on (with a `/proc` file's size of 0 as its hint, its first
/// reads would be of 32 bytes), though std asks for at most 8 KiB per read then and the
/// kernel's seq_file answers about a page (4 KiB) per read anyway: a table of a few lines is
/// two reads (the text, then the end).
#[cfg(target_os = "linux")]
fn read_table(path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut text = Vec::with_capacity(64 * 1024);
    std::fs::File::open(path)
        .ok()?
        .read_to_end(&mut text)
        .ok()?;
    String::from_utf8(text).ok()
}

/// No check outside Linux.
#[cfg(not(target_os = "linux"))]
pub fn check(_port: u16, _expected: u32) -> Result<(), String> {
    Ok(())
}

/// Connect options that authenticate as `user` (signing the server's nonce) to the server at
/// `url` (the node's own, `nats://127.0.0.1:<port>`) only after [`check`] found that server's
/// sockets to belong to uid `owner`. The client dials `url` only (servers an INFO announces are
/// ignored); a `url` without a port is refused at the first connect.
pub fn options(user: &LocalUser, url: &str, owner: u32) -> async_nats::ConnectOptions {
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
    let seed = user.seed().to_owned();
    async_nats::ConnectOptions::with_auth_callback(move |nonce| {
        let seed = seed.clone();
        async move {
            let port = port.ok_or_else(|| {
                async_nats::AuthError::new("the node's NATS URL names no port to check")
            })?;
            check(port, owner).map_err(async_nats::AuthError::new)?;
            let key = nkeys::KeyPair::from_seed(&seed).map_err(async_nats::AuthError::new)?;
            let signature = key.sign(&nonce).map_err(async_nats::AuthError::new)?;
            let mut auth = async_nats::Auth::new();
            auth.nkey = Some(key.public_key());
            auth.signature = Some(signature);
            Ok(auth)
        }
    })
    .ignore_discovered_servers()
    .retain_servers_order()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:C351 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
   4: 0100007F:1F90 0100007F:C352 05 00000000:00000000 00:00000000 00000000  1001        0 4 1 0000000000000000 20 4 30 10 -1
   5: 0200007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1002        0 5 1 0000000000000000 100 0 0 10 0
   6: 0A00000A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1003        0 6 1 0000000000000000 100 0 0 10 0
";

    const TABLE6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1004        0 7 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1005        0 8 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 01 00000000:00000000 00:00000000 00000000  1006        0 9 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn owners_of_the_live_sockets_on_a_port() {
        // Port 0x1F90 = 8080: the listener and one accepted connection (uid 1000), and a
        // half-closed one of uid 1001 (FIN_WAIT2: it still reads); the client's end (port
        // 0xC350), a TIME_WAIT entry, and listeners on 127.0.0.2 and 10.0.0.10 (which a
        // connection to 127.0.0.1 does not reach) are not counted.
        assert_eq!(owners(TABLE, 8080), [1000, 1000, 1001]);
        // IPv6: `::1` is not reached from 127.0.0.1; `::` (dual stack) and ::ffff:127.0.0.1 are.
        assert_eq!(owners(TABLE6, 8080), [1005, 1006]);
        assert_eq!(owners(TABLE, 50000), [0]);
        assert!(owners(TABLE, 9).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_listener_of_this_user_passes_and_another_uid_does_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = nix::unistd::geteuid().as_raw();
        check(port, me).unwrap();
        let err = check(port, me + 1).unwrap_err();
        assert!(
            err.contains(&format!("uid {me}")) && err.contains(&port.to_string()),
            "{err}"
        );
        drop(listener);
        assert!(check(port, me).unwrap_err().contains("no socket"));
    }
}
