//! Reads the Xen ELF notes of a kernel (`vmlinux`): a kernel that Xen can boot as PVH
//! carries `XEN_ELFNOTE_PHYS32_ENTRY`; one it can boot as PV carries `XEN_ELFNOTE_ENTRY`.

/// `XEN_ELFNOTE_ENTRY`: the PV entry point (xen/include/public/elfnote.h).
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point, 32-bit physical.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

const PT_NOTE: u32 = 4;

/// Errors reading ELF notes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfNoteError {
    /// Not a little-endian ELF64 file.
    #[error("not a little-endian 64-bit ELF file")]
    NotElf64,
    /// A header or note points outside the file.
    #[error("truncated ELF file: {0} out of bounds")]
    Truncated(&'static str),
}

/// The Xen entry points a kernel declares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct XenEntries {
    /// Virtual address of the PV entry point.
    pub pv: Option<u64>,
    /// Physical address of the PVH entry point.
    pub pvh: Option<u64>,
}

fn read<const N: usize>(
    data: &[u8],
    at: usize,
    what: &'static str,
) -> Result<[u8; N], ElfNoteError> {
    data.get(at..at.checked_add(N).ok_or(ElfNoteError::Truncated(what))?)
        .and_then(|s| s.try_into().ok())
        .ok_or(ElfNoteError::Truncated(what))
}

fn u16_at(d: &[u8], at: usize, what: &'static str) -> Result<u16, ElfNoteError> {
    read::<2>(d, at, what).map(u16::from_le_bytes)
}

fn u32_at(d: &[u8], at: usize, what: &'static str) -> Result<u32, ElfNoteError> {
    read::<4>(d, at, what).map(u32::from_le_bytes)
}

fn u64_at(d: &[u8], at: usize, what: &'static str) -> Result<u64, ElfNoteError> {
    read::<8>(d, at, what).map(u64::from_le_bytes)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Every note in the file's `PT_NOTE` segments, as (name, type, descriptor).
pub fn notes(elf: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>, ElfNoteError> {
    // e_ident: magic, ELFCLASS64 (2), ELFDATA2LSB (1).
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(ElfNoteError::NotElf64);
    }
    let phoff = u64_at(elf, 0x20, "e_phoff")? as usize;
    let phentsize = u16_at(elf, 0x36, "e_phentsize")? as usize;
    let phnum = u16_at(elf, 0x38, "e_phnum")? as usize;
    let mut out = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph, "program header")? != PT_NOTE {
            continue;
        }
        let off = u64_at(elf, ph + 8, "p_offset")? as usize;
        let size = u64_at(elf, ph + 32, "p_filesz")? as usize;
        let seg = elf
            .get(off..off.saturating_add(size))
            .ok_or(ElfNoteError::Truncated("note segment"))?;
        let mut at = 0;
        while at + 12 <= seg.len() {
            let namesz = u32_at(seg, at, "note")? as usize;
            let descsz = u32_at(seg, at + 4, "note")? as usize;
            let ntype = u32_at(seg, at + 8, "note")?;
            let name_at = at + 12;
            let desc_at = name_at + align4(namesz);
            let name = seg
                .get(name_at..name_at + namesz)
                .ok_or(ElfNoteError::Truncated("note name"))?;
            let desc = seg
                .get(desc_at..desc_at + descsz)
                .ok_or(ElfNoteError::Truncated("note descriptor"))?;
            let name =
                String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name)).into_owned();
            out.push((name, ntype, desc.to_vec()));
            at = desc_at + align4(descsz);
        }
    }
    Ok(out)
}

/// The Xen entry points declared by the kernel `elf`.
pub fn xen_entries(elf: &[u8]) -> Result<XenEntries, ElfNoteError> {
    let mut entries = XenEntries::default();
    for (name, ntype, desc) in notes(elf)? {
        if name != "Xen" {
            continue;
        }
        let value = match desc.len() {
            4 => u64::from(u32::from_le_bytes(desc[..4].try_into().expect("4 bytes"))),
            8 => u64::from_le_bytes(desc[..8].try_into().expect("8 bytes")),
            _ => continue,
        };
        match ntype {
            XEN_ELFNOTE_ENTRY => entries.pv = Some(value),
            XEN_ELFNOTE_PHYS32_ENTRY => entries.pvh = Some(value),
            _ => {}
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut seg = Vec::new();
        for (name, ty, desc) in notes {
            let name = format!("{name}\0");
            seg.extend((name.len() as u32).to_le_bytes());
            seg.extend((desc.len() as u32).to_le_bytes());
            seg.extend(ty.to_le_bytes());
            seg.extend(name.as_bytes());
            seg.resize(align4(seg.len()), 0);
            seg.extend(*desc);
            seg.resize(align4(seg.len()), 0);
        }
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        elf[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        elf[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
        elf[ph + 32..ph + 40].copy_from_slice(&(seg.len() as u64).to_le_bytes());
        elf.extend(seg);
        elf
    }

    #[test]
    fn finds_pv_and_pvh_entries() {
        let elf = elf_with_notes(&[
            ("GNU", 3, &[1, 2, 3, 4]),
            (
                "Xen",
                XEN_ELFNOTE_ENTRY,
                &0xffff_ffff_8100_0000u64.to_le_bytes(),
            ),
            (
                "Xen",
                XEN_ELFNOTE_PHYS32_ENTRY,
                &0x0100_0000u32.to_le_bytes(),
            ),
        ]);
        let e = xen_entries(&elf).unwrap();
        assert_eq!(e.pv, Some(0xffff_ffff_8100_0000));
        assert_eq!(e.pvh, Some(0x0100_0000));
    }

    #[test]
    fn a_kernel_without_the_pvh_note_has_none() {
        let elf = elf_with_notes(&[("Xen", XEN_ELFNOTE_ENTRY, &1u64.to_le_bytes())]);
        assert_eq!(xen_entries(&elf).unwrap().pvh, None);
    }

    #[test]
    fn non_elf_and_truncated_files_are_errors() {
        assert_eq!(xen_entries(b"MZ not an elf"), Err(ElfNoteError::NotElf64));
        let mut elf = elf_with_notes(&[("Xen", 18, &[0; 4])]);
        elf.truncate(130);
        assert!(matches!(xen_entries(&elf), Err(ElfNoteError::Truncated(_))));
    }
}
