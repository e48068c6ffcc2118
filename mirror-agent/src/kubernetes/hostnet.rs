//! Pod IP → the pod's host-side interface, from the host's routing state.
//!
//! Routed CNIs (Calico, kindnet, Cilium in its routed mode) install one host route per pod:
//! `10.1.2.3 dev cali… scope link`. Bridge CNIs (flannel's and the bridge plugin's `cni0`)
//! put the pods' IPs in one subnet on a Linux bridge instead, with no per-pod route: there
//! the pod's IP has a neighbour entry on the bridge (IP → MAC, learnt when the host talks to
//! the pod, e.g. kubelet's probes), and the bridge's forwarding database says which port
//! that MAC is behind: the pod's host veth.
//!
//! The resolution is a pure function of the tables ([`HostNet::interface_of`]), unit-tested
//! with tables; [`read`] is the thin rtnetlink dump that fills them at each plan.

use std::{collections::BTreeMap, net::IpAddr};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteScope, RouteType},
    },
};
use tracing::warn;

use crate::links;

/// The host's tables, with interface indexes already turned into names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNet {
    /// Host routes to single addresses through a device: pod IP → interface.
    pub host_routes: BTreeMap<IpAddr, String>,
    /// Link-scope subnet routes through a bridge (`10.244.0.0/24 dev cni0`).
    pub bridge_subnets: Vec<(IpNet, String)>,
    /// Usable neighbour entries (not failed or incomplete).
    pub neighbours: Vec<Neighbour>,
    /// The bridges' forwarding databases: entries learnt or set on their ports.
    pub fdb: Vec<FdbEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    /// The interface the entry is on (a bridge for a bridge CNI's pods).
    pub device: String,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub bridge: String,
    /// The bridge port the MAC is behind.
    pub port: String,
}

impl HostNet {
    /// The host interface of one pod IP, or why there is none (yet).
    pub fn resolve(&self, ip: IpAddr) -> Result<String, String> {
        if let Some(i) = self.host_routes.get(&ip) {
            return Ok(i.clone());
        }
        let Some((_, bridge)) = self
            .bridge_subnets
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
        else {
            return Err(format!("no host interface routes its IP {ip} yet"));
        };
        let Some(n) = self
            .neighbours
            .iter()
            .find(|n| n.ip == ip && &n.device == bridge)
        else {
            // Normal for a fresh pod the host has not talked to yet; the next plan (2 s)
            // looks again.
            return Err(format!("no neighbour entry for {ip} on {bridge} yet"));
        };
        self.fdb
            .iter()
            .find(|e| e.mac == n.mac && &e.bridge == bridge && &e.port != bridge)
            .map(|e| e.port.clone())
            .ok_or_else(|| {
                format!(
                    "no port of {bridge} has learnt {} (the MAC of {ip}) yet",
                    n.mac
                )
            })
    }

    /// The host interface of a pod with these IPs: the first that resolves; otherwise every
    /// IP's reason.
    pub fn interface_of(&self, ips: &[IpAddr]) -> Result<String, String> {
        if ips.is_empty() {
            return Err("it has no IP yet".into());
        }
        let mut why = Vec::new();
        for ip in ips {
            match self.resolve(*ip) {
                Ok(i) => return Ok(i),
                Err(e) => why.push(e),
            }
        }
        Err(why.join("; "))
    }
}

fn mac(bytes: &[u8]) -> Option<String> {
    (bytes.len() == 6).then(|| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A netlink dump's messages up to its end or its first error (logged).
async fn dump<T>(
    stream: impl futures::Stream<Item = Result<T, rtnetlink::Error>>,
    what: &str,
) -> Vec<T> {
    let mut out = Vec::new();
    futures::pin_mut!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => break,
            Err(e) => {
                warn!("listing {what} for pod interfaces: {e}");
                break;
            }
        }
    }
    out
}

