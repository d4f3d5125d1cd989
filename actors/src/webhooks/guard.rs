//! The SSRF guard: webhook targets must be http(s) URLs whose host is a
//! public unicast address, unless private targets are allowed
//! (`webhooks.allow_private`, for tests and trusted networks).
//!
//! A webhook URL is chosen by whoever holds an API key, and the server
//! POSTs to it from inside the operator's network. Without the guard that
//! is a way to reach the cloud metadata service, an admin port on
//! loopback, or anything else on the private network. The guard acts at
//! two points:
//!
//! * [`check_target`], when a subscription is created (a refusal is a 422
//!   on the `url` field) and again before every delivery attempt. It
//!   checks the scheme and credentials, and that every address the host
//!   resolves to is allowed. Literal-IP URLs are judged here only: the
//!   HTTP client connects to them without resolving anything.
//! * [`GuardedResolver`], the HTTP client's only DNS resolver. Checking a
//!   name and then letting the client resolve it again leaves a window in
//!   which the name can be re-pointed (DNS rebinding): the check sees a
//!   public address, the connection goes to `127.0.0.1`. The client
//!   therefore resolves through the guard, which hands it only the
//!   addresses it allows; so what is checked is what is connected to.
//!
//! What is refused is [`SPECIAL`]: the IANA IPv4 and IPv6 Special-Purpose
//! Address Registries' blocks, plus multicast and the other reserved
//! ranges, whatever their "globally reachable" flag says. A webhook
//! receiver has no business at an anycast relay, a documentation address
//! or a NAT64 local-use prefix, and refusing a whole block is simpler to
//! audit than carving exceptions out of it.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Checks that a new subscription's URL is taken as written: the parser
/// would quietly drop surrounding spaces and control characters, read `\`
/// as `/`, and find a host after `http:` or `http:///` that the text does
/// not show. Only at subscription: a target stored before these rules
/// keeps being delivered to ([`check_target`] runs before every attempt).
pub fn check_written(text: &str) -> Result<(), String> {
    if text.starts_with(' ') || text.ends_with(' ') || text.chars().any(char::is_control) {
        return Err("the URL must not have surrounding spaces or control characters".into());
    }
    if text.contains('\\') {
        return Err("the URL must not contain a backslash".into());
    }
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        text.get(..scheme.len())
            .filter(|head| head.eq_ignore_ascii_case(scheme))
            .map(|_| &text[scheme.len()..])
    });
    match rest {
        None => Err("only http:// and https:// URLs are allowed".into()),
        Some(rest) if rest.is_empty() || rest.starts_with('/') => Err("the URL has no host".into()),
        Some(_) => Ok(()),
    }
}

/// Parses and checks a target URL, resolving its host.
///
/// Every address the host resolves to must be allowed: a name that also
/// points inside is refused outright, rather than left to the resolver to
/// filter, so a subscription is never accepted for a target that is only
/// partly public.
pub async fn check_target(text: &str, allow_private: bool) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("only http and https URLs are allowed".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed".into());
    }
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let host = url.host().ok_or("the URL has no host")?.to_owned();
    if allow_private {
        return Ok(url);
    }
    // The URL parser has already turned every IPv4 spelling ("2130706433",
    // "0x7f.1") into a literal address, which the client will not resolve.
    let (name, addresses) = match host {
        Host::Ipv4(v4) => (v4.to_string(), vec![IpAddr::V4(v4)]),
        Host::Ipv6(v6) => (v6.to_string(), vec![IpAddr::V6(v6)]),
        Host::Domain(domain) => {
            let addresses: Vec<IpAddr> = tokio::net::lookup_host((domain.as_str(), port))
                .await
                .map_err(|e| format!("cannot resolve {domain}: {e}"))?
                .map(|a| a.ip())
                .collect();
            (domain, addresses)
        }
    };
    if addresses.is_empty() {
        return Err(format!("{name} resolves to no address"));
    }
    match addresses.into_iter().find_map(refusal) {
        Some(refusal) if refusal.ip.to_string() == name => Err(format!(
            "{refusal} (set webhooks.allow_private to allow it)"
        )),
        Some(refusal) => Err(format!(
            "{name} resolves to {refusal} (set webhooks.allow_private to allow it)"
        )),
        None => Ok(url),
    }
}

/// The HTTP client webhook deliveries go through: bounded by `timeout`,
/// never following a redirect (a 3xx is an answer, not a new target the
/// guard has not seen), never using a proxy (a proxy would resolve and
/// connect to the target itself, out of the guard's sight), and
/// resolving names only through a [`GuardedResolver`].
pub fn client(timeout: Duration, allow_private: bool) -> reqwest::Result<reqwest::Client> {
    client_with(timeout, GuardedResolver::system(allow_private))
}

