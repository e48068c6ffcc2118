//! The end-to-end topology: a workload namespace, the node that runs the agent, and a
//! collector that receives the copies.
//!
//! ```text
//!  wl (workload)           node (agent runs here)             col (collector)
//!  wl0 198.18.10.2 ─veth─ src0 198.18.10.1   up0 198.18.20.1 ─veth─ col0 198.18.20.2
//!      fd00:10::2              fd00:10::1
//!  wl2 (workload 2)
//!  w20 198.18.11.2 ─veth─ src1 198.18.11.1
//!                              fd00:20::1                    fd00:20::2
//!                          mirvx4789 (created by the agent)
//! ```
//!
//! The node routes between the workload and the collector, so `up0` is also the route the
//! copies take: making it a source is the mirror-loop case.

use std::net::UdpSocket;

use crate::netns::{NetNs, in_netns};

pub const WL_ADDR: &str = "198.18.10.2";
pub const WL2_ADDR: &str = "198.18.11.2";
pub const NODE_SRC1_ADDR: &str = "198.18.11.1";
pub const NODE_SRC_ADDR: &str = "198.18.10.1";
pub const WL_ADDR6: &str = "fd00:10::2";
pub const NODE_SRC_ADDR6: &str = "fd00:10::1";
pub const NODE_UP_ADDR: &str = "198.18.20.1";
pub const COLLECTOR_ADDR: &str = "198.18.20.2";
pub const NODE_UP_ADDR6: &str = "fd00:20::1";
pub const COLLECTOR_ADDR6: &str = "fd00:20::2";

pub struct Topology {
    pub wl: NetNs,
    pub wl2: NetNs,
    pub node: NetNs,
    pub col: NetNs,
    /// Bound to UDP 4789 in the collector so copies are consumed instead of drawing ICMP
    /// port-unreachable errors back at the node.
    _vxlan_sink: UdpSocket,
    _vxlan_sink6: UdpSocket,
}

impl Topology {
    pub fn new() -> Topology {
        let wl = NetNs::new("wl");
        let wl2 = NetNs::new("wl2");
        let node = NetNs::new("node");
        let col = NetNs::new("col");
        wl.veth_to(
            &node,
            "wl0",
            "src0",
            Some(&format!("{WL_ADDR}/24")),
            Some(&format!("{NODE_SRC_ADDR}/24")),
        );
        wl.add_addr("wl0", &format!("{WL_ADDR6}/64"));
        node.add_addr("src0", &format!("{NODE_SRC_ADDR6}/64"));
        node.veth_to(
            &col,
            "up0",
            "col0",
            Some(&format!("{NODE_UP_ADDR}/24")),
            Some(&format!("{COLLECTOR_ADDR}/24")),
        );
        wl2.veth_to(
            &node,
            "w20",
            "src1",
            Some(&format!("{WL2_ADDR}/24")),
            Some(&format!("{NODE_SRC1_ADDR}/24")),
        );
        node.add_addr("up0", &format!("{NODE_UP_ADDR6}/64"));
        col.add_addr("col0", &format!("{COLLECTOR_ADDR6}/64"));
        wl.exec(&["ip", "route", "add", "default", "via", NODE_SRC_ADDR]);
        wl2.exec(&["ip", "route", "add", "default", "via", NODE_SRC1_ADDR]);
        col.exec(&["ip", "route", "add", "default", "via", NODE_UP_ADDR]);
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let sink = in_netns(&col, || {
            UdpSocket::bind(("0.0.0.0", 4789)).expect("binding the collector's VXLAN sink")
        });
        let sink6 = in_netns(&col, || {
            UdpSocket::bind((COLLECTOR_ADDR6, 4789))
                .expect("binding the collector's IPv6 VXLAN sink")
        });
        Topology {
            wl,
            wl2,
            node,
            col,
            _vxlan_sink: sink,
            _vxlan_sink6: sink6,
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// Agent config with one target (the collector) plus whatever filters and sessions follow.
pub fn config_with_collector(rest: &str) -> String {
    format!(
        r#"
[[targets]]
id = "tmt-col"
destination_ip = "{COLLECTOR_ADDR}"
destination_port = 4789
{rest}"#
    )
}

/// One namespace holding veth pairs `(name, peer, address of name)`, both ends up, IPv6 off:
/// no autoconfiguration chatter on interfaces whose packets a test or benchmark counts.
pub fn quiet_netns(prefix: &str, pairs: &[(&str, &str, &str)]) -> NetNs {
    let ns = NetNs::new(prefix);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    for (a, b, addr) in pairs {
        ns.exec(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
        ns.exec(&["ip", "addr", "add", addr, "dev", a]);
        ns.exec(&["ip", "link", "set", a, "up"]);
        ns.exec(&["ip", "link", "set", b, "up"]);
    }
    ns
}

/// IPv6 off in `ns`: no autoconfiguration chatter on interfaces whose packets are counted.
pub fn quiet(ns: &NetNs) {
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
}

/// Drops everything arriving on `dev` right after the veth counted it and taps and TC
/// programs saw it (nftables netdev ingress with a drop policy: this kernel has no tc
/// gact/matchall), the cheapest consumer there is.
pub fn sink(ns: &NetNs, dev: &str) {
    ns.exec(&[
        "nft",
        &format!(
            "add table netdev sink; add chain netdev sink in {{ type filter hook ingress \
             device \"{dev}\" priority 0; policy drop; }}"
        ),
    ]);
}

/// RPS: `dev`'s receive processing runs on `cpu`, away from a sender pinned elsewhere.
pub fn steer_rx(ns: &NetNs, dev: &str, cpu: usize) {
    ns.exec(&[
        "sh",
        "-c",
        &format!(
            "echo {:x} > /sys/class/net/{dev}/queues/rx-0/rps_cpus",
            1u32 << cpu
        ),
    ]);
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &NetNs, dev: &str) -> [u8; 6] {
    let out = ns.exec(&["ip", "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j link JSON");
    let text = v[0]["address"].as_str().expect("link address");
    let mut mac = [0u8; 6];
    for (i, part) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).expect("hex MAC");
    }
    mac
}

pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
