//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The `skb:kfree_skb` raw tracepoint cannot use CO-RE, so the agent looks up the byte offsets of
//! the `sk_buff` and `net_device` fields it reads, and the names of `enum skb_drop_reason` values,
//! in the running kernel's BTF once at start and hands the offsets to the program in a map.
//!
//! Only what those lookups need is kept: every type as a compact entry, struct/union members,
//! enum values and the string section. Split BTF (kernel modules under `/sys/kernel/btf/`) is not
//! supported: its type ids and string offsets continue those of vmlinux.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

fn malformed(what: impl Into<String>) -> BtfError {
    BtfError::Malformed { what: what.into() }
}

fn not_found(what: impl Into<String>) -> BtfError {
    BtfError::NotFound { what: what.into() }
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// Bounds the walk along typedef chains, array dimensions and anonymous member nesting, so that a
/// malformed blob with a reference cycle fails instead of looping or overflowing the stack.
const MAX_DEPTH: usize = 64;
/// Used when the BTF has no `long` to infer the kernel's pointer width from.
const DEFAULT_POINTER_SIZE: u32 = 8;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    name_off: u32,
    /// 0 only for the void placeholder at id 0.
    kind: u8,
    kind_flag: bool,
    vlen: u16,
    /// As in the file (a size or a type id), except for ARRAY where it holds the element type
    /// (the file's field is unused there).
    size_or_type: u32,
    /// INT: the encoding word. ARRAY: the element count. STRUCT/UNION: index of the first member
    /// in `Btf::members`. ENUM/ENUM64: index of the first value in `Btf::enumerators`.
    extra: u32,
}

impl TypeEntry {
    const VOID: TypeEntry = TypeEntry {
        name_off: 0,
        kind: 0,
        kind_flag: false,
        vlen: 0,
        size_or_type: 0,
        extra: 0,
    };
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Raw word: its layout depends on the parent's kind_flag.
    offset: u32,
}

#[derive(Clone, Copy, Debug)]
struct Enumerator {
    name_off: u32,
    value: u64,
}

/// Where a member lives, with offsets of the enclosing anonymous members already added.
#[derive(Clone, Copy, Debug)]
struct Located {
    bit_offset: u64,
    /// 0 for an ordinary member.
    bitfield_size: u32,
    type_id: u32,
}

#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    endian: Endian,
    section: &'static str,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], BtfError> {
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.data.get(self.pos..end))
            .ok_or_else(|| malformed(format!("{} truncated at byte {}", self.section, self.pos)))?;
        self.pos += n;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, BtfError> {
        let endian = self.endian;
        let b = self.take(4)?;
        let b = [b[0], b[1], b[2], b[3]];
        Ok(match endian {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        })
    }

    fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// Parsed BTF: all types (index = type id, 0 is void) and the string section.
pub struct Btf {
    types: Vec<TypeEntry>,
    members: Vec<Member>,
    enumerators: Vec<Enumerator>,
    strings: Vec<u8>,
    pointer_size: u32,
}