fn client_with(timeout: Duration, resolver: GuardedResolver) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(resolver))
        .build()
}

/// What a lookup of one host name yields.
type Lookup = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// A DNS resolver for the HTTP client that returns only the addresses the
/// guard allows, so the client connects to nothing the guard has not
/// approved (see the module docs on DNS rebinding). When nothing allowed
/// is left the lookup fails with the reason, and the attempt fails and is
/// recorded like any other connection failure.
pub struct GuardedResolver {
    allow_private: bool,
    /// Resolves a host name; the system resolver but for tests.
    lookup: fn(String) -> Lookup,
}

impl GuardedResolver {
    /// Over the system resolver (`getaddrinfo`, on tokio's blocking pool).
    pub fn system(allow_private: bool) -> Self {
        Self {
            allow_private,
            lookup: system_lookup,
        }
    }
}

fn system_lookup(host: String) -> Lookup {
    Box::pin(async move {
        Ok(tokio::net::lookup_host((host.as_str(), 0))
            .await?
            .map(|a| a.ip())
            .collect())
    })
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup = (self.lookup)(host.clone());
        let allow_private = self.allow_private;
        Box::pin(async move {
            let resolved = lookup.await?;
            let allowed = allowed_addresses(&host, resolved, allow_private)?;
            // Port 0: the client puts in the URL's port.
            let addrs: Addrs = Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The addresses of `resolved` that may be connected to, or why none may.
fn allowed_addresses(
    host: &str,
    resolved: Vec<IpAddr>,
    allow_private: bool,
) -> Result<Vec<IpAddr>, String> {
    if resolved.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    if allow_private {
        return Ok(resolved);
    }
    let (allowed, refused): (Vec<IpAddr>, Vec<IpAddr>) =
        resolved.into_iter().partition(|ip| is_public(*ip));
    let reasons = || {
        refused
            .iter()
            .filter_map(|ip| refusal(*ip))
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    if allowed.is_empty() {
        return Err(format!(
            "refused to connect to {host}: it resolves only to refused addresses: {} \
             (set webhooks.allow_private to allow them)",
            reasons()
        ));
    }
    if !refused.is_empty() {
        tracing::warn!(host, refused = %reasons(), "webhook target also resolves to refused addresses; not connecting to them");
    }
    Ok(allowed)
}

/// Whether `ip` is a public unicast address: one in no block of
/// [`SPECIAL`] (for the IPv4-mapped and NAT64 forms, whose embedded IPv4
/// address is in none).
pub fn is_public(ip: IpAddr) -> bool {
    refusal(ip).is_none()
}

/// What to do with an address in a special block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Never connect to it.
    Refuse,
    /// Its last 32 bits are an IPv4 address that is what is really
    /// reached: judge that one.
    Embedded,
}

/// One special-purpose block.
#[derive(Debug)]
pub struct Block {
    /// The block.
    pub net: IpNet,
    /// Its name in the registry.
    pub name: &'static str,
    /// Where it is defined.
    pub rfc: &'static str,
    rule: Rule,
}

const fn v4(
    octets: [u8; 4],
    prefix: u8,
    rule: Rule,
    name: &'static str,
    rfc: &'static str,
) -> Block {
    let [a, b, c, d] = octets;
    Block {
        net: IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)),
        name,
        rfc,
        rule,
    }
}

const fn v6(
    segments: [u16; 8],
    prefix: u8,
    rule: Rule,
    name: &'static str,
    rfc: &'static str,
) -> Block {
    let [a, b, c, d, e, f, g, h] = segments;
    Block {
        net: IpNet::V6(Ipv6Net::new_assert(
            Ipv6Addr::new(a, b, c, d, e, f, g, h),
            prefix,
        )),
        name,
        rfc,
        rule,
    }
}

use Rule::{Embedded, Refuse};

/// The blocks the guard refuses unless `webhooks.allow_private` is set:
/// the IANA IPv4 and IPv6 Special-Purpose Address Registries, multicast,
/// and the reserved ranges. Blocks may overlap (the registries nest some
/// inside others); an address is refused if any block holding it refuses.
#[rustfmt::skip]
pub const SPECIAL: &[Block] = &[
    // IPv4 Special-Purpose Address Registry (RFC 6890), and multicast.
    v4([0, 0, 0, 0], 8,              Refuse, "\"this network\"", "RFC 791 §3.2"),
    v4([10, 0, 0, 0], 8,             Refuse, "private-use", "RFC 1918"),
    v4([100, 64, 0, 0], 10,          Refuse, "shared address space (carrier-grade NAT)", "RFC 6598"),
    v4([127, 0, 0, 0], 8,            Refuse, "loopback", "RFC 1122 §3.2.1.3"),
    v4([169, 254, 0, 0], 16,         Refuse, "link-local (cloud metadata services live here)", "RFC 3927"),
    v4([172, 16, 0, 0], 12,          Refuse, "private-use", "RFC 1918"),
    v4([192, 0, 0, 0], 24,           Refuse, "IETF protocol assignments", "RFC 6890 §2.1"),
    v4([192, 0, 2, 0], 24,           Refuse, "documentation (TEST-NET-1)", "RFC 5737"),
    v4([192, 31, 196, 0], 24,        Refuse, "AS112-v4", "RFC 7535"),
    v4([192, 52, 193, 0], 24,        Refuse, "AMT", "RFC 7450"),
    v4([192, 88, 99, 0], 24,         Refuse, "deprecated 6to4 relay anycast", "RFC 7526"),
    v4([192, 168, 0, 0], 16,         Refuse, "private-use", "RFC 1918"),
    v4([192, 175, 48, 0], 24,        Refuse, "direct delegation AS112 service", "RFC 7534"),
    v4([198, 18, 0, 0], 15,          Refuse, "benchmarking", "RFC 2544"),
    v4([198, 51, 100, 0], 24,        Refuse, "documentation (TEST-NET-2)", "RFC 5737"),
    v4([203, 0, 113, 0], 24,         Refuse, "documentation (TEST-NET-3)", "RFC 5737"),
    v4([224, 0, 0, 0], 4,            Refuse, "multicast", "RFC 5771"),
    v4([240, 0, 0, 0], 4,            Refuse, "reserved", "RFC 1112 §4"),
    v4([255, 255, 255, 255], 32,     Refuse, "limited broadcast", "RFC 919 §7, RFC 8190"),
    // IPv6 Special-Purpose Address Registry (RFC 6890), and multicast.
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128,              Refuse, "unspecified", "RFC 4291 §2.5.2"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128,              Refuse, "loopback", "RFC 4291 §2.5.3"),
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96,               Refuse, "IPv4-compatible (deprecated)", "RFC 4291 §2.5.5.1"),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96,          Embedded, "IPv4-mapped", "RFC 4291 §2.5.5.2"),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96,       Embedded, "NAT64 well-known prefix", "RFC 6052"),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48,       Refuse, "NAT64 local-use prefix", "RFC 8215"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64,           Refuse, "discard-only", "RFC 6666"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23,          Refuse, "IETF protocol assignments", "RFC 2928"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32,          Refuse, "Teredo", "RFC 4380"),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48,          Refuse, "benchmarking", "RFC 5180"),
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28,       Refuse, "ORCHID (deprecated)", "RFC 4843"),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28,       Refuse, "ORCHIDv2", "RFC 7343"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32,      Refuse, "documentation", "RFC 3849"),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16,          Refuse, "6to4 (reaches an IPv4 address through a relay)", "RFC 3056"),
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48,  Refuse, "direct delegation AS112 service", "RFC 7534"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20,          Refuse, "documentation", "RFC 9637"),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16,          Refuse, "segment routing SIDs", "RFC 9602"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7,           Refuse, "unique-local", "RFC 4193"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10,          Refuse, "link-local unicast", "RFC 4291 §2.5.6"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10,          Refuse, "site-local (deprecated, still private where used)", "RFC 3879"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8,           Refuse, "multicast", "RFC 4291 §2.7"),
];

