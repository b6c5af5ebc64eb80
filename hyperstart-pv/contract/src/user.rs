//! User and group resolution from an image's `/etc/passwd` and `/etc/group`, with the
//! semantics of Docker (runc's `GetExecUser`).

/// Errors of user resolution.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// A user name not in `/etc/passwd`.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// A group name not in `/etc/group`.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// A malformed user string.
    #[error("invalid user {0:?}")]
    Invalid(String),
}

/// The resolved identity the app runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (from `/etc/group` membership, only when no group was given).
    pub groups: Vec<u32>,
    /// Home directory (`/` when the user has no passwd entry).
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = l.split(':').collect();
        Some(PasswdEntry {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
            home: f.get(5).copied().unwrap_or(""),
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|l| {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = l.split(':').collect();
        Some(GroupEntry {
            name: f.first()?,
            gid: f.get(2)?.parse().ok()?,
            members: f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    })
}

fn numeric(s: &str) -> Option<u32> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Resolves a Docker user string ("", "name", "uid", "uid:gid", "name:group",
/// "uid:group", "name:gid") against the contents of `/etc/passwd` and `/etc/group`
/// (either may be empty when the image lacks the file).
pub fn resolve(user: &str, passwd: &str, group: &str) -> Result<ExecUser, UserError> {
    let (user_arg, group_arg) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if group_arg == Some("") || (user_arg.is_empty() && group_arg.is_some()) {
        return Err(UserError::Invalid(user.to_string()));
    }
    let user_arg = if user_arg.is_empty() { "0" } else { user_arg };
    let uid_num = numeric(user_arg);

    let mut out = ExecUser {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        home: "/".to_string(),
    };
    let entry = passwd_entries(passwd).find(|e| match uid_num {
        Some(n) => e.uid == n,
        None => e.name == user_arg,
    });
    let matched_name = match (entry, uid_num) {
        (Some(e), _) => {
            out.uid = e.uid;
            out.gid = e.gid;
            if !e.home.is_empty() {
                out.home = e.home.to_string();
            }
            Some(e.name)
        }
        (None, Some(n)) => {
            out.uid = n;
            None
        }
        (None, None) => return Err(UserError::UnknownUser(user_arg.to_string())),
    };

    match group_arg {
        Some(g) => {
            let gid_num = numeric(g);
            let found = group_entries(group).find(|e| match gid_num {
                Some(n) => e.gid == n,
                None => e.name == g,
            });
            out.gid = match (found, gid_num) {
                (Some(e), _) => e.gid,
                (None, Some(n)) => n,
                (None, None) => return Err(UserError::UnknownGroup(g.to_string())),
            };
        }
        None => {
            if let Some(name) = matched_name {
                out.groups = group_entries(group)
                    .filter(|e| e.members.contains(&name))
                    .map(|e| e.gid)
                    .collect();
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # comment\n\
        www:x:33:33:www:/var/www:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str =
        "root:x:0:\nwww:x:33:\nadm:x:4:www,daemon\nstaff:x:50:www\nnogroup:x:65534:\n";

    #[test]
    fn empty_is_root() {
        let u = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let u = resolve("www", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        assert_eq!(u.groups, vec![4, 50]);
        assert_eq!(u.home, "/var/www");
    }

    #[test]
    fn nobody_by_name() {
        let u = resolve("nobody", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
    }

    #[test]
    fn unknown_name_is_an_error() {
        assert_eq!(
            resolve("ghost", PASSWD, GROUP),
            Err(UserError::UnknownUser("ghost".into()))
        );
        assert!(resolve("ghost", "", "").is_err());
    }

    #[test]
    fn numeric_uid_not_in_passwd_gets_gid_0() {
        let u = resolve("1000", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 0, "/"));
        assert!(u.groups.is_empty());
    }

    #[test]
    fn numeric_uid_in_passwd_uses_entry() {
        let u = resolve("33", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        assert_eq!(u.groups, vec![4, 50]);
    }

    #[test]
    fn uid_gid_numeric_without_files() {
        let u = resolve("1000:1000", "", "").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert!(u.groups.is_empty());
    }

    #[test]
    fn name_and_group() {
        let u = resolve("www:staff", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (33, 50));
        assert!(
            u.groups.is_empty(),
            "explicit group: no supplementary groups"
        );
        assert_eq!(
            resolve("www:ghosts", PASSWD, GROUP),
            Err(UserError::UnknownGroup("ghosts".into()))
        );
    }

    #[test]
    fn malformed() {
        assert!(resolve("www:", PASSWD, GROUP).is_err());
        assert!(resolve(":33", PASSWD, GROUP).is_err());
    }
}
