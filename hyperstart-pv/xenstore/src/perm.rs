//! Node permissions as xenstored spells them: `n0`, `r5`, `w5`, `b5`.

use std::fmt;
use std::str::FromStr;

use crate::XenstoreError;

/// What a domain may do with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `n`: nothing.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

/// One permission entry. In a node's list the first entry names the owner (who may do
/// anything) and its access is what every domain not listed later gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    /// The domain the entry is about.
    pub domid: u32,
    /// Its access.
    pub access: Access,
}

impl Perm {
    /// A new entry.
    pub fn new(access: Access, domid: u32) -> Perm {
        Perm { domid, access }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        write!(f, "{c}{}", self.domid)
    }
}

impl FromStr for Perm {
    type Err = XenstoreError;

    fn from_str(s: &str) -> Result<Perm, XenstoreError> {
        let bad = || XenstoreError::BadPerm(s.to_string());
        let mut chars = s.chars();
        let access = match chars.next().ok_or_else(bad)? {
            'n' => Access::None,
            'r' => Access::Read,
            'w' => Access::Write,
            'b' => Access::Both,
            _ => return Err(bad()),
        };
        let rest = chars.as_str();
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let domid = rest.parse().map_err(|_| bad())?;
        Ok(Perm { domid, access })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in ["n0", "r5", "w5", "b5", "b32752"] {
            assert_eq!(s.parse::<Perm>().unwrap().to_string(), s);
        }
        assert_eq!("r5".parse::<Perm>().unwrap(), Perm::new(Access::Read, 5));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "x5", "r", "r-1", "r5a", "5"] {
            assert!(s.parse::<Perm>().is_err(), "{s}");
        }
    }
}
