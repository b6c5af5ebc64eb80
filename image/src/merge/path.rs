//! Normalising entry names and checking link targets, purely lexically: nothing here
//! touches dom0's filesystem.

/// Why a name was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathProblem {
    /// Starts with `/`.
    Absolute,
    /// Has a `..` component.
    Traversal,
    /// Longer than the limit.
    TooLong,
    /// Holds a NUL byte (no filesystem can store it).
    Nul,
    /// A component longer than [`NAME_MAX`].
    ComponentTooLong,
}

/// Longest name of one directory entry (Linux's `NAME_MAX`; squashfs's limit too).
pub const NAME_MAX: usize = 255;

/// Normalises a tar entry name to `a/b/c` (no leading `./`, no `.` or empty components,
/// no trailing `/`). The empty result is the root. Absolute names, `..`, NUL bytes and
/// components longer than [`NAME_MAX`] are refused.
pub fn normalise(raw: &[u8], max_len: usize) -> Result<Vec<u8>, PathProblem> {
    if raw.len() > max_len {
        return Err(PathProblem::TooLong);
    }
    if raw.contains(&0) {
        return Err(PathProblem::Nul);
    }
    if raw.first() == Some(&b'/') {
        return Err(PathProblem::Absolute);
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(PathProblem::Traversal),
            c if c.len() > NAME_MAX => return Err(PathProblem::ComponentTooLong),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// The parent of a normalised path (`b""` for top-level names).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// The last component of a normalised path.
pub fn base(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Joins a normalised directory and a name.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Every proper ancestor of a normalised path, outermost first (`a`, `a/b` for `a/b/c`).
pub fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(move |(i, _)| &path[..i])
}

/// Whether a symlink at `link` (normalised) with `target` stays inside the root when
/// resolved lexically the way the guest's kernel would (absolute targets start at the
/// root, relative ones at the link's directory); a `..` that would climb above the root
/// counts as escaping.
pub fn symlink_stays_inside(link: &[u8], target: &[u8]) -> bool {
    let mut depth: usize = if target.first() == Some(&b'/') {
        0
    } else {
        parent(link)
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .count()
    };
    for comp in target.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(normalise(b"./a/b/", 100).unwrap(), b"a/b");
        assert_eq!(normalise(b"a//./b", 100).unwrap(), b"a/b");
        assert_eq!(normalise(b"./", 100).unwrap(), b"");
        assert_eq!(normalise(b"/etc", 100), Err(PathProblem::Absolute));
        assert_eq!(normalise(b"a/../b", 100), Err(PathProblem::Traversal));
        assert_eq!(normalise(b"abc", 2), Err(PathProblem::TooLong));
        assert_eq!(normalise(b"a\0b", 100), Err(PathProblem::Nul));
        let long = [b'x'; 256];
        assert_eq!(normalise(&long, 4096), Err(PathProblem::ComponentTooLong));
        assert_eq!(normalise(&long[..255], 4096).unwrap().len(), 255);
    }

    #[test]
    fn parents_and_ancestors() {
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"a"), b"");
        assert_eq!(base(b"a/b/c"), b"c");
        let a: Vec<&[u8]> = ancestors(b"a/b/c").collect();
        assert_eq!(a, vec![&b"a"[..], &b"a/b"[..]]);
        assert_eq!(join(b"", b"x"), b"x");
        assert_eq!(join(b"a", b"x"), b"a/x");
    }

    #[test]
    fn symlink_escape() {
        assert!(symlink_stays_inside(b"bin", b"usr/bin"));
        assert!(symlink_stays_inside(
            b"etc/localtime",
            b"/usr/share/zoneinfo/UTC"
        ));
        assert!(symlink_stays_inside(b"a/b/c", b"../../x"));
        assert!(!symlink_stays_inside(b"a/b/c", b"../../../x"));
        assert!(!symlink_stays_inside(b"x", b"/../etc/passwd"));
        assert!(!symlink_stays_inside(b"x", b".."));
    }
}
