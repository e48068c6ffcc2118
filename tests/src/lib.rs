//! Support for the kernel tests: network namespaces and veth links that clean up after
//! themselves, packet capture and independent decoding (tcpdump, tshark), test packets, and
//! the real agent binary run inside a namespace.

pub mod agent;
pub mod capture;
pub mod fixture;
pub mod http;
pub mod model;
pub mod netns;
pub mod packets;
pub mod pktgen;
pub mod tcx;
pub mod topology;
pub mod traffic;
