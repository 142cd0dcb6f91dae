//! Where apps may open listeners of their own: the node operator's `--allowed-listen` rules,
//! checked against every manifest `address` before the node binds it. Pure.
//!
//! A rule is `ADDRESS` or `ADDRESS:PORTS`:
//! - `ADDRESS`: `*` (any address, all interfaces included), an IPv4 address (`192.0.2.7`,
//!   `0.0.0.0`), an IPv4 network (`127.0.0.0/8`), or an IPv6 address or network in brackets
//!   (`[::1]`, `[fd00::/8]`; without a port, the brackets may be left out: `::1`);
//! - `PORTS`: one port (`8080`), a range (`8000-8099`, both ends included) or `*` (any port, the
//!   same as leaving it out).
//!
//! An address is allowed when some rule's network contains its IP and its port is in the rule's
//! ports. `0.0.0.0` and `[::]` (every interface) are addresses like any other: only rules that
//! contain them (`0.0.0.0` or `0.0.0.0/0`; `[::]` or `[::/0]` with one of those, see below;
//! `*`) allow them, so the default, [`ListenPolicy::loopback`] (`127.0.0.0/8` and `[::1]`, any
//! port), refuses them.
//!
//! IPv4 inside IPv6: an IPv4-mapped address (`[::ffff:10.0.0.1]:80`) is checked as the IPv4
//! address it is, and a rule written in that form (`[::ffff:10.0.0.0/104]`) is read as the IPv4
//! rule (`10.0.0.0/8`); an IPv6 network otherwise holds IPv6 addresses only. The node binds app
//! listeners as the OS does by default, and on Linux (`net.ipv6.bindv6only = 0`) a socket on
//! `[::]:p` also accepts IPv4 connections on every interface: so `[::]:p` is allowed only when
//! the rules allow both `[::]:p` and `0.0.0.0:p` (`*` does).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};

/// The addresses one `--allowed-listen` rule allows (see the module doc for the syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenRule {
    /// `None`: any address (`*`).
    net: Option<IpNet>,
    /// Lowest and highest port allowed, both included.
    ports: (u16, u16),
}

/// Why a `--allowed-listen` rule does not parse; the text names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "allowed-listen rule {rule:?}: {reason} (write ADDRESS or ADDRESS:PORTS, e.g. 127.0.0.0/8, \
     0.0.0.0:8080, [::1]:8000-8099, *)"
)]
pub struct ListenRuleError {
    /// The rule as given.
    pub rule: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ListenRule {
    /// Any port of the addresses in `net` (`None`: any address).
    pub fn any_port(net: Option<IpNet>) -> ListenRule {
        ListenRule {
            net,
            ports: (0, u16::MAX),
        }
    }

    /// Whether `addr` is one this rule allows.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.net.is_none_or(|net| net.contains(&ip))
            && (self.ports.0..=self.ports.1).contains(&addr.port())
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is, so rules on
/// IPv4 networks apply to it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for ListenRule {
    type Err = ListenRuleError;

    fn from_str(text: &str) -> Result<ListenRule, ListenRuleError> {
        let fail = |reason: String| ListenRuleError {
            rule: text.to_owned(),
            reason,
        };
        let rule = text.trim();
        let (address, ports) = if let Some(rest) = rule.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| fail("an IPv6 address opened with `[` is not closed".into()))?;
            let ports = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    fail(format!("{after:?} after the IPv6 address: write `:PORTS`"))
                })?),
            };
            if !inside.contains(':') {
                return Err(fail(format!(
                    "{inside:?} in brackets is not an IPv6 address"
                )));
            }
            (Some(parse_net(inside).map_err(fail)?), ports)
        } else if rule.matches(':').count() > 1 {
            // A bare IPv6 address or network: no port.
            (Some(parse_net(rule).map_err(fail)?), None)
        } else {
            let (address, ports) = match rule.split_once(':') {
                Some((address, ports)) => (address, Some(ports)),
                None => (rule, None),
            };
            match address {
                "*" => (None, ports),
                "" => return Err(fail("no address".into())),
                _ => {
                    let net = parse_net(address).map_err(fail)?;
                    if !matches!(net, IpNet::V4(_)) {
                        return Err(fail(format!(
                            "{address:?}: write IPv6 addresses in brackets, e.g. [::1]"
                        )));
                    }
                    (Some(net), ports)
                }
            }
        };
        let ports = match ports {
            None | Some("*") => (0, u16::MAX),
            Some(ports) => parse_ports(ports).map_err(fail)?,
        };
        Ok(ListenRule {
            net: address,
            ports,
        })
    }
}

/// `a.b.c.d`, `a.b.c.d/n`, `x::y` or `x::y/n` (host bits of a network must be zero).
fn parse_net(text: &str) -> Result<IpNet, String> {
    if text.contains('/') {
        let net: IpNet = text
            .parse()
            .map_err(|_| format!("{text:?} is not an IP network such as 127.0.0.0/8"))?;
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has host bits set: did you mean {}?",
                net.trunc()
            ));
        }
        Ok(unmapped(net))
    } else {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address (host names are not taken)"))?;
        Ok(unmapped(IpNet::from(ip)))
    }
}