/// Reads the routes, neighbours and bridge FDBs. A failed dump leaves its table short (and
/// says so in the log): the pods it would resolve are reported without an interface and the
/// next plan reads again.
pub async fn read(handle: &Handle, links_now: &[links::Link]) -> HostNet {
    let name = |index: u32| {
        links_now
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
    };
    let mut out = HostNet::default();

    // Bridges are the masters of FDB entries: read those first to know which subnet routes
    // are a bridge's.
    let fdb = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    for msg in dump(fdb, "bridge forwarding entries").await {
        let mut master = None;
        let mut addr = None;
        for a in &msg.attributes {
            match a {
                NeighbourAttribute::Controller(m) => master = Some(*m),
                NeighbourAttribute::LinkLayerAddress(l) => addr = mac(l),
                _ => {}
            }
        }
        // The bridge's own entries (port = the bridge) say nothing about a pod.
        let (Some(master), Some(addr)) = (master, addr) else {
            continue;
        };
        if master == msg.header.ifindex {
            continue;
        }
        if let (Some(bridge), Some(port)) = (name(master), name(msg.header.ifindex)) {
            out.fdb.push(FdbEntry {
                mac: addr,
                bridge,
                port,
            });
        }
    }

    for msg in dump(handle.neighbours().get().execute(), "neighbours").await {
        if matches!(
            msg.header.state,
            NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
        ) {
            continue;
        }
        let mut ip = None;
        let mut addr = None;
        for a in &msg.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    ip = Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    ip = Some(IpAddr::V6(*v6))
                }
                NeighbourAttribute::LinkLayerAddress(l) => addr = mac(l),
                _ => {}
            }
        }
        if let (Some(ip), Some(mac), Some(device)) = (ip, addr, name(msg.header.ifindex)) {
            out.neighbours.push(Neighbour { ip, device, mac });
        }
    }

    let dumps = [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ];
    for msg in dumps {
        for route in dump(handle.route().get(msg).execute(), "routes").await {
            let host_len = match route.header.address_family {
                AddressFamily::Inet => 32,
                _ => 128,
            };
            if route.header.kind != RouteType::Unicast || route.header.scope != RouteScope::Link {
                continue;
            }
            let mut dst = None;
            let mut oif = None;
            let mut gateway = false;
            for a in &route.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = route_address(d),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(_) => gateway = true,
                    _ => {}
                }
            }
            let (Some(dst), Some(oif), false) = (dst, oif, gateway) else {
                continue;
            };
            let Some(device) = name(oif) else { continue };
            if links::is_agent_device(&device) {
                continue;
            }
            let len = route.header.destination_prefix_length;
            if len == host_len {
                out.host_routes.insert(dst, device);
            } else if out.fdb.iter().any(|e| e.bridge == device)
                && let Ok(net) = IpNet::new(dst, len)
            {
                out.bridge_subnets.push((net.trunc(), device));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A flannel-like node: cni0 holds 10.244.1.0/24 and fd00:244:1::/64, two pods' veths
    /// are its ports; Calico-like host routes for two more pods; eth0's own subnet.
    fn host() -> HostNet {
        HostNet {
            host_routes: [(ip("10.1.0.2"), "cali1".to_string())].into(),
            bridge_subnets: vec![
                ("10.244.1.0/24".parse().unwrap(), "cni0".into()),
                ("fd00:244:1::/64".parse().unwrap(), "cni0".into()),
                // A longer prefix on another bridge wins.
                ("10.244.1.128/25".parse().unwrap(), "br-b".into()),
            ],
            neighbours: vec![
                Neighbour {
                    ip: ip("10.244.1.5"),
                    device: "cni0".into(),
                    mac: "0a:58:0a:f4:01:05".into(),
                },
                Neighbour {
                    ip: ip("fd00:244:1::6"),
                    device: "cni0".into(),
                    mac: "0a:58:0a:f4:01:06".into(),
                },
                // Known, but on another device than the pod's bridge.
                Neighbour {
                    ip: ip("10.244.1.7"),
                    device: "eth0".into(),
                    mac: "0a:58:0a:f4:01:07".into(),
                },
                // Known, but no port has learnt its MAC.
                Neighbour {
                    ip: ip("10.244.1.8"),
                    device: "cni0".into(),
                    mac: "0a:58:0a:f4:01:08".into(),
                },
                Neighbour {
                    ip: ip("10.244.1.130"),
                    device: "br-b".into(),
                    mac: "0a:58:0a:f4:01:82".into(),
                },
            ],
            fdb: vec![
                FdbEntry {
                    mac: "0a:58:0a:f4:01:05".into(),
                    bridge: "cni0".into(),
                    port: "veth1a2b".into(),
                },
                FdbEntry {
                    mac: "0a:58:0a:f4:01:06".into(),
                    bridge: "cni0".into(),
                    port: "veth3c4d".into(),
                },
                // The same MAC on another bridge does not count.
                FdbEntry {
                    mac: "0a:58:0a:f4:01:08".into(),
                    bridge: "br-other".into(),
                    port: "veth9".into(),
                },
                FdbEntry {
                    mac: "0a:58:0a:f4:01:82".into(),
                    bridge: "br-b".into(),
                    port: "vethb".into(),
                },
            ],
        }
    }

    #[test]
    fn pod_ips_resolve_through_host_routes_or_the_bridge() {
        let cases: &[(&str, &[&str], Result<&str, &str>)] = &[
            ("a per-pod host route", &["10.1.0.2"], Ok("cali1")),
            (
                "a bridge subnet: neighbour then FDB",
                &["10.244.1.5"],
                Ok("veth1a2b"),
            ),
            ("IPv6 on the bridge", &["fd00:244:1::6"], Ok("veth3c4d")),
            (
                "the longest subnet picks the bridge",
                &["10.244.1.130"],
                Ok("vethb"),
            ),
            (
                "the first IP that resolves wins",
                &["10.244.1.99", "fd00:244:1::6"],
                Ok("veth3c4d"),
            ),
            (
                "no neighbour entry yet",
                &["10.244.1.99"],
                Err("no neighbour entry for 10.244.1.99 on cni0 yet"),
            ),
            (
                "a neighbour on another device is not the bridge's",
                &["10.244.1.7"],
                Err("no neighbour entry for 10.244.1.7 on cni0 yet"),
            ),
            (
                "a neighbour whose MAC no port has learnt",
                &["10.244.1.8"],
                Err("no port of cni0 has learnt 0a:58:0a:f4:01:08 (the MAC of 10.244.1.8) yet"),
            ),
            (
                "neither a host route nor a bridge subnet",
                &["10.9.9.9"],
                Err("no host interface routes its IP 10.9.9.9 yet"),
            ),
            (
                "every IP's reason",
                &["10.9.9.9", "10.244.1.99"],
                Err(
                    "no host interface routes its IP 10.9.9.9 yet; no neighbour entry for 10.244.1.99 on cni0 yet",
                ),
            ),
            ("no IP", &[], Err("it has no IP yet")),
        ];
        let h = host();
        for (name, ips, want) in cases {
            let ips: Vec<IpAddr> = ips.iter().map(|s| ip(s)).collect();
            let got = h.interface_of(&ips);
            let want = want.map(str::to_string).map_err(str::to_string);
            assert_eq!(got, want, "{name}");
        }
    }

    fn sh(script: &str) -> std::process::Output {
        let out = std::process::Command::new("sh")
            .args(["-ec", script])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The rtnetlink reading against a real bridge (needs root; skipped otherwise): in a
    /// network namespace of the test's own (its thread's), a bridge holding 10.244.1.0/24
    /// with two ports, each pod's end of its veth in a namespace of its own (an `unshare -n`
    /// process: two pods in one namespace would answer ARP on either veth). A ping fills the neighbour table and the FDB for one pod; the other, never
    /// talked to, has no neighbour entry yet.
    #[test]
    fn a_bridged_pod_resolves_to_its_host_veth_on_a_real_bridge() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: moves this thread (and the processes it starts) into a new network
            // namespace; the thread ends with the test.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "skipped: no new network namespace: {}",
                    std::io::Error::last_os_error()
                );
                return;
            }
            let mut pods: Vec<std::process::Child> = (0..2)
                .map(|_| {
                    std::process::Command::new("unshare")
                        .args(["-n", "sleep", "60"])
                        .spawn()
                        .expect("unshare -n sleep")
                })
                .collect();
            let (pid5, pid6) = (pods[0].id(), pods[1].id());
            std::thread::sleep(std::time::Duration::from_millis(200));
            sh(&format!(
                "ip link set lo up
                 ip link add br0 type bridge
                 ip link set br0 up
                 ip addr add 10.244.1.1/24 dev br0
                 for pod in 5:{pid5} 6:{pid6}; do
                   i=${{pod%%:*}} pid=${{pod##*:}}
                   ip link add vethh$i type veth peer name vethp$i
                   ip link set vethh$i master br0 up
                   ip link set vethp$i netns $pid
                   nsenter -t $pid -n ip addr add 10.244.1.$i/24 dev vethp$i
                   nsenter -t $pid -n ip link set vethp$i up
                 done
                 ping -c 3 -i 0.2 -W 2 10.244.1.5 >/dev/null"
            ));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let host = rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
                tokio::spawn(conn);
                let links_now = links::dump(&handle).await.expect("links");
                read(&handle, &links_now).await
            });
            drop(rt);
            for p in &mut pods {
                let _ = p.kill();
                let _ = p.wait();
            }
            assert_eq!(
                host.interface_of(&[ip("10.244.1.5")]),
                Ok("vethh5".to_string()),
                "{host:?}"
            );
            assert_eq!(
                host.interface_of(&[ip("10.244.1.6")]),
                Err("no neighbour entry for 10.244.1.6 on br0 yet".to_string()),
                "{host:?}"
            );
            assert!(
                host.bridge_subnets
                    .contains(&("10.244.1.0/24".parse().unwrap(), "br0".to_string())),
                "{host:?}"
            );
        })
        .join()
        .expect("the test thread");
    }
}
