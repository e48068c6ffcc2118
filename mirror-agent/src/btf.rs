//! The kernel's BTF (`/sys/kernel/btf/vmlinux`), read with the btf-rs crate.
//!
//! The programs (Rust) cannot use CO-RE, so the agent looks up the byte offsets of the `sk_buff`
//! and `net_device` fields the `skb:kfree_skb` tracepoint reads, and the names of
//! `enum skb_drop_reason` values, in the running kernel's BTF once at start and sets the offsets
//! in the programs' read-only data before loading them (`SKB_LAYOUT`). What
//! is ours is the lookup: members found through the anonymous structs and unions the kernel
//! nests them in (`struct_group`), bitfields told apart from whole-byte members.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use btf_rs::{BtfType as _, Type};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading BTF {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed BTF: {what}")]
    Malformed { what: String },
    #[error("not found in BTF: {what}")]
    NotFound { what: String },
}

fn not_found(what: impl Into<String>) -> BtfError {
    BtfError::NotFound { what: what.into() }
}

impl From<btf_rs::Error> for BtfError {
    fn from(e: btf_rs::Error) -> Self {
        BtfError::Malformed {
            what: e.to_string(),
        }
    }
}

/// Bounds the walk along modifier chains and anonymous member nesting, so that a malformed blob
/// with a reference cycle fails instead of looping.
const MAX_DEPTH: usize = 64;

pub struct Btf {
    inner: btf_rs::Btf,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Btf")
    }
}