/// An IPv6 network inside the IPv4-mapped range `::ffff:0:0/96` as the IPv4 network it maps
/// (`::ffff:10.0.0.0/104` is `10.0.0.0/8`): addresses are checked in IPv4 form ([`canonical`]),
/// so the rule must be too.
fn unmapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .addr()
            .to_ipv4_mapped()
            .and_then(|v4| Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        other => other,
    }
}

/// `N` or `LOW-HIGH`.
fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port (0-65535)"))
    };
    match text.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (port(low)?, port(high)?);
            if low > high {
                return Err(format!("the port range {text:?} is empty ({low} > {high})"));
            }
            Ok((low, high))
        }
        None => {
            let p = port(text)?;
            Ok((p, p))
        }
    }
}

impl fmt::Display for ListenRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = matches!(self.net, Some(IpNet::V6(_)));
        let single = self
            .net
            .is_some_and(|n| n.prefix_len() == n.max_prefix_len());
        match (self.net, v6) {
            (None, _) => f.write_str("*")?,
            (Some(net), true) if single => write!(f, "[{}]", net.addr())?,
            (Some(net), true) => write!(f, "[{net}]")?,
            (Some(net), false) if single => write!(f, "{}", net.addr())?,
            (Some(net), false) => write!(f, "{net}")?,
        }
        match self.ports {
            (0, u16::MAX) => Ok(()),
            (low, high) if low == high => write!(f, ":{low}"),
            (low, high) => write!(f, ":{low}-{high}"),
        }
    }
}

/// The node's `--allowed-listen` rules: the addresses a manifest `address` (an app's own
/// listener) may name on this node. The node's own ingress (`--http-addr`) is the operator's
/// choice and not checked here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenPolicy {
    rules: Vec<ListenRule>,
}

impl Default for ListenPolicy {
    fn default() -> Self {
        ListenPolicy::loopback()
    }
}

impl ListenPolicy {
    /// The default: loopback only, `127.0.0.0/8` and `[::1]`, any port.
    pub fn loopback() -> ListenPolicy {
        ListenPolicy {
            rules: vec![
                ListenRule::any_port(Some(IpNet::new_assert(
                    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                    8,
                ))),
                ListenRule::any_port(Some(IpNet::from(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)))),
            ],
        }
    }

    /// Exactly `rules` (none: no app listener is allowed).
    pub fn new(rules: Vec<ListenRule>) -> ListenPolicy {
        ListenPolicy { rules }
    }

    /// The rules.
    pub fn rules(&self) -> &[ListenRule] {
        &self.rules
    }

    /// Whether some rule allows `addr`; for `[::]:p`, which on Linux also takes IPv4
    /// connections on every interface, whether the rules also allow `0.0.0.0:p`.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.allows_only(addr) && dual_stack_v4(addr).is_none_or(|v4| self.allows_only(v4))
    }

    /// Whether some rule allows `addr` itself.
    fn allows_only(&self, addr: SocketAddr) -> bool {
        self.rules.iter().any(|r| r.allows(addr))
    }

    /// Why `addr` may not be listened on here, for `lattice app status`; `None` when allowed.
    pub fn refusal(&self, addr: SocketAddr) -> Option<String> {
        if self.allows(addr) {
            return None;
        }
        let rules: Vec<String> = self.rules.iter().map(ToString::to_string).collect();
        let allowed = match rules.is_empty() {
            true => "none".to_owned(),
            false => rules.join(", "),
        };
        let every = match (dual_stack_v4(addr), addr.ip().is_unspecified()) {
            (Some(v4), _) if self.allows_only(addr) => format!(
                " (every interface, IPv4 included: a socket on [::] also accepts IPv4, so {v4} \
                 must be allowed too)"
            ),
            (Some(_), _) => " (every interface, IPv4 included)".to_owned(),
            (None, true) => " (every interface)".to_owned(),
            (None, false) => String::new(),
        };
        Some(format!(
            "address {addr}{every} is outside this node's --allowed-listen ({allowed}): the \
             node's operator decides where apps may listen"
        ))
    }
}

/// For `[::]:p`: `0.0.0.0:p`, the IPv4 addresses a dual-stack socket on it also accepts.
fn dual_stack_v4(addr: SocketAddr) -> Option<SocketAddr> {
    match addr.ip() {
        IpAddr::V6(v6) if v6.is_unspecified() => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            addr.port(),
        )),
        _ => None,
    }
}

