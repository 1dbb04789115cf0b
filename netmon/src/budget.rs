//! The agent's budget of unsent reply bytes: one cap for all clients, and one per non-root
//! client uid so that one user's unread replies cannot spend what the others need.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "uid {uid} has {held} bytes of replies unread, the most one user may hold ({cap}); read \
         or close them and try again"
    )]
    User { uid: u32, held: usize, cap: usize },
    #[error(
        "the agent holds {held} bytes of unread replies, the most it may ({cap}: slow clients); \
         try again"
    )]
    Global { held: usize, cap: usize },
}

#[derive(Debug, Default)]
struct Held {
    all: usize,
    by_uid: HashMap<u32, usize>,
}

/// Bytes held by replies not yet sent, within a global and a per-uid cap. Root is the
/// administrator: only the global cap holds its replies (a snapshot of every namespace can be
/// larger than a user's share).
#[derive(Debug)]
pub struct Budget {
    total: usize,
    per_uid: usize,
    held: Mutex<Held>,
}

/// Bytes taken from a [`Budget`]; given back on drop.
#[derive(Debug)]
pub struct Grant {
    budget: Arc<Budget>,
    uid: u32,
    bytes: usize,
}

impl Budget {
    pub fn new(total: usize, per_uid: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_uid: per_uid.min(total),
            held: Mutex::new(Held::default()),
        })
    }

    /// Takes `bytes` for a reply to `uid`, or says which cap it would pass. Never waits: a
    /// renderer that finds the budget spent fails its reply instead of holding a thread.
    pub fn take(self: &Arc<Self>, uid: u32, bytes: usize) -> Result<Grant, Refused> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.by_uid.get(&uid).copied().unwrap_or(0);
        if uid != 0 && mine + bytes > self.per_uid {
            return Err(Refused::User {
                uid,
                held: mine,
                cap: self.per_uid,
            });
        }
        if held.all + bytes > self.total {
            return Err(Refused::Global {
                held: held.all,
                cap: self.total,
            });
        }
        held.all += bytes;
        *held.by_uid.entry(uid).or_insert(0) += bytes;
        Ok(Grant {
            budget: self.clone(),
            uid,
            bytes,
        })
    }

    /// Bytes held in all and by `uid`.
    pub fn held(&self, uid: u32) -> (usize, usize) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        (held.all, held.by_uid.get(&uid).copied().unwrap_or(0))
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let mut held = self.budget.held.lock().unwrap_or_else(|e| e.into_inner());
        held.all = held.all.saturating_sub(self.bytes);
        if let Some(n) = held.by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                held.by_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_spend_what_another_needs() {
        let budget = Budget::new(300, 100);
        let a: Vec<Grant> = (0..10).map(|_| budget.take(1000, 10).unwrap()).collect();
        assert_eq!(
            budget.take(1000, 1).unwrap_err(),
            Refused::User {
                uid: 1000,
                held: 100,
                cap: 100
            }
        );
        // Another user still gets its share while the first holds all of its own.
        let b = budget.take(1001, 100).unwrap();
        assert_eq!(budget.held(1001), (200, 100));
        drop(a);
        assert_eq!(budget.held(1000), (100, 0));
        drop(b);
        assert_eq!(budget.held(1001), (0, 0));
        assert!(budget.held.lock().unwrap().by_uid.is_empty());
    }

    #[test]
    fn the_global_cap_holds_whatever_the_users() {
        let budget = Budget::new(250, 100);
        let _held: Vec<Grant> = (0..5).map(|uid| budget.take(uid, 50).unwrap()).collect();
        let err = budget.take(9, 1).unwrap_err();
        assert_eq!(
            err,
            Refused::Global {
                held: 250,
                cap: 250
            }
        );
        assert!(err.to_string().contains("try again"), "{err}");
    }

    #[test]
    fn a_per_user_cap_above_the_total_is_the_total() {
        let budget = Budget::new(100, 1000);
        assert!(matches!(
            budget.take(1000, 101),
            Err(Refused::User { cap: 100, .. })
        ));
        assert!(budget.take(1000, 100).is_ok());
    }

    #[test]
    fn root_is_held_by_the_global_cap_only() {
        let budget = Budget::new(300, 100);
        let root = budget.take(0, 250).unwrap();
        assert_eq!(
            budget.take(1000, 100).unwrap_err(),
            Refused::Global {
                held: 250,
                cap: 300
            }
        );
        drop(root);
        assert!(budget.take(1000, 100).is_ok());
    }
}
