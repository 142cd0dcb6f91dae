//! Which IP addresses outgoing HTTP refuses unless an allow-list entry names them literally:
//! the node's own and its networks' (issue 13, DESIGN.md §5). Ranges from the IANA special-purpose
//! registries (RFC 6890): loopback, link-local (cloud metadata at 169.254.169.254 among them),
//! private (RFC 1918, RFC 4193), shared address space (CGNAT, RFC 6598), IETF protocol
//! assignments (`192.0.0.0/24`), benchmarking (`198.18.0.0/15`, also used by fake-IP VPNs and
//! proxies), reserved (`240.0.0.0/4`), multicast, broadcast and unspecified, also when written as
//! an IPv4-mapped, IPv4-compatible, NAT64 (RFC 6052 `64:ff9b::/96`) or 6to4 (RFC 3056
//! `2002::/16`) IPv6 address; and the whole NAT64 local-use prefix (RFC 8215 `64:ff9b:1::/48`),
//! which translates to the operator's own IPv4 networks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not reachable through a wildcard allow-list entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restricted {
    /// `0.0.0.0/8` ("this network"), `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `169.254.0.0/16` (cloud metadata services), `fe80::/10`.
    LinkLocal,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`; and the deprecated IPv6
    /// site-local `fec0::/10`.
    Private,
    /// RFC 4193 unique local IPv6: `fc00::/7`.
    UniqueLocal,
    /// RFC 6598 shared address space (carrier-grade NAT): `100.64.0.0/10`.
    SharedAddressSpace,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.0.0/24`, IETF protocol assignments (RFC 6890): DS-Lite, NAT64 discovery and
    /// similar addresses of the node's own network.
    ProtocolAssignments,
    /// `198.18.0.0/15`, benchmarking (RFC 2544): also the fake addresses of fake-IP VPNs and
    /// proxies, which lead into the node's own tunnel.
    Benchmarking,
    /// `240.0.0.0/4`, reserved (RFC 1112), but for the broadcast address.
    Reserved,
    /// `64:ff9b:1::/48`, the NAT64 local-use prefix (RFC 8215): it translates to IPv4 networks
    /// of the operator's choosing, by definition the node's own, and where in the address the
    /// IPv4 one sits depends on the translator's prefix length (RFC 6052 §2.2), so the whole
    /// prefix is refused rather than any embedded IPv4 address judged.
    Nat64LocalUse,
}

impl std::fmt::Display for Restricted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Restricted::Unspecified => "an unspecified address",
            Restricted::Loopback => "a loopback address",
            Restricted::LinkLocal => "a link-local address",
            Restricted::Private => "a private address",
            Restricted::UniqueLocal => "a unique local (private) address",
            Restricted::SharedAddressSpace => "a shared (carrier-grade NAT) address",
            Restricted::Multicast => "a multicast address",
            Restricted::Broadcast => "the broadcast address",
            Restricted::ProtocolAssignments => "an IETF protocol assignment address",
            Restricted::Benchmarking => "a benchmarking (or fake-IP VPN) address",
            Restricted::Reserved => "a reserved address",
            Restricted::Nat64LocalUse => "a local-use NAT64 address",
        })
    }
}

/// Why `ip` may be reached only through an allow-list entry naming it (or the host) literally;
/// `None` for an address any matching entry reaches. An IPv6 address embedding an IPv4 one
/// (`::ffff:a.b.c.d`, `::a.b.c.d`, `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::`) is judged by
/// the IPv4 address; any address in the NAT64 local-use prefix `64:ff9b:1::/48` is
/// [`Restricted::Nat64LocalUse`].
pub fn restriction(ip: IpAddr) -> Option<Restricted> {
    match ip {
        IpAddr::V4(v4) => restriction_v4(v4),
        IpAddr::V6(v6) => restriction_v6(v6),
    }
}

fn restriction_v4(ip: Ipv4Addr) -> Option<Restricted> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b) {
        _ if ip == Ipv4Addr::BROADCAST => Restricted::Broadcast,
        (0, _) => Restricted::Unspecified,
        (127, _) => Restricted::Loopback,
        (169, 254) => Restricted::LinkLocal,
        (10, _) | (192, 168) => Restricted::Private,
        (172, b) if (16..32).contains(&b) => Restricted::Private,
        (100, b) if (64..128).contains(&b) => Restricted::SharedAddressSpace,
        (224..=239, _) => Restricted::Multicast,
        (192, 0) if c == 0 => Restricted::ProtocolAssignments,
        (198, 18 | 19) => Restricted::Benchmarking,
        (240..=255, _) => Restricted::Reserved,
        _ => return None,
    })
}