impl std::fmt::Debug for Btf {
    // The derived form would print megabytes of types for vmlinux.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len())
            .field("strings_len", &self.strings.len())
            .finish_non_exhaustive()
    }
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Btf::from_bytes(data)
    }

    pub fn from_bytes(mut data: Vec<u8>) -> Result<Btf, BtfError> {
        let magic = data
            .get(..2)
            .ok_or_else(|| malformed("shorter than the header"))?;
        let endian = if u16::from_le_bytes([magic[0], magic[1]]) == MAGIC {
            Endian::Little
        } else if u16::from_be_bytes([magic[0], magic[1]]) == MAGIC {
            Endian::Big
        } else {
            return Err(malformed(format!(
                "bad magic {:02x}{:02x}",
                magic[0], magic[1]
            )));
        };
        let mut header = Reader {
            data: &data,
            pos: 0,
            endian,
            section: "header",
        };
        header.take(2)?;
        let version = header.take(2)?[0];
        if version != 1 {
            return Err(malformed(format!("unsupported version {version}")));
        }
        let hdr_len = header.u32()? as usize;
        let type_off = header.u32()? as usize;
        let type_len = header.u32()? as usize;
        let str_off = header.u32()? as usize;
        let str_len = header.u32()? as usize;
        if hdr_len < HEADER_LEN {
            return Err(malformed(format!("header length {hdr_len} too small")));
        }
        let section = |off: usize, len: usize, what: &str| {
            let start = hdr_len.checked_add(off);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(start), Some(end)) if end <= data.len() => Ok(start..end),
                _ => Err(malformed(format!(
                    "{what} section ({off}+{len} after a {hdr_len}-byte header) exceeds {} bytes",
                    data.len()
                ))),
            }
        };
        let type_range = section(type_off, type_len, "type")?;
        let str_range = section(str_off, str_len, "string")?;
        // Offset 0 must be the empty name, and a NUL at the end lets every in-bounds name_off be
        // read as a terminated string without further checks.
        let strings = &data[str_range.clone()];
        if strings.first() != Some(&0) || strings.last() != Some(&0) {
            return Err(malformed(
                "string section must start and end with a NUL byte",
            ));
        }

        let mut btf = Btf {
            types: vec![TypeEntry::VOID],
            members: Vec::new(),
            enumerators: Vec::new(),
            strings: Vec::new(),
            pointer_size: DEFAULT_POINTER_SIZE,
        };
        btf.parse_types(
            Reader {
                data: &data[type_range],
                pos: 0,
                endian,
                section: "type section",
            },
            strings,
        )?;
        // Keep only the strings, reusing the allocation instead of copying megabytes.
        data.truncate(str_range.end);
        data.drain(..str_range.start);
        btf.strings = data;
        Ok(btf)
    }

    fn parse_types(&mut self, mut r: Reader<'_>, strings: &[u8]) -> Result<(), BtfError> {
        let check_name = |name_off: u32, id: usize| {
            if (name_off as usize) < strings.len() {
                Ok(name_off)
            } else {
                Err(malformed(format!(
                    "type {id}: name offset {name_off} outside the string section"
                )))
            }
        };
        while !r.at_end() {
            let id = self.types.len();
            let name_off = check_name(r.u32()?, id)?;
            let info = r.u32()?;
            let mut size_or_type = r.u32()?;
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as u16;
            let kind_flag = info >> 31 != 0;
            let count = usize::from(vlen);
            let mut extra = 0;
            match kind {
                KIND_INT => {
                    extra = r.u32()?;
                    let name = cstr_at(strings, name_off);
                    if name == b"long int" || name == b"long unsigned int" {
                        // Linux ABIs all have sizeof(long) == sizeof(void *).
                        self.pointer_size = size_or_type;
                    }
                }
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                KIND_ARRAY => {
                    size_or_type = r.u32()?;
                    let _index_type = r.u32()?;
                    extra = r.u32()?;
                }
                KIND_STRUCT | KIND_UNION => {
                    extra = index_u32(self.members.len())?;
                    self.members.reserve(count);
                    for _ in 0..count {
                        let name_off = check_name(r.u32()?, id)?;
                        let type_id = r.u32()?;
                        let offset = r.u32()?;
                        self.members.push(Member {
                            name_off,
                            type_id,
                            offset,
                        });
                    }
                }
                KIND_ENUM | KIND_ENUM64 => {
                    extra = index_u32(self.enumerators.len())?;
                    self.enumerators.reserve(count);
                    for _ in 0..count {
                        let name_off = check_name(r.u32()?, id)?;
                        let value = if kind == KIND_ENUM64 {
                            let lo = r.u32()?;
                            let hi = r.u32()?;
                            u64::from(hi) << 32 | u64::from(lo)
                        } else {
                            let raw = r.u32()?;
                            // kind_flag marks a signed enum: sign-extend so that -1 reads as
                            // u64::MAX, as it would for an ENUM64.
                            if kind_flag {
                                raw as i32 as i64 as u64
                            } else {
                                u64::from(raw)
                            }
                        };
                        self.enumerators.push(Enumerator { name_off, value });
                    }
                }
                KIND_FUNC_PROTO => {
                    r.take(count * 8)?;
                }
                KIND_VAR | KIND_DECL_TAG => {
                    r.take(4)?;
                }
                KIND_DATASEC => {
                    r.take(count * 12)?;
                }
                // Without knowing its size the rest of the section cannot be walked.
                other => return Err(malformed(format!("type {id}: unknown kind {other}"))),
            }
            self.types.push(TypeEntry {
                name_off,
                kind,
                kind_flag,
                vlen,
                size_or_type,
                extra,
            });
        }
        index_u32(self.types.len())?;
        Ok(())
    }

    /// Byte offset of `member` in `struct_name`, looking through anonymous struct/union members
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
        u32::try_from(loc.bit_offset / 8)
            .map_err(|_| malformed(format!("{struct_name}.{member}: offset overflows u32")))
    }

    /// Bit offset and width of a member that may be a bitfield (width 0: not a bitfield).
    pub fn member_bits(&self, struct_name: &str, member: &str) -> Result<(u64, u32), BtfError> {
        let loc = self.locate(struct_name, member)?;
        Ok((loc.bit_offset, loc.bitfield_size))
    }

    /// Byte size of a member's type, through typedef/const/volatile/restrict/type_tag; pointers
    /// have the kernel's pointer size. NotFound for bitfields, which have no byte size.
    pub fn member_size(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let loc = self.locate(struct_name, member)?;
        if loc.bitfield_size != 0 {
            return Err(not_found(format!(
                "{struct_name}.{member} is a {}-bit bitfield, not a whole-byte member",
                loc.bitfield_size
            )));
        }
        let size = self.type_size(loc.type_id, 0)?;
        u32::try_from(size)
            .map_err(|_| malformed(format!("{struct_name}.{member}: size {size} overflows u32")))
    }

    /// value -> name for an enum (ENUM or ENUM64). Signed 32-bit values are sign-extended. When
    /// several names share a value (aliases such as a `..._MAX`), the first declared is kept.
    pub fn enum_values(&self, enum_name: &str) -> Result<BTreeMap<u64, String>, BtfError> {
        let ty = self
            .types
            .iter()
            // An ENUM with no values is how BTF encodes a forward declaration.
            .find(|t| {
                matches!(t.kind, KIND_ENUM | KIND_ENUM64)
                    && t.vlen > 0
                    && self.name(t.name_off) == enum_name.as_bytes()
            })
            .ok_or_else(|| not_found(format!("enum {enum_name}")))?;
        let mut values = BTreeMap::new();
        for e in self.slice(&self.enumerators, ty, enum_name)? {
            values
                .entry(e.value)
                .or_insert_with(|| String::from_utf8_lossy(self.name(e.name_off)).into_owned());
        }
        Ok(values)
    }

    fn locate(&self, struct_name: &str, member: &str) -> Result<Located, BtfError> {
        let ty = self
            .types
            .iter()
            .find(|t| {
                matches!(t.kind, KIND_STRUCT | KIND_UNION)
                    && self.name(t.name_off) == struct_name.as_bytes()
            })
            .ok_or_else(|| not_found(format!("struct {struct_name}")))?;
        let mut loc = self
            .find_member(ty, member.as_bytes(), 0, 0)?
            .ok_or_else(|| not_found(format!("member {member} of struct {struct_name}")))?;
        if loc.bitfield_size == 0 {
            // Without kind_flag, old encoders put a bitfield's position and width in the INT
            // type's encoding word instead of the member's offset.
            let (_, target) = self.resolve(loc.type_id)?;
            if target.kind == KIND_INT {
                let int_offset = (target.extra >> 16) & 0xff;
                let bits = target.extra & 0xff;
                if int_offset != 0 || u64::from(bits) != u64::from(target.size_or_type) * 8 {
                    loc.bit_offset += u64::from(int_offset);
                    loc.bitfield_size = bits;
                }
            }
        }
        Ok(loc)
    }

    fn find_member(
        &self,
        parent: &TypeEntry,
        member: &[u8],
        base_bits: u64,
        depth: usize,
    ) -> Result<Option<Located>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("anonymous members nested too deeply"));
        }
        for m in self.slice(&self.members, parent, "struct")? {
            let (bit_offset, bitfield_size) = if parent.kind_flag {
                (m.offset & 0x00ff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            let bit_offset = base_bits + u64::from(bit_offset);
            let name = self.name(m.name_off);
            if name == member {
                return Ok(Some(Located {
                    bit_offset,
                    bitfield_size,
                    type_id: m.type_id,
                }));
            }
            if name.is_empty() {
                let (_, inner) = self.resolve(m.type_id)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find_member(inner, member, bit_offset, depth + 1)?
                {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// The members or enum values of `ty`, checked against the parsed tables.
    fn slice<'a, T>(
        &self,
        table: &'a [T],
        ty: &TypeEntry,
        what: &str,
    ) -> Result<&'a [T], BtfError> {
        let start = ty.extra as usize;
        table
            .get(start..start + usize::from(ty.vlen))
            .ok_or_else(|| malformed(format!("{what}: member table out of range")))
    }

    fn get(&self, id: u32) -> Result<&TypeEntry, BtfError> {
        self.types
            .get(id as usize)
            .ok_or_else(|| malformed(format!("reference to missing type {id}")))
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<(u32, &TypeEntry), BtfError> {
        for _ in 0..MAX_DEPTH {
            let ty = self.get(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok((id, ty)),
            }
        }
        Err(malformed(format!("type {id}: modifier chain too long")))
    }

    fn type_size(&self, id: u32, depth: usize) -> Result<u64, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("array dimensions nested too deeply"));
        }
        let (id, ty) = self.resolve(id)?;
        match ty.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Ok(u64::from(ty.size_or_type))
            }
            KIND_PTR => Ok(u64::from(self.pointer_size)),
            KIND_ARRAY => {
                let elem = self.type_size(ty.size_or_type, depth + 1)?;
                elem.checked_mul(u64::from(ty.extra))
                    .ok_or_else(|| malformed(format!("type {id}: array size overflows")))
            }
            kind => Err(malformed(format!("type {id} of kind {kind} has no size"))),
        }
    }

    fn name(&self, off: u32) -> &[u8] {
        cstr_at(&self.strings, off)
    }
}

