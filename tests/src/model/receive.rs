//! The receiving side's model (`mirror_receive`, XDP, and its TC twin): which frames are the
//! receiver's, what is delivered to a VNI's capture interface, and what each frame counts.
//! Written from docs/architecture.md's receiver section: UDP to the receiver's port carrying
//! VXLAN with the I flag for a served VNI loses its outer headers; everything else passes
//! untouched.

/// A receiver on the interface the frame arrived on.
#[derive(Clone, Debug)]
pub struct Receiver {
    pub port: u16,
    pub vnis: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed to the stack, byte for byte as it arrived.
    Pass,
    /// This inner frame goes to the VNI's capture interface.
    Redirect(Vec<u8>),
    /// Dropped: the frame was already changed when the decapsulation failed (TC only).
    Drop,
}

/// The one counter a frame moves (besides the interface's packet count, for any frame on a
/// receiving interface).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// Not on a receiving interface: nothing at all.
    Nothing,
    NotMirror,
    Malformed,
    UnknownVni,
    VniMalformed(u32),
    /// Delivered: the VNI's frames +1 and bytes + this inner length.
    Frame(u32, u64),
    RedirectError(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxDecision {
    pub verdict: Verdict,
    pub counted: Counted,
}

const VXLAN_FLAG_I: u8 = 0x08;
/// Outer UDP + VXLAN.
const UDP_VXLAN: usize = 16;
const ETH: usize = 14;

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

/// Where the outer UDP header is, and the outer IP version: unfragmented UDP over IPv4 or
/// IPv6 (no extension headers: mirror traffic carries none), behind at most one 802.1Q tag.
/// A QinQ (802.1ad) outer frame is not the receiver's.
fn outer_udp(f: &[u8]) -> Option<(usize, u8)> {
    let mut ethertype = be16(f, 12)?;
    let mut l3 = ETH;
    if ethertype == 0x8100 {
        ethertype = be16(f, l3 + 2)?;
        l3 += 4;
    }
    match ethertype {
        0x0800 => {
            let b0 = *f.get(l3)?;
            if b0 >> 4 != 4 || b0 & 0x0f < 5 {
                return None;
            }
            // A fragment (offset or MF) is left to the stack's reassembly.
            if be16(f, l3 + 6)? & 0x3fff != 0 || *f.get(l3 + 9)? != 17 {
                return None;
            }
            Some((l3 + usize::from(b0 & 0x0f) * 4, 4))
        }
        0x86dd => {
            if *f.get(l3)? >> 4 != 6 || *f.get(l3 + 6)? != 17 {
                return None;
            }
            Some((l3 + 40, 6))
        }
        _ => None,
    }
}

fn pass(counted: Counted) -> RxDecision {
    RxDecision {
        verdict: Verdict::Pass,
        counted,
    }
}

/// What the receiving program on `hook` does with `f`, arriving on an interface with
/// `receiver` (or none). Every served VNI has its capture interface.
pub fn receive(receiver: Option<&Receiver>, hook: Hook, f: &[u8]) -> RxDecision {
    let Some(rx) = receiver else {
        return pass(Counted::Nothing);
    };
    let Some((l4, outer_version)) = outer_udp(f) else {
        return pass(Counted::NotMirror);
    };
    // Source and destination port must both be there to say "to our port".
    if f.len() < l4 + 4 || be16(f, l4 + 2) != Some(rx.port) {
        return pass(Counted::NotMirror);
    }
    // To our port but cut before the end of the VXLAN header: not a copy we can read.
    if f.len() < l4 + UDP_VXLAN || f[l4 + 8] & VXLAN_FLAG_I == 0 {
        return pass(Counted::Malformed);
    }
    let vni = u32::from_be_bytes([0, f[l4 + 12], f[l4 + 13], f[l4 + 14]]);
    if !rx.vnis.contains(&vni) {
        return pass(Counted::UnknownVni);
    }
    // The UDP length says where the inner frame ends: it must hold an inner Ethernet header
    // and lie within what arrived.
    let udp_len = usize::from(u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]));
    if udp_len < UDP_VXLAN + ETH || l4 + udp_len > f.len() {
        return pass(Counted::VniMalformed(vni));
    }
    let inner = &f[l4 + UDP_VXLAN..l4 + udp_len];
    if hook == Hook::Tc {
        // The skb helper that removes the outer headers keeps at least an outer IP header's
        // worth (20 or 40 bytes) after the Ethernet header, padding after the UDP payload
        // included, or refuses. An in-band tag was already popped by then: the frame is
        // changed and dropped.
        let remain = f.len() - (l4 + UDP_VXLAN) - ETH;
        let least = if outer_version == 4 { 20 } else { 40 };
        if remain < least {
            let tagged = be16(f, 12) == Some(0x8100);
            return RxDecision {
                verdict: if tagged { Verdict::Drop } else { Verdict::Pass },
                counted: Counted::RedirectError(vni),
            };
        }
    }
    RxDecision {
        verdict: Verdict::Redirect(inner.to_vec()),
        counted: Counted::Frame(vni, inner.len() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outer4(dport: u16, flags: u8, vni: u32, inner: &[u8], pad: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        f.extend_from_slice(&[0xc0, 0x00]);
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((16 + inner.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0, flags, 0, 0, 0]);
        f.extend_from_slice(&vni.to_be_bytes()[1..]);
        f.push(0);
        f.extend_from_slice(inner);
        f.extend(std::iter::repeat_n(0xee, pad));
        f
    }

    #[test]
    fn served_vni_is_delivered_without_padding_and_others_pass() {
        let rx = Receiver {
            port: 4789,
            vnis: vec![100],
        };
        let inner: Vec<u8> = (0..60).collect();
        let f = outer4(4789, VXLAN_FLAG_I, 100, &inner, 6);
        let d = receive(Some(&rx), Hook::Xdp, &f);
        assert_eq!(d.verdict, Verdict::Redirect(inner.clone()));
        assert_eq!(d.counted, Counted::Frame(100, 60));
        let f = outer4(4789, VXLAN_FLAG_I, 7, &inner, 0);
        assert_eq!(
            receive(Some(&rx), Hook::Xdp, &f).counted,
            Counted::UnknownVni
        );
        let f = outer4(4789, 0, 100, &inner, 0);
        assert_eq!(
            receive(Some(&rx), Hook::Xdp, &f).counted,
            Counted::Malformed
        );
        let f = outer4(8472, VXLAN_FLAG_I, 100, &inner, 0);
        assert_eq!(
            receive(Some(&rx), Hook::Xdp, &f).counted,
            Counted::NotMirror
        );
        assert_eq!(receive(None, Hook::Xdp, &f).counted, Counted::Nothing);
    }

    #[test]
    fn udp_cut_after_the_ports_is_malformed_and_tc_needs_room() {
        let rx = Receiver {
            port: 4789,
            vnis: vec![100],
        };
        let f = outer4(4789, VXLAN_FLAG_I, 100, &[0; 20], 0);
        assert_eq!(
            receive(Some(&rx), Hook::Xdp, &f[..14 + 20 + 4]).counted,
            Counted::Malformed
        );
        // 20 bytes of inner frame: 6 after its Ethernet header, under IPv4's 20.
        assert_eq!(
            receive(Some(&rx), Hook::Tc, &f).counted,
            Counted::RedirectError(100)
        );
        // Padding counts toward what remains.
        let f = outer4(4789, VXLAN_FLAG_I, 100, &[0; 20], 14);
        assert!(matches!(
            receive(Some(&rx), Hook::Tc, &f).verdict,
            Verdict::Redirect(_)
        ));
    }
}
