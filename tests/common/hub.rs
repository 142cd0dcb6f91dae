//! Test hub: an operator-mode (JWT) nats-server on loopback that lattice nodes join as leaf nodes.
//!
//! The hub trusts one freshly generated operator and has a MEMORY resolver preloaded with the
//! system account and one application account (JetStream enabled, unlimited). Users of that
//! account are minted on demand as standard NATS `.creds` files.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nats_io_jwt::{
    Account, KeyPair, Operator, OperatorLimits, Permission, SystemAccount, Token, User,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long a (re)started hub may take to accept TCP on its client and leafnode ports.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the hub gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The JetStream a test hub runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum HubJetStream {
    /// JetStream in the named domain: leaf nodes reach it as `$JS.<domain>.API.>`.
    Domain(&'static str),
    /// JetStream with no domain.
    NoDomain,
    /// No JetStream on the hub at all.
    Off,
}

/// A running operator-mode nats-server hub, with JetStream as [`HubJetStream`] says, in its
/// own temp dir.
///
/// Dropping it kills the hub process (by its pid) and removes the temp dir.
pub struct Hub {
    /// Holds the config, operator JWT, JetStream store and log; removed on drop.
    dir: TempDir,
    /// The nats-server process, `None` while stopped.
    child: Option<Child>,
    /// Port for NATS clients on 127.0.0.1.
    client_port: u16,
    /// Port for incoming leafnode connections on 127.0.0.1.
    leaf_port: u16,
    /// Identity key of the application account; signs user JWTs.
    account: KeyPair,
    /// The config without its `jetstream` block, which [`Hub::write_config`] adds.
    base_config: String,
}

impl Hub {
    /// The hub's JetStream domain. Leaf nodes reach the hub's JetStream as `$JS.hub.API.>`
    /// (nats-server denies the plain `$JS.API.>` across a leaf connection between domains);
    /// direct clients of the hub use the plain `$JS.API.>`.
    pub const JS_DOMAIN: &'static str = "hub";

    /// Starts an operator-mode nats-server on 127.0.0.1: client port and leafnode port chosen
    /// free, MEMORY resolver preloaded with one account (JetStream enabled for the account,
    /// unlimited) and the system account, JetStream enabled on the hub in domain
    /// [`Hub::JS_DOMAIN`] (store dir inside its temp dir). Waits until it accepts TCP on both
    /// ports.
    pub fn start() -> Hub {
        Hub::start_with(HubJetStream::Domain(Hub::JS_DOMAIN))
    }

    /// [`Hub::start`] with the hub's JetStream as `js` says.
    pub fn start_with(js: HubJetStream) -> Hub {
        let dir = tempfile::Builder::new()
            .prefix("lattice-hub-")
            .tempdir()
            .unwrap();
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();

        let operator_claims: Operator = Operator::builder()
            .system_account(Some(SystemAccount(system.public_key())))
            .try_into()
            .unwrap();
        let operator_jwt = Token::new(operator.public_key())
            .name("hub-operator")
            .claims(operator_claims)
            .sign(&operator);

        // The system account gets unlimited NATS limits but no JetStream.
        let system_claims = Account {
            limits: Some(OperatorLimits {
                disk_storage: 0,
                mem_storage: 0,
                ..OperatorLimits::default()
            }),
            ..Account::default()
        };
        let system_jwt = Token::new(system.public_key())
            .name("SYS")
            .claims(system_claims)
            .sign(&operator);

        // The default limits are all unlimited (-1), JetStream memory and disk storage included.
        let account_claims: Account = Account::builder()
            .limits(Some(OperatorLimits::default()))
            .try_into()
            .unwrap();
        let account_jwt = Token::new(account.public_key())
            .name("APP")
            .claims(account_claims)
            .sign(&operator);

        let operator_path = dir.path().join("operator.jwt");
        fs::write(&operator_path, &operator_jwt).unwrap();
        let store_dir = dir.path().join("jetstream");
        fs::create_dir_all(&store_dir).unwrap();

        let client_port = free_port();
        let leaf_port = free_port();
        let base_config = format!(
            r#"listen: 127.0.0.1:{client_port}
server_name: hub
leafnodes {{
  listen: 127.0.0.1:{leaf_port}
}}
operator: "{operator}"
system_account: {sys_pub}
resolver: MEMORY
resolver_preload: {{
  {acc_pub}: "{account_jwt}"
  {sys_pub}: "{system_jwt}"
}}
"#,
            operator = operator_path.display(),
            sys_pub = system.public_key(),
            acc_pub = account.public_key(),
        );
        let mut hub = Hub {
            dir,
            child: None,
            client_port,
            leaf_port,
            account,
            base_config,
        };
        hub.write_config(js);
        hub.spawn();
        hub
    }

    /// Writes `hub.conf`: the base config plus the `jetstream` block `js` asks for (the store
    /// in the temp dir's `jetstream`, kept across reconfigurations).
    fn write_config(&self, js: HubJetStream) {
        let store = self.dir.path().join("jetstream");
        let jetstream = match js {
            HubJetStream::Domain(domain) => format!(
                "jetstream {{\n  store_dir: \"{}\"\n  domain: {domain}\n}}\n",
                store.display()
            ),
            // nats-server denies the JetStream API (`$JS.API.>`, `$KV.>`, `$OBJ.>`) on every
            // leaf connection of an account whose JetStream has no domain, unless the hub maps
            // that account to the empty default domain (`default_js_domain`, honoured by 2.9
            // and 2.15): that is how a hub without a domain serves leaf nodes.
            HubJetStream::NoDomain => format!(
                "jetstream {{\n  store_dir: \"{}\"\n}}\ndefault_js_domain: {{ {}: \"\" }}\n",
                store.display(),
                self.account.public_key()
            ),
            HubJetStream::Off => String::new(),
        };
        let config = format!("{}{jetstream}", self.base_config);
        fs::write(self.dir.path().join("hub.conf"), config).unwrap();
    }

    /// The URL leaf nodes use to reach the hub: `nats-leaf://127.0.0.1:LEAFPORT`.
    pub fn leaf_url(&self) -> String {
        format!("nats-leaf://127.0.0.1:{}", self.leaf_port)
    }

    /// The URL NATS clients use to reach the hub: `nats://127.0.0.1:CLIENTPORT`.
    pub fn client_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// Writes a creds file for a new user of the hub's account into `dir/name` with mode 0600
    /// and returns its path.
    pub fn user_creds(&self, dir: &Path, name: &str) -> PathBuf {
        write_creds(dir, name, &self.account, &Permissions::default())
    }

    /// As [`Hub::user_creds`], for a user whose JWT carries `permissions` (what a NATS
    /// operator gives each role, PROTOCOL.md §Roles).
    pub fn user_creds_with(&self, dir: &Path, name: &str, permissions: &Permissions) -> PathBuf {
        write_creds(dir, name, &self.account, permissions)
    }

    /// Writes a creds file that parses but is signed by an account the hub does not know (the
    /// hub refuses it: authorization violation) into `dir/name` with mode 0600 and returns its
    /// path.
    pub fn foreign_creds(&self, dir: &Path, name: &str) -> PathBuf {
        write_creds(dir, name, &KeyPair::new_account(), &Permissions::default())
    }

    /// Stops the hub process (SIGTERM, then waits; SIGKILL after 10 s), keeping its config,
    /// ports and JetStream store. A no-op when already stopped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait().unwrap();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the hub again on the same ports with the same config and store (stopping it first
    /// if it still runs); waits until it accepts TCP on both ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the hub and starts it again on the same ports, account and store, with its
    /// JetStream as `js` says (e.g. a hub without JetStream that comes back with it).
    #[allow(dead_code)]
    pub fn restart_with(&mut self, js: HubJetStream) {
        self.stop();
        self.write_config(js);
        self.spawn();
    }

    /// The pid of the hub process. Panics while the hub is stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the hub is stopped").id()
    }

    /// Everything the hub's nats-server wrote so far (all runs).
    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The hub's log file in its temp dir, appended to by every run.
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("hub.log")
    }

    /// Spawns nats-server on the hub's config, output appended to its log, and waits until both
    /// ports accept TCP; panics with the log if it exits or is not ready within 10 s.
    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(self.dir.path().join("hub.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        let ports = [self.client_port, self.leaf_port];
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "hub nats-server exited ({status}) before ready; log:\n{}",
                    self.log()
                );
            }
            if ports.iter().all(|&port| accepts(port)) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "hub nats-server not accepting on ports {ports:?} within {READY_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hub {
    /// Kills the hub process (SIGKILL to its pid only) and reaps it.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The nats-server executable: `LATTICE_NATS_SERVER` when set (the binary the nodes under test