/// The NUL-terminated string at `off`; empty when out of range, which parsing already rules out.
fn cstr_at(strings: &[u8], off: u32) -> &[u8] {
    let s = strings.get(off as usize..).unwrap_or(&[]);
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    &s[..end]
}

fn index_u32(n: usize) -> Result<u32, BtfError> {
    u32::try_from(n).map_err(|_| malformed("more than u32::MAX entries"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

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

        // Pre-kind_flag encoding: the bitfield's position is in the INT type.
        let legacy_bits = b.int("unsigned int", 4, (4 << 16) | 3);
        b.ty("legacy", KIND_STRUCT, false, 2, 8);
        b.member("lbits", legacy_bits, 0);
        b.member("whole", uint, 32);

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
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_size("outer", "a").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "network_header").unwrap(), 12);
        assert_eq!(btf.member_size("outer", "network_header").unwrap(), 2);
        assert_eq!(btf.member_offset("outer", "dev").unwrap(), 8);
        assert_eq!(btf.member_size("outer", "dev").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "arr").unwrap(), 16);
        assert_eq!(btf.member_size("outer", "arr").unwrap(), 12);
        assert_eq!(btf.member_offset("outer", "tail").unwrap(), 26);
        assert_eq!(btf.member_size("outer", "tail").unwrap(), 2);
        assert_eq!(btf.member_offset("after", "x").unwrap(), 0);
    }

    #[test]
    fn bitfields() {
        let btf = Btf::from_bytes(sample(false)).unwrap();
        // Byte-aligned bitfields have an offset but no byte size.
        assert_eq!(btf.member_offset("outer", "flags").unwrap(), 24);
        assert_not_found(btf.member_size("outer", "flags"));
        assert_not_found(btf.member_offset("outer", "bits"));
        assert_not_found(btf.member_offset("legacy", "lbits"));
        assert_not_found(btf.member_size("legacy", "lbits"));
        assert_eq!(btf.member_offset("legacy", "whole").unwrap(), 4);
        assert_eq!(btf.member_size("legacy", "whole").unwrap(), 4);
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
            assert_eq!(
                le.member_size("outer", m).unwrap(),
                be.member_size("outer", m).unwrap()
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
        let mut bad_version = good.clone();
        bad_version[2] = 2;
        malformed(bad_version);
        // Cut inside the type section: the header now points past the end.
        malformed(good[..HEADER_LEN + 20].to_vec());
        // A type section whose length splits a type.
        let mut split = good.clone();
        let type_len = u32::from_le_bytes([split[12], split[13], split[14], split[15]]);
        split[12..16].copy_from_slice(&(type_len - 4).to_le_bytes());
        malformed(split);
        let mut unknown_kind = good.clone();
        unknown_kind[HEADER_LEN + 7] = 30;
        malformed(unknown_kind);
        let mut bad_name = good;
        bad_name[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        malformed(bad_name);
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
        for (st, member, size) in [
            ("sk_buff", "head", Some(8)),
            ("sk_buff", "data", Some(8)),
            ("sk_buff", "len", Some(4)),
            ("sk_buff", "network_header", Some(2)),
            ("sk_buff", "transport_header", Some(2)),
            ("sk_buff", "mac_header", Some(2)),
            ("sk_buff", "protocol", Some(2)),
            ("sk_buff", "dev", Some(8)),
            ("sk_buff", "skb_iif", Some(4)),
            ("net_device", "ifindex", Some(4)),
            ("net_device", "name", None),
        ] {
            let offset = btf.member_offset(st, member).unwrap();
            let actual = btf.member_size(st, member).unwrap();
            eprintln!("{st}.{member}: offset {offset} size {actual}");
            if let Some(size) = size {
                assert_eq!(actual, size, "{st}.{member}");
            }
        }
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

    /// Compares every named, non-bitfield top-level member with `bpftool btf dump ... format raw`.
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
            if name == "(anon)" || rest.iter().any(|f| f.starts_with("bitfield_size=")) {
                continue;
            }
            let bits: u32 = rest
                .iter()
                .find_map(|f| f.strip_prefix("bits_offset="))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                btf.member_offset(struct_name, name).unwrap(),
                bits / 8,
                "{struct_name}.{name}"
            );
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
