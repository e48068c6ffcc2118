//! The eBPF object the agent loads: the build's own, or a copy whose ACCEPT flow tables are
//! preallocated (`flow_table_prealloc`). aya's loader can resize a map but not change its
//! flags, so the copy has the `map_flags` of those maps' definitions rewritten (the legacy
//! `maps` section, one `bpf_map_def` per map symbol).

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use thiserror::Error;

use super::{
    EBPF_OBJECT,
    flowtable::{FlowTableSpec, PREALLOC_FLOW_MAPS},
};

/// `bpf_map_def.map_flags`: after the type, key size, value size and max entries (u32 each).
const MAP_FLAGS_OFFSET: u64 = 16;
const MAPS_SECTION: &str = "maps";
/// `BPF_F_NO_PREALLOC`: what the build's definitions of the flow tables carry.
const NO_PREALLOC: u32 = 1;

#[derive(Debug, Error)]
pub enum ObjectError {
    #[error("reading the eBPF object: {0}")]
    Parse(#[from] object::Error),
    #[error("the eBPF object has no definition of {0} in its `maps` section")]
    NoMap(&'static str),
    #[error("the eBPF object's {0} is not allocated per entry (map_flags {1:#x})")]
    Unexpected(&'static str, u32),
}

/// The object's bytes, 8-byte aligned as the loader reads them.
pub enum EbpfObject {
    Built,
    Patched { words: Vec<u64>, len: usize },
}

impl EbpfObject {
    pub fn for_tables(spec: FlowTableSpec) -> Result<EbpfObject, ObjectError> {
        if !spec.prealloc {
            return Ok(EbpfObject::Built);
        }
        let mut bytes = EBPF_OBJECT.to_vec();
        for name in PREALLOC_FLOW_MAPS {
            let at = map_flags_at(EBPF_OBJECT, name)?;
            let mut flags = [0u8; 4];
            flags.copy_from_slice(&bytes[at..at + 4]);
            let flags = u32::from_le_bytes(flags);
            // Anything else means the offset is not what this code thinks it is.
            if flags & NO_PREALLOC == 0 {
                return Err(ObjectError::Unexpected(name, flags));
            }
            bytes[at..at + 4].copy_from_slice(&(flags & !NO_PREALLOC).to_le_bytes());
        }
        let len = bytes.len();
        let words = bytes
            .chunks(8)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                u64::from_ne_bytes(word)
            })
            .collect();
        Ok(EbpfObject::Patched { words, len })
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            EbpfObject::Built => EBPF_OBJECT,
            // SAFETY: `len` bytes of the words' own allocation, read as bytes while borrowed.
            EbpfObject::Patched { words, len } => unsafe {
                std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), *len)
            },
        }
    }
}

/// Where `name`'s `map_flags` is in the object file.
fn map_flags_at(object: &[u8], name: &'static str) -> Result<usize, ObjectError> {
    let file = object::File::parse(object)?;
    let section = file
        .section_by_name(MAPS_SECTION)
        .ok_or(ObjectError::NoMap(name))?;
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(name) && s.section_index() == Some(section.index()))
        .ok_or(ObjectError::NoMap(name))?;
    let (start, size) = section.file_range().ok_or(ObjectError::NoMap(name))?;
    let offset = symbol.address() - section.address() + MAP_FLAGS_OFFSET;
    if offset + 4 > size {
        return Err(ObjectError::NoMap(name));
    }
    usize::try_from(start + offset).map_err(|_| ObjectError::NoMap(name))
}

#[cfg(test)]
mod tests {
    use mirror_ebpf::map_names;

    use super::*;

    fn flags(object: &[u8]) -> Vec<(String, u32)> {
        let obj = aya_obj::Object::parse(object).expect("object parses");
        let mut v: Vec<_> = obj
            .maps
            .iter()
            .map(|(name, map)| (name.clone(), map.map_flags()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn prealloc_clears_no_prealloc_of_the_accept_tables_only() {
        let built = flags(EBPF_OBJECT);
        let patched = EbpfObject::for_tables(FlowTableSpec {
            entries: 1024,
            prealloc: true,
        })
        .expect("patched");
        let patched = flags(patched.bytes());
        assert_eq!(built.len(), patched.len());
        for ((name, before), (_, after)) in built.iter().zip(&patched) {
            if PREALLOC_FLOW_MAPS.contains(&name.as_str()) {
                assert_eq!(*before, NO_PREALLOC, "{name} in the build");
                assert_eq!(*after, 0, "{name} patched");
            } else {
                assert_eq!(before, after, "{name} must not change");
            }
        }
        // The REJECT tables stay allocated per entry.
        let rejects = patched
            .iter()
            .find(|(n, _)| n == map_names::FLOW_REJECTS_0)
            .expect("REJECT table");
        assert_eq!(rejects.1, NO_PREALLOC);
    }

    #[test]
    fn without_prealloc_the_build_is_loaded_as_it_is() {
        let o = EbpfObject::for_tables(FlowTableSpec::from(1024)).expect("object");
        assert!(std::ptr::eq(o.bytes(), EBPF_OBJECT));
    }
}
