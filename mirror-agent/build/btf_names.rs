//! Makes the eBPF object's BTF acceptable to the kernel.
//!
//! bpf-linker names types as Rust prints them: the union inside `MaybeUninit<u8>` is called
//! exactly that. The kernel checks type, member and variable names as C identifiers and
//! refuses the whole BTF blob over one such name (`BPF_BTF_LOAD`: "Invalid name", on 6.1 and
//! 6.18 alike); aya then loads the programs without BTF and warns on every start. Each
//! character outside `[A-Za-z0-9_]` in those names becomes `_`, in place in the string
//! section, so no offset moves; strings nothing names a type with (line info, file names,
//! section names) are left alone.

/// BTF kinds whose own name the kernel checks as an identifier (`btf_name_valid_identifier`).
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_ENUM64: u32 = 19;

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("truncated at {at}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("truncated at {at}"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    let lo = u32_at(b, at)? as u64;
    let hi = u32_at(b, at + 4)? as u64;
    Ok(lo | hi << 32)
}

/// Where the `.BTF` section lies in a little-endian ELF64 object, if it has one.
fn btf_section(elf: &[u8]) -> Result<Option<(usize, usize)>, String> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err("not a little-endian ELF64 object".into());
    }
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = u16_at(elf, 0x3a)? as usize;
    let shnum = u16_at(elf, 0x3c)? as usize;
    let shstrndx = u16_at(elf, 0x3e)? as usize;
    let section = |i: usize| -> Result<(u32, usize, usize), String> {
        let h = shoff + i * shentsize;
        Ok((
            u32_at(elf, h)?,
            u64_at(elf, h + 24)? as usize,
            u64_at(elf, h + 32)? as usize,
        ))
    };
    let (_, names, _) = section(shstrndx)?;
    for i in 0..shnum {
        let (name, offset, size) = section(i)?;
        if elf.get(names + name as usize..names + name as usize + 5) == Some(b".BTF\0".as_slice()) {
            return Ok(Some((offset, size)));
        }
    }
    Ok(None)
}

/// The string offsets of every name the kernel checks as an identifier.
fn identifier_names(btf: &[u8]) -> Result<Vec<u32>, String> {
    if u16_at(btf, 0)? != 0xeb9f {
        return Err("bad BTF magic".into());
    }
    let hdr_len = u32_at(btf, 4)? as usize;
    let types = hdr_len + u32_at(btf, 8)? as usize;
    let end = types + u32_at(btf, 12)? as usize;
    let mut names = Vec::new();
    let mut at = types;
    while at < end {
        let name = u32_at(btf, at)?;
        let info = u32_at(btf, at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        at += 12;
        if matches!(
            kind,
            KIND_STRUCT
                | KIND_UNION
                | KIND_ENUM
                | KIND_FWD
                | KIND_TYPEDEF
                | KIND_FUNC
                | KIND_VAR
                | KIND_ENUM64
        ) {
            names.push(name);
        }
        // Each kind's trailing records; members, enumerators and parameters carry a name
        // first, which the kernel checks as an identifier too.
        let (record, named) = match kind {
            KIND_STRUCT | KIND_UNION => (12, true),
            KIND_ENUM => (8, true),
            KIND_ENUM64 => (12, true),
            KIND_FUNC_PROTO => (8, true),
            KIND_DATASEC => (12, false),
            // INT, VAR and DECL_TAG carry one u32, ARRAY three.
            1 | KIND_VAR | 17 => (4, false),
            3 => (12, false),
            _ => (0, false),
        };
        let count = match kind {
            1 | 3 | KIND_VAR | 17 => 1,
            _ => vlen,
        };
        for i in 0..count {
            if named {
                names.push(u32_at(btf, at + i * record)?);
            }
        }
        at += record * count;
    }
    Ok(names)
}

/// Rewrites the invalid names of the object's BTF in place; returns the names changed.
pub fn sanitize(elf: &mut [u8]) -> Result<Vec<String>, String> {
    let Some((offset, size)) = btf_section(elf)? else {
        return Ok(Vec::new());
    };
    let btf = elf
        .get_mut(offset..offset + size)
        .ok_or("the .BTF section lies outside the file")?;
    let hdr_len = u32_at(btf, 4)? as usize;
    let strings = hdr_len + u32_at(btf, 16)? as usize;
    let strings_end = strings + u32_at(btf, 20)? as usize;
    let mut changed = Vec::new();
    for name in identifier_names(btf)? {
        let start = strings + name as usize;
        let len = btf
            .get(start..strings_end)
            .and_then(|s| s.iter().position(|&c| c == 0))
            .ok_or("a name runs past the string section")?;
        let s = &mut btf[start..start + len];
        let valid = |(i, &c): (usize, &u8)| {
            c == b'_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
        };
        if s.iter().enumerate().all(valid) {
            continue;
        }
        changed.push(String::from_utf8_lossy(s).into_owned());
        for (i, c) in s.iter_mut().enumerate() {
            if !(*c == b'_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())) {
                *c = b'_';
            }
        }
    }
    Ok(changed)
}
