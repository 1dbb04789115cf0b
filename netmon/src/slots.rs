//! Fair sharing of the agent's snapshot slots between users: one uid's flood of requests
//! waits its own turn and never keeps another uid's snapshot waiting behind it.
//!
//! A uid holds at most all slots but one, so a slot is always left for someone else; a freed
//! slot goes to the waiting uid that holds the fewest, on a tie to the one served longest ago
//! (round-robin), then to its earliest request. Root is one uid among others here: its
//! `--all-netns` every second must not starve a member either.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

/// Who holds and who waits for the slots; `T` is what a waiter is woken with (pure logic,
/// tested without a runtime).
#[derive(Debug)]
struct State<T> {
    free: usize,
    per_uid: usize,
    held: HashMap<u32, usize>,
    /// Waiters in arrival order: (ticket, uid, wake-up).
    waiting: VecDeque<(u64, u32, T)>,
    next_ticket: u64,
    /// When each uid that holds or waits was last given a slot (a count of grants).
    last_grant: HashMap<u32, u64>,
    grants: u64,
}

impl<T> State<T> {
    fn new(slots: usize) -> Self {
        Self {
            free: slots,
            per_uid: slots.saturating_sub(1).max(1),
            held: HashMap::new(),
            waiting: VecDeque::new(),
            next_ticket: 0,
            last_grant: HashMap::new(),
            grants: 0,
        }
    }

    fn held(&self, uid: u32) -> usize {
        self.held.get(&uid).copied().unwrap_or(0)
    }

    /// The waiter that gets the next free slot: under its uid's cap, fewest held, served
    /// longest ago, earliest.
    fn pick(&self) -> Option<usize> {
        self.waiting
            .iter()
            .enumerate()
            .filter(|(_, (_, uid, _))| self.held(*uid) < self.per_uid)
            .min_by_key(|(i, (_, uid, _))| {
                let last = self.last_grant.get(uid).copied().unwrap_or(0);
                (self.held(*uid), last, *i)
            })
            .map(|(i, _)| i)
    }

    fn take(&mut self, uid: u32) {
        self.free -= 1;
        *self.held.entry(uid).or_insert(0) += 1;
        self.grants += 1;
        self.last_grant.insert(uid, self.grants);
    }

    /// Forgets when `uid` was served once it neither holds nor waits: the map stays as small
    /// as the set of active uids.
    fn forget_if_idle(&mut self, uid: u32) {
        if self.held(uid) == 0 && !self.waiting.iter().any(|(_, u, _)| *u == uid) {
            self.last_grant.remove(&uid);
        }
    }

    /// A slot for `uid` now, or a ticket in the queue with `wake` to be woken with.
    fn arrive(&mut self, uid: u32, wake: T) -> Result<(), u64> {
        // Free slots left after every hand-out are only for uids at their cap; a waiter of
        // this uid exists only if it is at its cap too.
        if self.free > 0 && self.held(uid) < self.per_uid {
            self.take(uid);
            return Ok(());
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.waiting.push_back((ticket, uid, wake));
        Err(ticket)
    }

    /// A waiter that gave up (its client left).
    fn leave(&mut self, ticket: u64) {
        let Some(i) = self.waiting.iter().position(|(t, _, _)| *t == ticket) else {
            return;
        };
        if let Some((_, uid, _)) = self.waiting.remove(i) {
            self.forget_if_idle(uid);
        }
    }

    /// `uid` gives a slot back; returns the waiters that got one, each already counted.
    fn release(&mut self, uid: u32) -> Vec<(u32, T)> {
        self.free += 1;
        if let Some(n) = self.held.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&uid);
            }
        }
        let mut woken = Vec::new();
        while self.free > 0 {
            let Some(i) = self.pick() else { break };
            let Some((_, to, wake)) = self.waiting.remove(i) else {
                break;
            };
            self.take(to);
            woken.push((to, wake));
        }
        self.forget_if_idle(uid);
        woken
    }
}

/// The agent's snapshot slots.
#[derive(Debug)]
pub struct Slots {
    state: Mutex<State<oneshot::Sender<Slot>>>,
}

/// One slot, held by one uid; given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let woken = self.slots.lock().release(self.uid);
        // Woken outside the lock: a waiter gone meanwhile drops its slot, which releases it
        // again (and takes the lock).
        for (uid, tx) in woken {
            let _ = tx.send(Slot {
                slots: self.slots.clone(),
                uid,
            });
        }
    }
}

/// Takes a waiter out of the queue if its future is dropped before it got a slot.
struct Leave<'a> {
    slots: &'a Slots,
    ticket: Option<u64>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            self.slots.lock().leave(ticket);
        }
    }
}