/// Why an address is refused.
#[derive(Debug)]
struct Refusal {
    /// The address asked about.
    ip: IpAddr,
    /// The IPv4 address it embeds, when that is what was refused.
    embedded: Option<Ipv4Addr>,
    block: &'static Block,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Block { net, name, rfc, .. } = self.block;
        match self.embedded {
            Some(v4) => write!(f, "{}, which embeds {v4}, {name} ({net}, {rfc})", self.ip),
            None => write!(f, "{}, {name} ({net}, {rfc})", self.ip),
        }
    }
}

/// The block that refuses `ip`, if any.
fn refusal(ip: IpAddr) -> Option<Refusal> {
    let blocks = || SPECIAL.iter().filter(move |b| b.net.contains(&ip));
    if let Some(block) = blocks().find(|b| b.rule == Refuse) {
        return Some(Refusal {
            ip,
            embedded: None,
            block,
        });
    }
    let IpAddr::V6(v6) = ip else { return None };
    blocks().find(|b| b.rule == Embedded)?;
    let [.., a, b, c, d] = v6.octets();
    let embedded = Ipv4Addr::new(a, b, c, d);
    let inner = refusal(IpAddr::V4(embedded))?;
    Some(Refusal {
        ip,
        embedded: Some(embedded),
        block: inner.block,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::str::FromStr;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The first and last address of a block.
    fn ends(net: IpNet) -> [IpAddr; 2] {
        [net.network(), net.broadcast()]
    }

    #[test]
    fn every_special_block_is_refused_at_both_ends() {
        for block in SPECIAL {
            for address in ends(block.net) {
                // An embedded-IPv4 block is refused where the IPv4 address
                // it embeds is: both its ends embed 0.0.0.0/8 or 240.0.0.0/4.
                assert!(!is_public(address), "{address} in {}", block.net);
            }
        }
    }

    #[test]
    fn the_required_blocks_are_in_the_table() {
        let table: Vec<String> = SPECIAL.iter().map(|b| b.net.to_string()).collect();
        for net in [
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.31.196.0/24",
            "192.52.193.0/24",
            "192.88.99.0/24",
            "192.168.0.0/16",
            "192.175.48.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "255.255.255.255/32",
            "::/128",
            "::1/128",
            "::ffff:0.0.0.0/96",
            "64:ff9b::/96",
            "64:ff9b:1::/48",
            "100::/64",
            "2001::/23",
            "2001::/32",
            "2001:2::/48",
            "2001:db8::/32",
            "2002::/16",
            "2620:4f:8000::/48",
            "3fff::/20",
            "5f00::/16",
            "fc00::/7",
            "fe80::/10",
            "ff00::/8",
            "::/96",
        ] {
            assert!(table.contains(&net.to_owned()), "{net} missing");
        }
        for block in SPECIAL {
            // Written as networks, not as an address inside one.
            assert_eq!(block.net, block.net.trunc(), "{}", block.net);
            assert!(block.rfc.starts_with("RFC "), "{}", block.net);
        }
    }

    #[test]
    fn special_addresses_are_refused() {
        for text in [
            // IPv4, first and last of a few blocks, and some in between.
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.0",
            "10.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.0.0",
            "169.254.169.254",
            "169.254.255.255",
            "172.16.0.0",
            "172.31.255.255",
            "192.0.0.0",
            "192.0.0.255",
            "192.0.2.1",
            "192.31.196.1",
            "192.52.193.1",
            "192.88.99.1",
            "192.168.0.0",
            "192.168.255.255",
            "192.175.48.1",
            "198.18.0.0",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.7",
            "224.0.0.0",
            "239.255.255.255",
            "240.0.0.0",
            "255.255.255.254",
            "255.255.255.255",
            // IPv6.
            "::",
            "::1",
            "::2",
            "::a00:1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:192.168.1.1",
            "64:ff9b::7f00:1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::",
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
            "64:ff9b:1::808:808",
            "100::",
            "100::ffff:ffff:ffff:ffff",
            "2001::",
            "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "2001:db8::",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            "2002::",
            "2002:808:808::1",
            "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "2620:4f:8000::1",
            "3fff::",
            "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
            "5f00::1",
            "fc00::",
            "fd00::1",
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe80::",
            "fe80::1",
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fec0::1",
            "ff00::",
            "ff02::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(!is_public(ip(text)), "{text} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for text in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2001:200::1",
            "2620:4f:8001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(is_public(ip(text)), "{text} should be allowed");
        }
    }

    #[test]
    fn refusals_name_the_block_and_the_embedded_address() {
        let loopback = refusal(ip("127.0.0.1")).unwrap().to_string();
        assert_eq!(
            loopback,
            "127.0.0.1, loopback (127.0.0.0/8, RFC 1122 §3.2.1.3)"
        );
        let mapped = refusal(ip("::ffff:169.254.169.254")).unwrap().to_string();
        assert!(
            mapped.contains("embeds 169.254.169.254, link-local"),
            "{mapped}"
        );
        assert!(refusal(ip("8.8.8.8")).is_none());
    }

    #[tokio::test]
    async fn urls_must_be_http_and_not_point_inside() {
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "http://127.0.0.1:9/hook",
            "http://2130706433/hook",
            "http://0x7f.1/hook",
            "http://[::1]/hook",
            "http://[::ffff:10.0.0.1]/hook",
            "http://[64:ff9b::a9fe:a9fe]/hook",
            "http://[2002:7f00:1::]/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost/hook",
            "http://user:pw@example.com/",
            "not a url",
        ] {
            assert!(check_target(bad, false).await.is_err(), "{bad}");
        }
        let refused = check_target("http://[::ffff:10.0.0.1]/", false)
            .await
            .unwrap_err();
        assert!(refused.contains("private-use"), "{refused}");
        assert!(refused.contains("webhooks.allow_private"), "{refused}");
        // Literal public addresses are judged without any lookup.
        assert!(check_target("https://8.8.8.8/hook", false).await.is_ok());
        assert!(check_target("https://[2606:4700:4700::1111]/", false)
            .await
            .is_ok());
        assert!(check_target("http://127.0.0.1:9/hook", true).await.is_ok());
        assert!(check_target("ftp://127.0.0.1/", true).await.is_err());
        // Taken as written: what the parser would drop is refused.
        for loose in [
            " http://127.0.0.1/",
            "http://127.0.0.1/ ",
            "http:127.0.0.1/",
            "http:///127.0.0.1/",
            "http://127.0.0.1\\x",
            "http://127.0.0.1/a\tb",
        ] {
            assert!(check_written(loose).is_err(), "{loose:?}");
            // One stored before the rule is still delivered to.
            assert!(check_target(loose, true).await.is_ok(), "{loose:?}");
        }
    }

    /// A name that resolves to loopback and to a public address, or only
    /// to private ones: what DNS rebinding serves.
    fn fake_lookup(host: String) -> Lookup {
        Box::pin(async move {
            Ok(match host.as_str() {
                "mixed.test" => vec![ip("127.0.0.1"), ip("93.184.216.34")],
                "inside.test" => vec![ip("127.0.0.1"), ip("10.0.0.1"), ip("::ffff:192.168.0.1")],
                "nothing.test" => vec![],
                _ => vec![ip("127.0.0.1")],
            })
        })
    }

    fn resolver(allow_private: bool) -> GuardedResolver {
        GuardedResolver {
            allow_private,
            lookup: fake_lookup,
        }
    }

    async fn resolve(resolver: &GuardedResolver, host: &str) -> Result<Vec<IpAddr>, String> {
        resolver
            .resolve(Name::from_str(host).unwrap())
            .await
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn the_resolver_returns_only_allowed_addresses() {
        let guarded = resolver(false);
        assert_eq!(
            resolve(&guarded, "mixed.test").await,
            Ok(vec![ip("93.184.216.34")])
        );
        let refused = resolve(&guarded, "inside.test").await.unwrap_err();
        assert!(
            refused.contains("refused to connect to inside.test"),
            "{refused}"
        );
        assert!(refused.contains("127.0.0.1, loopback"), "{refused}");
        assert!(refused.contains("10.0.0.1, private-use"), "{refused}");
        assert!(refused.contains("embeds 192.168.0.1"), "{refused}");
        assert!(resolve(&guarded, "nothing.test").await.is_err());

        let open = resolver(true);
        assert_eq!(
            resolve(&open, "mixed.test").await,
            Ok(vec![ip("127.0.0.1"), ip("93.184.216.34")])
        );
        assert_eq!(resolve(&open, "inside.test").await.map(|a| a.len()), Ok(3));
    }

    /// The client built for deliveries resolves through the guard: a name
    /// that resolves to loopback is not connected to, unless private
    /// targets are allowed. Traffic goes to 127.0.0.1 only.
    #[tokio::test]
    async fn the_delivery_client_connects_only_where_the_guard_allows() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("http://rebind.test:{port}/hook");
        let timeout = Duration::from_secs(5);

        let guarded = client_with(timeout, resolver(false)).unwrap();
        let error = guarded.get(&url).send().await.unwrap_err();
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(s) = source {
            chain = format!("{chain}: {s}");
            source = s.source();
        }
        assert!(error.is_connect(), "{chain}");
        assert!(
            chain.contains("refused to connect to rebind.test"),
            "{chain}"
        );
        assert!(chain.contains("127.0.0.1, loopback"), "{chain}");
        let nobody = listener.accept().map(|_| ()).map_err(|e| e.kind());
        assert_eq!(nobody, Err(io::ErrorKind::WouldBlock));

        listener.set_nonblocking(false).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "the client hung up");
                request.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(
                    b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let open = client_with(timeout, resolver(true)).unwrap();
        let response = open.get(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 204);
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /hook HTTP/1.1"), "{request}");
    }
}