fn restriction_v6(ip: Ipv6Addr) -> Option<Restricted> {
    if ip.is_unspecified() {
        return Some(Restricted::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Restricted::Loopback);
    }
    if let [0x64, 0xff9b, 1, ..] = ip.segments() {
        return Some(Restricted::Nat64LocalUse);
    }
    if let Some(v4) = embedded_v4(ip) {
        return restriction_v4(v4);
    }
    let first = ip.segments()[0];
    Some(match first {
        _ if first & 0xffc0 == 0xfe80 => Restricted::LinkLocal,
        _ if first & 0xffc0 == 0xfec0 => Restricted::Private,
        _ if first & 0xfe00 == 0xfc00 => Restricted::UniqueLocal,
        _ if first & 0xff00 == 0xff00 => Restricted::Multicast,
        _ => return None,
    })
}

/// The IPv4 address an IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible (`::/96`, deprecated
/// but still routed by some stacks), NAT64 well-known-prefix (`64:ff9b::/96`, RFC 6052: the
/// last 32 bits) or 6to4 (`2002:AABB:CCDD::/48`, RFC 3056) address carries. The local-use
/// prefix `64:ff9b:1::/48` is not decoded here: [`restriction_v6`] refuses all of it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff | 0, ..] | [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(v4(s[6], s[7])),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(text: &str) -> Option<Restricted> {
        restriction(text.parse().unwrap())
    }

    #[test]
    fn the_nodes_own_networks_are_restricted() {
        use Restricted::*;
        for (ip, want) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("169.254.169.254", LinkLocal),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Private),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("ff02::1", Multicast),
            ("192.0.0.0", ProtocolAssignments),
            ("192.0.0.255", ProtocolAssignments),
            ("198.18.0.0", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("240.0.0.0", Reserved),
            ("255.255.255.254", Reserved),
        ] {
            assert_eq!(of(ip), Some(want), "{ip}");
        }
    }

    #[test]
    fn public_addresses_next_to_the_ranges_are_not() {
        for ip in [
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "223.255.255.255",
            "191.255.255.255",
            "192.0.1.0",
            "198.17.255.255",
            "198.20.0.0",
            "2001:db8::1",
            "2606:4700::1111",
            "fe7f::1",
            "fbff::1",
            "fe00::1",
            "::2:0:0:1",
        ] {
            assert_eq!(of(ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv4_written_as_ipv6_is_judged_as_ipv4() {
        assert_eq!(of("::ffff:127.0.0.1"), Some(Restricted::Loopback));
        assert_eq!(of("::ffff:169.254.169.254"), Some(Restricted::LinkLocal));
        assert_eq!(of("::ffff:10.1.2.3"), Some(Restricted::Private));
        assert_eq!(of("::127.0.0.1"), Some(Restricted::Loopback));
        assert_eq!(of("::192.168.0.1"), Some(Restricted::Private));
        assert_eq!(
            of("64:ff9b::100.64.0.1"),
            Some(Restricted::SharedAddressSpace)
        );
        assert_eq!(of("64:ff9b::7f00:1"), Some(Restricted::Loopback));
        assert_eq!(of("::ffff:1.1.1.1"), None);
        assert_eq!(of("64:ff9b::1.1.1.1"), None);
        assert_eq!(of("64:ff9b::198.18.0.1"), Some(Restricted::Benchmarking));
    }

    #[test]
    fn nat64_local_use_is_refused_whole_and_6to4_judged_by_its_ipv4_address() {
        use Restricted::*;
        // RFC 8215's local-use prefix, whatever the translation prefix length: under a /96 the
        // IPv4 address is in the last 32 bits, under a /64 (RFC 6052 §2.2) in bits 72-103,
        // `64:ff9b:1:0:a:0:500::` being 10.0.0.5 (bits 64-71 are the zero "u" octet).
        for ip in [
            "64:ff9b:1::127.0.0.1",
            "64:ff9b:1:abcd:0:1:10.0.0.1",
            "64:ff9b:1:ffff:ffff:ffff:169.254.169.254",
            "64:ff9b:1::1.1.1.1",
            "64:ff9b:1:0:a:0:500::",
            "64:ff9b:1:0:7f:0:100::",
            "64:ff9b:1:101:1:100::",
            "64:ff9b:1::",
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert_eq!(of(ip), Some(Nat64LocalUse), "{ip}");
        }
        // Next to it, outside both NAT64 prefixes: not IPv4.
        assert_eq!(of("64:ff9b:2::127.0.0.1"), None);
        assert_eq!(of("64:ff9a:ffff:ffff:ffff:ffff:7f00:1"), None);
        // 6to4: the IPv4 address follows the 2002::/16 prefix.
        assert_eq!(of("2002:7f00:1::"), Some(Loopback));
        assert_eq!(of("2002:a9fe:a9fe::1"), Some(LinkLocal));
        assert_eq!(of("2002:c0a8:101:1::1"), Some(Private));
        assert_eq!(of("2002:c612:1::"), Some(Benchmarking));
        assert_eq!(of("2002:101:101::1"), None);
        assert_eq!(of("2001:ffff:7f00:1::"), None);
        assert_eq!(of("2003:7f00:1::"), None);
    }
}
