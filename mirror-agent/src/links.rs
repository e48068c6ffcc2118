//! The node's interfaces: resolving sources (names, `eni-…` aliases of names or MACs, globs)
//! and following interfaces as they appear and disappear, from rtnetlink events rather than
//! by polling.

use std::{
    collections::BTreeMap,
    ffi::{CStr, CString},
    net::IpAddr,
};

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK},
    packet_route::link::LinkAttribute,
    sys::{AsyncSocket as _, SocketAddr},
};
use tokio::sync::mpsc;
use tracing::warn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
}

pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

fn exists(name: &str) -> bool {
    CString::new(name).is_ok_and(|c| {
        // SAFETY: a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
    })
}

/// The interface a name or alias designates, if it exists now.
pub fn resolve(name: &str, aliases: &BTreeMap<String, String>, links: &[Link]) -> Option<String> {
    let target = aliases.get(name).map_or(name, String::as_str);
    if is_mac(target) {
        let mac = target.to_ascii_lowercase();
        return links
            .iter()
            .find(|l| l.mac.as_deref() == Some(mac.as_str()))
            .map(|l| l.name.clone());
    }
    // The cache may lag a link created a moment ago; the kernel has the last word.
    (links.iter().any(|l| l.name == target) || exists(target)).then(|| target.to_string())
}

/// Interfaces a glob never selects, nor a subnet or vpc flow log: loopback, and the agent's
/// own tunnel devices and capture pairs (they carry copies of traffic already seen where it
/// was real; mirroring them would mirror copies).
pub fn is_agent_device(name: &str) -> bool {
    name == "lo"
        || crate::datapath::tunnel::is_device_name(name)
        || crate::datapath::segment::is_device_name(name)
        || crate::datapath::receive::is_capture_name(name)
}

/// The interface names a source stands for now: one for a name or alias (none if it does not
/// exist), every matching interface for a glob.
pub fn expand(spec: &str, aliases: &BTreeMap<String, String>, links: &[Link]) -> Vec<String> {
    if is_glob(spec) {
        let Ok(pattern) = glob::Pattern::new(spec) else {
            return Vec::new();
        };
        return links
            .iter()
            .filter(|l| !is_agent_device(&l.name) && pattern.matches(&l.name))
            .map(|l| l.name.clone())
            .collect();
    }
    resolve(spec, aliases, links).into_iter().collect()
}

pub async fn dump(handle: &rtnetlink::Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await? {
        let mut name = None;
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    mac = Some(
                        a.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    );
                }
                _ => {}
            }
        }
        if let Some(name) = name {
            out.push(Link {
                name,
                index: msg.header.index,
                mac,
            });
        }
    }
    Ok(out)
}

/// Subscribes to link and address changes; each event sends `()` (the receiver re-reads the
/// interfaces, so events only need to say "something changed").
pub fn watch() -> std::io::Result<mpsc::UnboundedReceiver<()>> {
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()?;
    let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            if tx.send(()).is_err() {
                break;
            }
        }
        warn!("rtnetlink event stream ended; interface changes are no longer followed");
    });
    Ok(rx)
}

/// Every address of an interface (link-local IPv6 excluded: never a VTEP or a subnet member).
pub fn interface_addresses(name: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur points into the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name from getifaddrs.
        let ifname = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if ifname.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: the family tells which sockaddr this is.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: AF_INET addresses are sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            out.push(IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ));
        } else if family == libc::AF_INET6 {
            // SAFETY: AF_INET6 addresses are sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            let addr = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            if (addr.segments()[0] & 0xffc0) != 0xfe80 {
                out.push(IpAddr::V6(addr));
            }
        }
    }
    // SAFETY: freeing the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// The first address of an interface, IPv4 preferred (a target given as a local interface).
pub fn interface_address(name: &str) -> Option<IpAddr> {
    let all = interface_addresses(name);
    all.iter()
        .find(|a| a.is_ipv4())
        .or_else(|| all.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<Link> {
        [
            "lo",
            "eth0",
            "lxc1a",
            "lxc2b",
            "mirvx4789",
            "mrx100",
            "mrx100-in",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| Link {
            name: n.to_string(),
            index: i as u32 + 1,
            mac: (*n == "eth0").then(|| "02:00:00:00:00:01".to_string()),
        })
        .collect()
    }

    #[test]
    fn globs_follow_interfaces_but_never_our_own_devices() {
        let l = links();
        let none = BTreeMap::new();
        assert_eq!(expand("lxc*", &none, &l), ["lxc1a", "lxc2b"]);
        assert_eq!(expand("*", &none, &l), ["eth0", "lxc1a", "lxc2b"]);
    }

    #[test]
    fn aliases_resolve_by_name_or_mac() {
        let l = links();
        let aliases = BTreeMap::from([
            ("eni-a".to_string(), "eth0".to_string()),
            ("eni-b".to_string(), "02:00:00:00:00:01".to_string()),
            ("eni-c".to_string(), "02:00:00:00:00:99".to_string()),
        ]);
        assert_eq!(resolve("eni-a", &aliases, &l).as_deref(), Some("eth0"));
        assert_eq!(resolve("eni-b", &aliases, &l).as_deref(), Some("eth0"));
        assert_eq!(resolve("eni-c", &aliases, &l), None);
        assert_eq!(resolve("no-such-if0", &aliases, &l), None);
    }
}
