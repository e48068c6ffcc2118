//! The segmentation device: a veth pair (`mirseg` → `mirseg-in`) with every offload turned
//! off, so that the kernel itself turns what is sent into it into what a wire carries.
//!
//! A copy of a GSO/GRO super-packet sent to `mirseg` is cut by the kernel's software GSO
//! into one packet per segment, each with its own headers (IP length and ID, TCP sequence
//! and flags, UDP length) and a computed checksum, because the device offers neither
//! segmentation nor checksum offload; a packet whose transport checksum was left to offload
//! gets it filled the same way, on a private copy of the header (the original is shared and
//! stays as it was). A VLAN tag held in metadata is written into the frame, since the device
//! offers no tag insertion. `mirror_segment` on `mirseg-in`'s ingress then sends each
//! segment on to be encapsulated.

use std::io;

use rtnetlink::{Handle, LinkMessageBuilder, LinkVeth};
use thiserror::Error;

use super::tunnel::link_index;

/// Where the source programs send copies that need segmenting or checksumming.
pub const DEVICE: &str = "mirseg";
/// Its peer, where `mirror_segment` runs.
pub const PEER: &str = "mirseg-in";
/// The largest MTU a veth takes: a copy of a jumbo (non-GSO) frame must not be refused on
/// the way (the veth drops frames above the receiving end's MTU).
const MTU: u32 = 65535;

#[derive(Debug, Error)]
pub enum SegmentError {
    #[error("netlink: {context}: {source}")]
    Netlink {
        context: &'static str,
        source: rtnetlink::Error,
    },
    #[error("turning off the offloads of {device}: {source}")]
    Offloads { device: String, source: io::Error },
    #[error("{0} exists and is not a device of ours")]
    Missing(&'static str),
}

/// Interface indexes of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentDevice {
    /// `mirseg`: where copies are sent.
    pub device: u32,
    /// `mirseg-in`: where the program runs.
    pub peer: u32,
}

fn netlink(context: &'static str) -> impl FnOnce(rtnetlink::Error) -> SegmentError {
    move |source| SegmentError::Netlink { context, source }
}

/// Creates the pair if missing (offloads off, IPv6 off, up) and returns its indexes. A pair
/// that exists is taken as it is, like the tunnel devices: an operator who took it down
/// meant it (copies that need it then fail, and are counted).
pub async fn ensure(handle: &Handle) -> Result<SegmentDevice, SegmentError> {
    if link_index(handle, DEVICE)
        .await
        .map_err(netlink("looking up mirseg"))?
        .is_none()
    {
        let msg = LinkMessageBuilder::<LinkVeth>::new(DEVICE, PEER)
            .mtu(MTU)
            .build();
        handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(netlink("creating mirseg"))?;
        for name in [DEVICE, PEER] {
            let index = link_index(handle, name)
                .await
                .map_err(netlink("looking up mirseg"))?
                .ok_or(SegmentError::Missing(DEVICE))?;
            // No router solicitations or MLD reports of its own: only copies pass here.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), b"1");
            offloads_off(name).map_err(|source| SegmentError::Offloads {
                device: name.to_string(),
                source,
            })?;
            let up = LinkMessageBuilder::<rtnetlink::LinkUnspec>::new()
                .index(index)
                .mtu(MTU)
                .up()
                .build();
            handle
                .link()
                .set(up)
                .execute()
                .await
                .map_err(netlink("bringing mirseg up"))?;
        }
    }
    let device = link_index(handle, DEVICE)
        .await
        .map_err(netlink("looking up mirseg"))?
        .ok_or(SegmentError::Missing(DEVICE))?;
    let peer = link_index(handle, PEER)
        .await
        .map_err(netlink("looking up mirseg-in"))?
        .ok_or(SegmentError::Missing(PEER))?;
    Ok(SegmentDevice { device, peer })
}

pub async fn delete(handle: &Handle) -> Result<(), SegmentError> {
    // Deleting one end of a veth deletes both.
    if let Some(index) = link_index(handle, DEVICE)
        .await
        .map_err(netlink("looking up mirseg"))?
    {
        handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(netlink("deleting mirseg"))?;
    }
    Ok(())
}

/// True for the pair's names (never mirror sources, never flow-logged).
pub fn is_device_name(name: &str) -> bool {
    name == DEVICE || name == PEER
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
/// `netdev_features_t` is 64 bits: two 32-bit blocks.
const FEATURE_WORDS: usize = 2;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct GetBlock {
    available: u32,
    requested: u32,
    active: u32,
    never_changed: u32,
}

#[repr(C)]
struct GetFeatures {
    cmd: u32,
    size: u32,
    features: [GetBlock; FEATURE_WORDS],
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct SetBlock {
    valid: u32,
    requested: u32,
}

#[repr(C)]
struct SetFeatures {
    cmd: u32,
    size: u32,
    features: [SetBlock; FEATURE_WORDS],
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Turns off every feature the device lets ethtool change (what `ethtool -K dev tx off sg
/// off tso off gso off gro off …` does): checksum offload, scatter-gather, every GSO type,
/// VLAN tag insertion, GRO.
fn offloads_off(ifname: &str) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let _sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (d, s) in name.iter_mut().zip(ifname.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    let mut get = GetFeatures {
        cmd: ETHTOOL_GFEATURES,
        size: FEATURE_WORDS as u32,
        features: [GetBlock::default(); FEATURE_WORDS],
    };
    let mut req = IfReq {
        name,
        data: (&mut get as *mut GetFeatures).cast(),
        _pad: [0; 16],
    };
    // SAFETY: SIOCETHTOOL with a request that points at a buffer of the size it declares.
    if unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut set = SetFeatures {
        cmd: ETHTOOL_SFEATURES,
        size: FEATURE_WORDS as u32,
        features: [SetBlock::default(); FEATURE_WORDS],
    };
    for (s, g) in set.features.iter_mut().zip(get.features) {
        s.valid = g.available & !g.never_changed;
        s.requested = 0;
    }
    req.data = (&mut set as *mut SetFeatures).cast();
    // SAFETY: as above. A positive answer only says some bits could not change.
    if unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