impl fmt::Display for ListenPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<String> = self.rules.iter().map(ToString::to_string).collect();
        f.write_str(&rules.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn rule(text: &str) -> ListenRule {
        text.parse().unwrap()
    }

    #[test]
    fn the_default_is_loopback_on_any_port() {
        let policy = ListenPolicy::default();
        assert_eq!(policy.to_string(), "127.0.0.0/8, [::1]");
        for ok in [
            "127.0.0.1:9999",
            "127.1.2.3:80",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(policy.allows(addr(ok)), "{ok}");
        }
        for refused in [
            "0.0.0.0:9999",
            "[::]:9999",
            "192.168.1.5:80",
            "10.0.0.1:8000",
        ] {
            assert!(!policy.allows(addr(refused)), "{refused}");
        }
        let why = policy.refusal(addr("0.0.0.0:9999")).unwrap();
        assert!(why.contains("0.0.0.0:9999 (every interface)"), "{why}");
        assert!(
            why.contains("--allowed-listen (127.0.0.0/8, [::1])"),
            "{why}"
        );
    }

    #[test]
    fn rules_parse_and_print_back() {
        for (text, shown) in [
            ("*", "*"),
            ("*:*", "*"),
            ("*:8080", "*:8080"),
            ("0.0.0.0", "0.0.0.0"),
            ("0.0.0.0:9999", "0.0.0.0:9999"),
            ("127.0.0.0/8", "127.0.0.0/8"),
            ("10.0.0.0/8:8000-8099", "10.0.0.0/8:8000-8099"),
            ("[::1]", "[::1]"),
            ("::1", "[::1]"),
            ("[::]:80", "[::]:80"),
            ("[fd00::/8]:1-2", "[fd00::/8]:1-2"),
            (" 192.0.2.7:443 ", "192.0.2.7:443"),
        ] {
            assert_eq!(rule(text).to_string(), shown, "{text}");
        }
        for bad in [
            "",
            ":80",
            "localhost",
            "localhost:80",
            "127.0.0.1:http",
            "127.0.0.1:90-80",
            "127.0.0.1:70000",
            "127.0.0.1/8",
            "[::1",
            "[::1]80",
            "[127.0.0.1]",
            "::1:80x",
        ] {
            let error = bad.parse::<ListenRule>().unwrap_err();
            assert!(error.to_string().contains("allowed-listen rule"), "{error}");
        }
    }

    #[test]
    fn a_rule_allows_its_network_and_ports_only() {
        let all = rule("0.0.0.0:9999");
        assert!(all.allows(addr("0.0.0.0:9999")));
        assert!(!all.allows(addr("0.0.0.0:9998")));
        assert!(!all.allows(addr("127.0.0.1:9999")));
        let range = rule("10.0.0.0/8:8000-8099");
        assert!(range.allows(addr("10.1.2.3:8000")));
        assert!(range.allows(addr("10.1.2.3:8099")));
        assert!(!range.allows(addr("10.1.2.3:8100")));
        assert!(!range.allows(addr("11.0.0.1:8000")));
        let any = rule("*");
        assert!(any.allows(addr("0.0.0.0:1")) && any.allows(addr("[::]:65535")));
        assert!(rule("0.0.0.0/0").allows(addr("0.0.0.0:80")));
        assert!(!ListenPolicy::new(Vec::new()).allows(addr("127.0.0.1:80")));
    }

    #[test]
    fn every_ipv6_interface_needs_every_ipv4_one_too() {
        let v6_only = ListenPolicy::new(vec![rule("[::]:80")]);
        assert!(!v6_only.allows(addr("[::]:80")));
        let why = v6_only.refusal(addr("[::]:80")).unwrap();
        assert!(why.contains("IPv4 included"), "{why}");
        assert!(why.contains("0.0.0.0:80 must be allowed too"), "{why}");
        let both = ListenPolicy::new(vec![rule("[::]:80"), rule("0.0.0.0:80")]);
        assert!(both.allows(addr("[::]:80")) && both.allows(addr("0.0.0.0:80")));
        assert!(!both.allows(addr("[::]:81")));
        assert!(ListenPolicy::new(vec![rule("*:80")]).allows(addr("[::]:80")));
        let nets = ListenPolicy::new(vec![rule("[::/0]"), rule("0.0.0.0/0")]);
        assert!(nets.allows(addr("[::]:443")));
        // Other IPv6 addresses are IPv6 only: no IPv4 rule needed.
        assert!(ListenPolicy::new(vec![rule("[fd00::/8]")]).allows(addr("[fd00::1]:80")));
    }

    #[test]
    fn ipv4_mapped_rules_are_read_as_ipv4() {
        assert_eq!(rule("[::ffff:10.0.0.0/104]").to_string(), "10.0.0.0/8");
        assert_eq!(rule("[::ffff:192.0.2.7]:80").to_string(), "192.0.2.7:80");
        assert_eq!(rule("::ffff:0:0/96").to_string(), "0.0.0.0/0");
        let mapped = ListenPolicy::new(vec![rule("[::ffff:10.0.0.0/104]")]);
        assert!(mapped.allows(addr("10.1.2.3:80")));
        assert!(mapped.allows(addr("[::ffff:10.1.2.3]:80")));
        assert!(!mapped.allows(addr("11.0.0.1:80")));
        // Wider IPv6 networks stay IPv6.
        assert_eq!(rule("[::/0]").to_string(), "[::/0]");
        assert!(!ListenPolicy::new(vec![rule("[::/0]")]).allows(addr("10.0.0.1:80")));
    }
}
