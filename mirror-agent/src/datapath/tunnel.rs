//! The VXLAN devices that encapsulate copies, and the path MTU toward a target.
//!
//! One device per target UDP port: the kernel takes the destination port from the device
//! (`bpf_skb_set_tunnel_key` cannot set it), everything else (VNI, remote) from the tunnel key
//! the encapsulation program sets, because the device is in external (collect_md) mode.

use std::{io, net::IpAddr};

use futures::TryStreamExt as _;
use rtnetlink::{Handle, LinkMessageBuilder, LinkVxlan};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TunnelError {
    #[error("netlink: {context}: {source}")]
    Netlink {
        context: String,
        source: rtnetlink::Error,
    },
    #[error("interface {0} exists and is not ours to reuse")]
    Foreign(String),
    #[error(
        "UDP port {port} is already taken in this network namespace{by}, so {name} cannot open it: give the target another DestinationPort, or free the port"
    )]
    PortTaken {
        port: u16,
        name: String,
        /// ", by VXLAN device(s) …" when we found who holds it.
        by: String,
    },
}

/// Name of the device for a UDP port, e.g. `mirvx4789`. Marks the device as the agent's own.
pub fn device_name(port: u16) -> String {
    format!("mirvx{port}")
}

pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        // The kernel answers ENODEV for an unknown name.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates (or finds) the external-mode VXLAN device for `port`, up, and returns its index.
pub async fn ensure_device(handle: &Handle, port: u16) -> Result<u32, TunnelError> {
    let name = device_name(port);
    let netlink = |context: &str| {
        let context = format!("{context} {name}");
        move |source| TunnelError::Netlink { context, source }
    };
    if let Some(index) = link_index(handle, &name)
        .await
        .map_err(netlink("looking up"))?
    {
        return Ok(index);
    }
    let msg = LinkMessageBuilder::<LinkVxlan>::new(&name)
        .port(port)
        .collect_metadata(true)
        // Copies have no business being learned or answered: no FDB, no ARP.
        .learning(false)
        .arp(false)
        .up()
        .build();
    match handle.link().add(msg).execute().await {
        Ok(()) => {}
        // The device opens its UDP socket when it comes up; a VXLAN device of another kind
        // (not external) or any other socket on the port makes that fail.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRINUSE => {
            let holders = vxlan_devices_on(handle, port).await;
            return Err(TunnelError::PortTaken {
                port,
                name,
                by: if holders.is_empty() {
                    String::new()
                } else {
                    format!(", by VXLAN device {}", holders.join(", "))
                },
            });
        }
        Err(e) => return Err(netlink("creating")(e)),
    }
    link_index(handle, &name)
        .await
        .map_err(netlink("looking up new"))?
        .ok_or_else(|| TunnelError::Foreign(name.clone()))
}

/// Names of the VXLAN devices in this namespace whose UDP port is `port`.
async fn vxlan_devices_on(handle: &Handle, port: u16) -> Vec<String> {
    use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
    let mut out = Vec::new();
    let mut links = handle.link().get().execute();
    while let Ok(Some(msg)) = links.try_next().await {
        let mut name = None;
        let mut uses_port = false;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(v)) = info {
                            uses_port |= v
                                .iter()
                                .any(|a| matches!(a, InfoVxlan::Port(p) if *p == port));
                        }
                    }
                }
                _ => {}
            }
        }
        if uses_port && let Some(n) = name {
            out.push(n);
        }
    }
    out
}

pub async fn delete_device(handle: &Handle, port: u16) -> Result<(), TunnelError> {
    let name = device_name(port);
    let netlink = |source| TunnelError::Netlink {
        context: format!("deleting {name}"),
        source,
    };
    if let Some(index) = link_index(handle, &name).await.map_err(netlink)? {
        handle.link().del(index).execute().await.map_err(netlink)?;
    }
    Ok(())
}

/// True if the named interface is an agent VXLAN device (so tests and cleanup can find them).
pub fn is_device_name(name: &str) -> bool {
    name.strip_prefix("mirvx")
        .is_some_and(|p| p.parse::<u16>().is_ok())
}

/// The MTU of the route toward `dst`, as the kernel would use for the outer packet. A
/// connected UDP socket asks the routing table without sending anything.
pub fn path_mtu(dst: IpAddr, port: u16) -> io::Result<u32> {
    let sock = std::net::UdpSocket::bind(match dst {
        IpAddr::V4(_) => "0.0.0.0:0",
        IpAddr::V6(_) => "[::]:0",
    })?;
    sock.connect((dst, port))?;
    let (level, name) = match dst {
        IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    use std::os::fd::AsRawFd as _;
    // SAFETY: valid socket, and an int-sized output buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mtu as u32)
}
