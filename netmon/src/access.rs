//! Who may see what through the agent (the privilege model in the README).
//!
//! - root, and members of the admin group ([`ADMIN_GROUP`]): everything: every namespace
//!   (`--all-netns`), every socket's owner (pid, comm, fd), the whole closed history;
//! - anyone else who can reach the socket (members of the `netmon` group): like `ss` run by
//!   that user in its own network namespace: every socket of that namespace with its uid, but
//!   the owners of its own sockets only, and only its own closed connections.

use crate::{
    snapshot::Row,
    table::{Closed, Owner},
};

/// Members of this group may see what root sees.
pub const ADMIN_GROUP: &str = "netmon-admin";

/// What a client may see, decided from its credentials (`SO_PEERCRED`, `SO_PEERGROUPS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// root or a member of [`ADMIN_GROUP`].
    Admin,
    /// Anyone else: its own namespace, its own owners and history.
    User { uid: u32 },
}

impl Access {
    /// `gid` and `groups` are the client's primary and supplementary groups; `admin_gid` that
    /// of [`ADMIN_GROUP`], if the group exists.
    pub fn of(uid: u32, gid: u32, groups: &[u32], admin_gid: Option<u32>) -> Self {
        let admin = uid == 0 || admin_gid.is_some_and(|a| a == gid || groups.contains(&a));
        if admin {
            Self::Admin
        } else {
            Self::User { uid }
        }
    }

    /// Why a request is refused, if it is: `--all-netns` is for admins only.
    pub fn refuse(&self, all_netns: bool) -> Option<String> {
        match self {
            Self::User { .. } if all_netns => Some(format!(
                "--all-netns shows every user's namespaces: it needs root or membership in the \
                 agent's admin group ({ADMIN_GROUP} unless `netmon agent --admin-group` names \
                 another)"
            )),
            _ => None,
        }
    }

    /// Takes out of a snapshot's row what the client may not see: another user's owner.
    /// Done before the filter runs, so that a `pid`/`comm` filter cannot probe what is hidden
    /// (closed connections: [`Access::closed`]).
    pub fn redact(&self, row: &mut Row) {
        row.owner = self.owner(row.sock.uid, row.owner);
    }

    /// The owner a client may see of a socket of `socket_uid` whose owner is `owner`.
    pub fn owner(&self, socket_uid: u32, owner: Option<Owner>) -> Option<Owner> {
        match self {
            Self::Admin => owner,
            Self::User { uid } => owner.filter(|o| socket_uid == *uid && o.task.uid == *uid),
        }
    }

    /// The owner a client may see when the socket's own uid is not known (the tracer's
    /// table, for `top`): the one whose process runs as the client's uid.
    pub fn owner_by_task(&self, owner: Option<Owner>) -> Option<Owner> {
        match self {
            Self::Admin => owner,
            Self::User { uid } => owner.filter(|o| o.task.uid == *uid),
        }
    }

    /// True if the client may see this closed connection: its own (its owner's uid is the
    /// client's); one of unknown owner is nobody's to show.
    pub fn closed(&self, c: &Closed) -> bool {
        match self {
            Self::Admin => true,
            Self::User { uid } => c.owner.is_some_and(|o| o.task.uid == *uid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Task;

    fn owner(uid: u32) -> Owner {
        Owner::new(Task::new(100, 100, uid, "curl"))
    }

    #[test]
    fn root_and_admin_group_are_admins() {
        assert_eq!(Access::of(0, 0, &[], None), Access::Admin);
        assert_eq!(Access::of(1000, 1000, &[50, 60], Some(60)), Access::Admin);
        assert_eq!(Access::of(1000, 60, &[], Some(60)), Access::Admin);
        // In the netmon group only: a user.
        assert_eq!(
            Access::of(1000, 1000, &[50], Some(60)),
            Access::User { uid: 1000 }
        );
        assert_eq!(
            Access::of(1000, 1000, &[50], None),
            Access::User { uid: 1000 }
        );
    }

    #[test]
    fn users_see_their_own_owners_only_and_no_other_namespace() {
        let user = Access::User { uid: 1000 };
        assert!(user.refuse(true).unwrap().contains("netmon-admin"));
        assert_eq!(user.refuse(false), None);
        assert_eq!(Access::Admin.refuse(true), None);
        assert_eq!(user.owner(1000, Some(owner(1000))), Some(owner(1000)));
        // Another user's socket, or the user's socket held by another user's process.
        assert_eq!(user.owner(0, Some(owner(0))), None);
        assert_eq!(user.owner(1000, Some(owner(0))), None);
        assert_eq!(user.owner(0, Some(owner(1000))), None);
        assert_eq!(Access::Admin.owner(0, Some(owner(0))), Some(owner(0)));
    }

    #[test]
    fn users_see_their_own_closed_connections_only() {
        let closed = |o: Option<Owner>| Closed {
            cookie: 1,
            netns: 1,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            born_ns: None,
            closed_ns: 0,
            last: netmon_common::TcpState::FinWait2,
            path: Default::default(),
            owner: o,
            end: crate::table::End::Normal,
            bytes_acked: 0,
            bytes_received: 0,
            cgroup_id: 0,
            cgroup_source: netmon_common::CgroupSource::None,
        };
        let user = Access::User { uid: 1000 };
        assert!(user.closed(&closed(Some(owner(1000)))));
        assert!(!user.closed(&closed(Some(owner(0)))));
        assert!(!user.closed(&closed(None)));
        assert!(Access::Admin.closed(&closed(None)));
    }
}