impl Slots {
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::new(slots)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<oneshot::Sender<Slot>>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot for `uid`; cancel-safe: dropping the future gives up its place (or
    /// the slot it was just handed).
    pub async fn acquire(self: &Arc<Self>, uid: u32) -> Slot {
        let (tx, rx) = oneshot::channel();
        let ticket = match self.lock().arrive(uid, tx) {
            Ok(()) => {
                return Slot {
                    slots: self.clone(),
                    uid,
                };
            }
            Err(ticket) => ticket,
        };
        let mut leave = Leave {
            slots: self,
            ticket: Some(ticket),
        };
        match rx.await {
            Ok(slot) => {
                leave.ticket = None;
                slot
            }
            // The sender is only dropped by sending: it cannot happen while `self` lives.
            Err(_) => std::future::pending().await,
        }
    }

    /// Slots held by `uid` now.
    pub fn held(&self, uid: u32) -> usize {
        self.lock().held(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_never_takes_the_last_slot() {
        let mut s = State::new(4);
        for _ in 0..3 {
            assert_eq!(s.arrive(1, "a"), Ok(()));
        }
        assert!(s.arrive(1, "a4").is_err());
        assert!(s.arrive(1, "a5").is_err());
        // Another user gets the slot left at once, while the flood waits.
        assert_eq!(s.arrive(2, "b"), Ok(()));
        assert!(s.arrive(3, "c").is_err());
        // A's slot goes to C, who holds none, before A's own waiters.
        assert_eq!(s.release(1), vec![(3, "c")]);
        assert_eq!(s.release(2), vec![(1, "a4")]);
        // A holds three again: the free slot waits for someone else.
        assert_eq!(s.release(3), vec![]);
        assert_eq!(s.release(1), vec![(1, "a5")]);
        assert!(s.waiting.is_empty());
        assert_eq!(s.held(1), 3);
        assert_eq!(s.last_grant.len(), 1, "uids 2 and 3 are idle: forgotten");
    }

    #[test]
    fn freed_slots_go_to_the_uid_holding_fewest_then_the_earliest() {
        let mut s = State::new(4);
        for uid in [1, 1, 2, 2] {
            assert_eq!(s.arrive(uid, uid * 10), Ok(()));
        }
        assert!(s.arrive(1, 11).is_err());
        assert!(s.arrive(2, 21).is_err());
        assert!(s.arrive(3, 31).is_err());
        assert_eq!(s.release(2), vec![(3, 31)]);
        // 1 and 2 hold one each now: 1 was served longer ago.
        assert_eq!(s.release(1), vec![(1, 11)]);
        assert_eq!(s.release(3), vec![(2, 21)]);
    }

    #[test]
    fn a_waiter_that_leaves_is_skipped() {
        let mut s = State::new(2);
        assert_eq!(s.arrive(1, 'a'), Ok(()));
        assert_eq!(s.arrive(2, 'b'), Ok(()));
        let gone = s.arrive(3, 'c').unwrap_err();
        assert!(s.arrive(4, 'd').is_err());
        s.leave(gone);
        assert_eq!(s.release(1), vec![(4, 'd')]);
    }

    #[test]
    fn a_single_slot_is_shared_in_turns() {
        let mut s = State::new(1);
        assert_eq!(s.arrive(1, 1), Ok(()));
        assert!(s.arrive(1, 2).is_err());
        assert!(s.arrive(1, 3).is_err());
        assert!(s.arrive(2, 4).is_err());
        // Uid 1 came first twice, but was just served: uid 2's turn.
        assert_eq!(s.release(1), vec![(2, 4)]);
        assert_eq!(s.release(2), vec![(1, 2)]);
        assert_eq!(s.release(1), vec![(1, 3)]);
    }

    #[tokio::test]
    async fn a_flood_of_one_uid_leaves_another_a_slot_and_dropped_waiters_give_theirs_up() {
        let slots = Slots::new(4);
        let held: Vec<Slot> = take_n(&slots, 1, 3).await;
        let mut waiting: Vec<_> = (0..50)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.acquire(1).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let other = tokio::time::timeout(std::time::Duration::from_secs(1), slots.acquire(2))
            .await
            .expect("uid 2 waited behind uid 1's flood");
        assert_eq!(slots.held(1), 3);
        // Waiters that give up leave no slot behind when the held ones are freed.
        for w in waiting.drain(..) {
            w.abort();
            let _ = w.await;
        }
        drop(held);
        drop(other);
        assert_eq!(slots.held(1), 0);
        assert_eq!(slots.lock().free, 4);
        assert!(slots.lock().waiting.is_empty());
    }

    async fn take_n(slots: &Arc<Slots>, uid: u32, n: usize) -> Vec<Slot> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(slots.acquire(uid).await);
        }
        v
    }
}