/// run too, e.g. CI's second run against another version), else `nats-server` from PATH if
/// there is one, else Debian's `/usr/sbin/nats-server`.
fn nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("LATTICE_NATS_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// A currently free TCP port on 127.0.0.1 (bound to port 0, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether something accepts TCP on 127.0.0.1:`port`.
fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A NATS user's publish and subscribe permissions (subjects with wildcards; empty lists are
/// left out: no `allow` means everything is allowed, as in nats-server).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub pub_allow: Vec<String>,
    /// Subjects it may not publish to (winning over `pub_allow`).
    pub pub_deny: Vec<String>,
    /// Subjects it may subscribe to.
    pub sub_allow: Vec<String>,
    /// Subjects it may not subscribe to (winning over `sub_allow`).
    pub sub_deny: Vec<String>,
}

impl Permissions {
    /// The JWT's `pub` or `sub` claim for `allow` and `deny`, `None` when both are empty.
    fn claim(allow: &[String], deny: &[String]) -> Option<Permission> {
        let list = |l: &[String]| (!l.is_empty()).then(|| l.to_vec().into());
        (!allow.is_empty() || !deny.is_empty()).then(|| Permission {
            allow: list(allow),
            deny: list(deny),
        })
    }
}

/// Mints a new user signed by `account` with `permissions` and writes its creds file to
/// `dir/name` (mode 0600). `{{subject()}}` in a subject becomes the new user's public key: the
/// literal subject an operator writes into that user's JWT (nats-server expands the template
/// itself only in a scoped signing key's template).
fn write_creds(dir: &Path, name: &str, account: &KeyPair, permissions: &Permissions) -> PathBuf {
    let user = KeyPair::new_user();
    let key = user.public_key();
    let own = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|s| s.replace("{{subject()}}", &key))
            .collect()
    };
    let permissions = &Permissions {
        pub_allow: own(&permissions.pub_allow),
        pub_deny: own(&permissions.pub_deny),
        sub_allow: own(&permissions.sub_allow),
        sub_deny: own(&permissions.sub_deny),
    };
    let claims: User = User::builder()
        .bearer_token(false)
        .pub_(Permissions::claim(
            &permissions.pub_allow,
            &permissions.pub_deny,
        ))
        .sub(Permissions::claim(
            &permissions.sub_allow,
            &permissions.sub_deny,
        ))
        .try_into()
        .unwrap();
    let jwt = Token::new(user.public_key())
        .name(name)
        .claims(claims)
        .sign(account);
    let seed = user.seed().unwrap();
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n\
         {jwt}\n\
         ------END NATS USER JWT------\n\
         \n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\
         \n\
         -----BEGIN USER NKEY SEED-----\n\
         {seed}\n\
         ------END USER NKEY SEED------\n\
         \n\
         *************************************************************\n"
    );
    let path = dir.join(name);
    let mut file: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    // `mode` only applies when the file is created; an existing file is tightened too.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    file.write_all(creds.as_bytes()).unwrap();
    path
}
