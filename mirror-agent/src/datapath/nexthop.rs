//! The fast path's next hop toward a target, from the kernel's own tables: the route
//! (`ip route get`: output interface, gateway, preferred source) and the neighbour entry of
//! the next hop (its MAC). The agent writes the result into the session's outer-header
//! template and checks it again every second, so a route or neighbour change moves the
//! copies within a second; until a neighbour is known the copies take the tunnel device,
//! whose own sends make the kernel resolve it.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteType},
    },
};

use super::encode::FastPath;

/// Why a target has no fast path (shown in List as the session's data-path reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// IPv6 targets: the outer UDP checksum is mandatory there, so the kernel's device sends.
    Ipv6,
    NoRoute(String),
    /// Local, broadcast or otherwise not a unicast route through a device with an address.
    NotUnicast,
    /// No usable neighbour entry for the next hop yet.
    Neighbour(Ipv4Addr),
    Netlink(String),
    /// `copy_path = "tunnel"`.
    Configured,
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::Ipv6 => write!(f, "IPv6 target (the kernel's VXLAN device sends)"),
            Unresolved::NoRoute(e) => write!(f, "no route to the target: {e}"),
            Unresolved::NotUnicast => write!(f, "the route to the target is not a unicast route"),
            Unresolved::Neighbour(nh) => write!(f, "next hop {nh} not resolved yet"),
            Unresolved::Netlink(e) => write!(f, "netlink: {e}"),
            Unresolved::Configured => write!(f, "copy_path is tunnel"),
        }
    }
}

/// Resolves the fast path toward `target`.
pub async fn resolve(handle: &Handle, target: IpAddr) -> Result<FastPath, Unresolved> {
    let IpAddr::V4(dst) = target else {
        return Err(Unresolved::Ipv6);
    };
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 32)
        .build();
    let route = handle
        .route()
        .get(msg)
        .execute()
        .try_next()
        .await
        .map_err(|e| Unresolved::NoRoute(e.to_string()))?
        .ok_or_else(|| Unresolved::NoRoute("no answer".into()))?;
    if route.header.kind != RouteType::Unicast {
        return Err(Unresolved::NotUnicast);
    }
    let mut oif = None;
    let mut gateway = None;
    let mut src = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::PrefSource(RouteAddress::Inet(s)) => src = Some(*s),
            _ => {}
        }
    }
    let (Some(oif), Some(src)) = (oif, src) else {
        return Err(Unresolved::NotUnicast);
    };
    let next_hop = gateway.unwrap_or(dst);
    let mut eth_dst = neighbour(handle, oif, next_hop).await?;
    if eth_dst.is_none() {
        // Ask the kernel to resolve it now (as if traffic used the entry), and give it a
        // moment: on a LAN that takes well under a millisecond, and the copies that would
        // otherwise queue for resolution behind the tunnel device overflow its small queue.
        probe(handle, oif, next_hop).await;
        for _ in 0..PROBE_CHECKS {
            tokio::time::sleep(PROBE_WAIT).await;
            eth_dst = neighbour(handle, oif, next_hop).await?;
            if eth_dst.is_some() {
                break;
            }
        }
    }
    let eth_dst = eth_dst.ok_or(Unresolved::Neighbour(next_hop))?;
    let eth_src = link_mac(handle, oif).await?.ok_or(Unresolved::NotUnicast)?;
    Ok(FastPath {
        uplink_ifindex: oif,
        eth_dst,
        eth_src,
        src,
    })
}

const PROBE_CHECKS: usize = 5;
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// `NTF_USE`: the kernel treats the entry as used by traffic and starts resolving it; no
/// packet of ours is sent.
async fn probe(handle: &Handle, ifindex: u32, addr: Ipv4Addr) {
    let req = handle
        .neighbours()
        .add(ifindex, IpAddr::V4(addr))
        .flags(NeighbourFlags::Use)
        .state(NeighbourState::None)
        .replace();
    if let Err(e) = req.execute().await {
        tracing::debug!(next_hop = %addr, "neighbour probe: {e}");
    }
}

async fn neighbour(
    handle: &Handle,
    ifindex: u32,
    addr: Ipv4Addr,
) -> Result<Option<[u8; 6]>, Unresolved> {
    let mut dump = handle
        .neighbours()
        .get()
        .set_address_family(rtnetlink::packet_route::AddressFamily::Inet)
        .execute();
    while let Some(n) = dump
        .try_next()
        .await
        .map_err(|e| Unresolved::Netlink(e.to_string()))?
    {
        if n.header.ifindex != ifindex {
            continue;
        }
        // Entries the kernel would send with; STALE/DELAY/PROBE still hold a valid address.
        if !matches!(
            n.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        ) {
            continue;
        }
        let mut dst = None;
        let mut mac = None;
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(*d),
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(l);
                    mac = Some(m);
                }
                _ => {}
            }
        }
        if dst == Some(addr) && mac.is_some() {
            return Ok(mac);
        }
    }
    Ok(None)
}

/// The interface's own MAC; None for devices without an Ethernet address (the fast path
/// writes an Ethernet header, so those take the tunnel device).
async fn link_mac(handle: &Handle, ifindex: u32) -> Result<Option<[u8; 6]>, Unresolved> {
    let mut links = handle.link().get().match_index(ifindex).execute();
    let Some(msg) = links
        .try_next()
        .await
        .map_err(|e| Unresolved::Netlink(e.to_string()))?
    else {
        return Ok(None);
    };
    Ok(msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(l) if l.len() == 6 => {
            let mut m = [0u8; 6];
            m.copy_from_slice(l);
            Some(m)
        }
        _ => None,
    }))
}