/// Where a member was found: bits from the start of the outer struct, and its bitfield width
/// (0: not a bitfield).
struct Located {
    bit_offset: u64,
    bitfield_size: u32,
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Btf::from_bytes(data)
    }

    pub fn from_bytes(data: Vec<u8>) -> Result<Btf, BtfError> {
        Ok(Btf {
            inner: btf_rs::Btf::from_bytes(&data)?,
        })
    }

    /// Byte offset of `member` in `struct_name`, found through anonymous structs and unions
    /// (e.g. `sk_buff.dev` and the `struct_group` around `sk_buff.network_header`).
    ///
    /// NotFound if the struct or member does not exist, or the member is a bitfield that does not
    /// start on a byte boundary.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let loc = self.locate(struct_name, member)?;
        if loc.bit_offset % 8 != 0 {
            return Err(not_found(format!(
                "{struct_name}.{member} is a bitfield at bit {}, not on a byte boundary",
                loc.bit_offset
            )));
        }
        u32::try_from(loc.bit_offset / 8).map_err(|_| BtfError::Malformed {
            what: format!("{struct_name}.{member}: offset overflows u32"),
        })
    }

    /// Bit offset and width of a member that may be a bitfield (width 0: not a bitfield).
    pub fn member_bits(&self, struct_name: &str, member: &str) -> Result<(u64, u32), BtfError> {
        let loc = self.locate(struct_name, member)?;
        Ok((loc.bit_offset, loc.bitfield_size))
    }

    /// value -> name for an enum (ENUM or ENUM64). Signed 32-bit values are sign-extended. When
    /// several names share a value (aliases such as a `..._MAX`), the first declared is kept.
    pub fn enum_values(&self, enum_name: &str) -> Result<BTreeMap<u64, String>, BtfError> {
        let mut values = BTreeMap::new();
        for ty in self
            .inner
            .resolve_types_by_name(enum_name)
            .unwrap_or_default()
        {
            // An ENUM with no values is how BTF encodes a forward declaration.
            let members: Vec<(u64, String)> = match &ty {
                Type::Enum(e) if !e.members.is_empty() => e
                    .members
                    .iter()
                    .map(|m| {
                        let value = if e.is_signed() {
                            i64::from(m.val() as i32) as u64
                        } else {
                            u64::from(m.val())
                        };
                        Ok((value, self.inner.resolve_name(m)?))
                    })
                    .collect::<Result<_, btf_rs::Error>>()?,
                Type::Enum64(e) if !e.members.is_empty() => e
                    .members
                    .iter()
                    .map(|m| Ok((m.val(), self.inner.resolve_name(m)?)))
                    .collect::<Result<_, btf_rs::Error>>()?,
                _ => continue,
            };
            for (value, name) in members {
                values.entry(value).or_insert(name);
            }
            return Ok(values);
        }
        Err(not_found(format!("enum {enum_name}")))
    }

    fn locate(&self, struct_name: &str, member: &str) -> Result<Located, BtfError> {
        let outer = self
            .inner
            .resolve_types_by_name(struct_name)
            .unwrap_or_default()
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) | Type::Union(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| not_found(format!("struct {struct_name}")))?;
        self.find_member(&outer, member, 0, 0)?
            .ok_or_else(|| not_found(format!("member {member} of struct {struct_name}")))
    }

    fn find_member(
        &self,
        parent: &btf_rs::Struct,
        member: &str,
        base_bits: u64,
        depth: usize,
    ) -> Result<Option<Located>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::Malformed {
                what: "anonymous members nested too deeply".into(),
            });
        }
        for m in &parent.members {
            let bit_offset = base_bits + u64::from(m.bit_offset());
            let name = self.inner.resolve_name(m)?;
            if name == member {
                return Ok(Some(Located {
                    bit_offset,
                    bitfield_size: m.bitfield_size().unwrap_or(0),
                }));
            }
            if name.is_empty()
                && let Some(inner) = self.aggregate(m.get_type_id())?
                && let Some(found) = self.find_member(&inner, member, bit_offset, depth + 1)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The struct or union a type id names, through typedef/const/volatile/restrict/type_tag.
    fn aggregate(&self, mut id: Option<u32>) -> Result<Option<btf_rs::Struct>, BtfError> {
        for _ in 0..MAX_DEPTH {
            let Some(current) = id else { return Ok(None) };
            match self.inner.resolve_type_by_id(current)? {
                Type::Struct(s) | Type::Union(s) => return Ok(Some(s)),
                Type::Typedef(t) => id = t.get_type_id(),
                Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => id = t.get_type_id(),
                Type::TypeTag(t) => id = t.get_type_id(),
                _ => return Ok(None),
            }
        }
        Err(BtfError::Malformed {
            what: "modifier chain too long".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    // The BTF format, for writing blobs by hand.
    const MAGIC: u16 = 0xeb9f;
    const HEADER_LEN: usize = 24;
    const KIND_INT: u8 = 1;
    const KIND_PTR: u8 = 2;
    const KIND_ARRAY: u8 = 3;
    const KIND_STRUCT: u8 = 4;
    const KIND_UNION: u8 = 5;
    const KIND_ENUM: u8 = 6;
    const KIND_FWD: u8 = 7;
    const KIND_TYPEDEF: u8 = 8;
    const KIND_CONST: u8 = 10;
    const KIND_FUNC: u8 = 12;
    const KIND_FUNC_PROTO: u8 = 13;
    const KIND_VAR: u8 = 14;
    const KIND_DATASEC: u8 = 15;
    const KIND_DECL_TAG: u8 = 17;
    const KIND_ENUM64: u8 = 19;

    /// Writes BTF the way the kernel lays it out, in either byte order.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
        big_endian: bool,
    }

    impl Builder {
        fn new(big_endian: bool) -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
                big_endian,
            }
        }

        fn bytes(&self, v: u32) -> [u8; 4] {
            if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn word(&mut self, v: u32) {
            let b = self.bytes(v);
            self.types.extend_from_slice(&b);
        }

        fn ty(
            &mut self,
            name: &str,
            kind: u8,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
        ) -> u32 {
            let name_off = self.str(name);
            self.word(name_off);
            self.word((u32::from(kind_flag) << 31) | (u32::from(kind) << 24) | vlen);
            self.word(size_or_type);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32, encoding: u32) -> u32 {
            let id = self.ty(name, KIND_INT, false, 0, size);
            self.word(encoding);
            id
        }

        fn member(&mut self, name: &str, type_id: u32, offset: u32) {
            let name_off = self.str(name);
            self.word(name_off);
            self.word(type_id);
            self.word(offset);
        }

        fn finish(self) -> Vec<u8> {
            let header = [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ];
            let mut out = Vec::new();
            if self.big_endian {
                out.extend_from_slice(&MAGIC.to_be_bytes());
            } else {
                out.extend_from_slice(&MAGIC.to_le_bytes());
            }
            out.extend_from_slice(&[1, 0]);
            for v in header {
                out.extend_from_slice(&self.bytes(v));
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// Mirrors the shapes sk_buff uses: a named member inside an anonymous struct inside an
    /// anonymous union, typedef chains, arrays and bitfields.
    fn sample(big_endian: bool) -> Vec<u8> {
        let mut b = Builder::new(big_endian);
        let int = b.int("int", 4, 0x0100_0020);
        let uint = b.int("unsigned int", 4, 32);
        let ushort = b.int("unsigned short", 2, 16);
        let u32_t = b.ty("u32", KIND_TYPEDEF, false, 0, uint);
        let u16_inner = b.ty("__u16", KIND_TYPEDEF, false, 0, ushort);
        let u16_t = b.ty("u16", KIND_TYPEDEF, false, 0, u16_inner);
        let const_u16 = b.ty("", KIND_CONST, false, 0, u16_t);
        let dev_fwd = b.ty("net_device", KIND_FWD, false, 0, 0);
        let dev_ptr = b.ty("", KIND_PTR, false, 0, dev_fwd);
        let arr = b.ty("", KIND_ARRAY, false, 0, 0);
        b.word(u32_t);
        b.word(int);
        b.word(3);

        // Ids are assigned in order, so the anonymous types come after `outer`, as in vmlinux.
        let outer_id = b.next_id;
        let anon_union = outer_id + 1;
        let anon_struct = outer_id + 2;
        let outer = b.ty("outer", KIND_STRUCT, true, 5, 32);
        assert_eq!(outer, outer_id);
        b.member("a", int, 0);
        b.member("", anon_union, 64);
        b.member("flags", u32_t, (3 << 24) | 192);
        b.member("bits", u32_t, (5 << 24) | 195);
        b.member("tail", const_u16, 208);

        assert_eq!(b.ty("", KIND_UNION, false, 2, 16), anon_union);
        b.member("", anon_struct, 0);
        b.member("dev", dev_ptr, 0);

        assert_eq!(b.ty("", KIND_STRUCT, false, 2, 16), anon_struct);
        b.member("network_header", u16_t, 32);
        b.member("arr", arr, 64);

        b.ty("color", KIND_ENUM, true, 4, 4);
        for (name, val) in [("RED", 0), ("GREEN", 2), ("RED_ALIAS", 0), ("NEG", -1i32)] {
            let off = b.str(name);
            b.word(off);
            b.word(val as u32);
        }
        b.ty("big", KIND_ENUM64, false, 1, 8);
        let off = b.str("HUGE");
        b.word(off);
        b.word(2);
        b.word(1);
        b.ty("fwd_enum", KIND_ENUM, false, 0, 4);

        // Kinds the reader skips over must not derail the types after them.
        let proto = b.ty("", KIND_FUNC_PROTO, false, 1, int);
        b.word(0);
        b.word(int);
        b.ty("f", KIND_FUNC, false, 0, proto);
        b.ty("v", KIND_VAR, false, 0, int);
        b.word(1);
        b.ty(".data", KIND_DATASEC, false, 1, 4);
        b.word(0);
        b.word(0);
        b.word(4);
        b.ty("tag", KIND_DECL_TAG, false, 0, outer);
        b.word(u32::MAX);
        b.ty("after", KIND_STRUCT, false, 1, 4);
        b.member("x", int, 0);
        b.finish()
    }

    fn assert_not_found<T: std::fmt::Debug>(r: Result<T, BtfError>) {
        assert!(matches!(r, Err(BtfError::NotFound { .. })), "{r:?}");
    }

    #[test]
    fn handcrafted_members() {
        let btf = Btf::from_bytes(sample(false)).unwrap();
        for (member, offset) in [
            ("a", 0),
            ("network_header", 12),
            ("dev", 8),
            ("arr", 16),
            ("tail", 26),
        ] {
            assert_eq!(
                btf.member_offset("outer", member).unwrap(),
                offset,
                "{member}"
            );
        }
        assert_eq!(btf.member_offset("after", "x").unwrap(), 0);
    }

    #[test]
    fn bitfields() {
        let btf = Btf::from_bytes(sample(false)).unwrap();
        // A byte-aligned bitfield has a byte offset; one inside a byte has only bits.
        assert_eq!(btf.member_offset("outer", "flags").unwrap(), 24);
        assert_eq!(btf.member_bits("outer", "flags").unwrap(), (192, 3));
        assert_not_found(btf.member_offset("outer", "bits"));
        assert_eq!(btf.member_bits("outer", "bits").unwrap(), (195, 5));
        assert_eq!(btf.member_bits("outer", "a").unwrap(), (0, 0));
    }

    #[test]
    fn missing() {
        let btf = Btf::from_bytes(sample(false)).unwrap();
        assert_not_found(btf.member_offset("nope", "a"));
        assert_not_found(btf.member_offset("outer", "nope"));
        // A forward declaration is not a struct.
        assert_not_found(btf.member_offset("net_device", "ifindex"));
        assert_not_found(btf.enum_values("fwd_enum"));
        assert_not_found(btf.enum_values("outer"));
    }

    #[test]
    fn enums() {
        let btf = Btf::from_bytes(sample(false)).unwrap();
        let colors = btf.enum_values("color").unwrap();
        let expected: BTreeMap<u64, String> = [(0, "RED"), (2, "GREEN"), (u64::MAX, "NEG")]
            .into_iter()
            .map(|(v, n)| (v, n.to_string()))
            .collect();
        assert_eq!(colors, expected);
        let big = btf.enum_values("big").unwrap();
        assert_eq!(big.get(&0x1_0000_0002).map(String::as_str), Some("HUGE"));
    }

    #[test]
    fn big_endian_matches_little_endian() {
        let le = Btf::from_bytes(sample(false)).unwrap();
        let be = Btf::from_bytes(sample(true)).unwrap();
        for m in ["a", "network_header", "dev", "arr", "tail"] {
            assert_eq!(
                le.member_offset("outer", m).unwrap(),
                be.member_offset("outer", m).unwrap()
            );
        }
        assert_eq!(
            le.enum_values("color").unwrap(),
            be.enum_values("color").unwrap()
        );
    }

    #[test]
    fn rejects_malformed() {
        let good = sample(false);
        let malformed = |data: Vec<u8>| {
            let r = Btf::from_bytes(data);
            assert!(matches!(r, Err(BtfError::Malformed { .. })), "{r:?}");
        };
        malformed(Vec::new());
        malformed(good[..10].to_vec());
        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        malformed(bad_magic);
        // Cut inside the type section: the header now points past the end.
        malformed(good[..HEADER_LEN + 20].to_vec());
    }

    #[test]
    fn io_error_names_path() {
        let path = Path::new("/nonexistent/btf");
        let err = Btf::from_file(path).unwrap_err();
        assert!(matches!(err, BtfError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/btf"), "{err}");
    }

    fn vmlinux() -> Option<Btf> {
        if !Path::new(VMLINUX).exists() {
            eprintln!("skipping: {VMLINUX} does not exist");
            return None;
        }
        Some(Btf::from_file(Path::new(VMLINUX)).unwrap())
    }

    #[test]
    fn vmlinux_fields() {
        let Some(btf) = vmlinux() else { return };
        for (st, member) in [
            ("sk_buff", "head"),
            ("sk_buff", "network_header"),
            ("sk_buff", "transport_header"),
            ("sk_buff", "dev"),
            ("sk_buff", "skb_iif"),
            ("net_device", "ifindex"),
            ("net_device", "nd_net"),
            ("net", "ns"),
            ("ns_common", "inum"),
        ] {
            let offset = btf.member_offset(st, member).unwrap();
            eprintln!("{st}.{member}: offset {offset}");
        }
        // The one bitfield the agent reads.
        let (bit, width) = btf.member_bits("sk_buff", "ip_summed").unwrap();
        assert_eq!(width, 2, "sk_buff.ip_summed at bit {bit}");
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        assert_eq!(
            reasons.get(&2).map(String::as_str),
            Some("SKB_DROP_REASON_NOT_SPECIFIED")
        );
        assert!(
            reasons
                .values()
                .any(|n| n == "SKB_DROP_REASON_NETFILTER_DROP")
        );
        eprintln!("skb_drop_reason: {} values", reasons.len());
    }

    /// Compares every named top-level member, bitfields too, with `bpftool btf dump ... format raw`.
    fn cross_check_with_bpftool(btf: &Btf, dump: &str, struct_name: &str) -> usize {
        let heading = format!("STRUCT '{struct_name}' ");
        let mut lines = dump.lines().skip_while(|l| !l.contains(&heading));
        assert!(
            lines.next().is_some(),
            "{struct_name} not in bpftool output"
        );
        let mut checked = 0;
        for line in lines.take_while(|l| l.starts_with('\t')) {
            let mut fields = line.split_whitespace();
            let name = fields.next().unwrap().trim_matches('\'');
            let rest: Vec<&str> = fields.collect();
            if name == "(anon)" {
                continue;
            }
            let field = |key: &str| -> Option<u32> {
                rest.iter()
                    .find_map(|f| f.strip_prefix(key))
                    .map(|v| v.parse().unwrap())
            };
            let bits = field("bits_offset=").unwrap();
            match field("bitfield_size=") {
                Some(width) => assert_eq!(
                    btf.member_bits(struct_name, name).unwrap(),
                    (u64::from(bits), width),
                    "{struct_name}.{name}"
                ),
                None => assert_eq!(
                    btf.member_offset(struct_name, name).unwrap(),
                    bits / 8,
                    "{struct_name}.{name}"
                ),
            }
            checked += 1;
        }
        checked
    }

    #[test]
    fn vmlinux_matches_bpftool() {
        let Some(btf) = vmlinux() else { return };
        let output = match std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX, "format", "raw"])
            .output()
        {
            Ok(output) if output.status.success() => output,
            Ok(output) => panic!(
                "bpftool failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(e) => {
                eprintln!("skipping: bpftool not runnable: {e}");
                return;
            }
        };
        let dump = String::from_utf8(output.stdout).unwrap();
        assert!(cross_check_with_bpftool(&btf, &dump, "sk_buff") > 5);
        assert!(cross_check_with_bpftool(&btf, &dump, "net_device") > 5);
    }
}
