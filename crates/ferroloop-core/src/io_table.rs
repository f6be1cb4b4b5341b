//! The fd table: which watcher waits for reading and which for writing on
//! each file descriptor, and the reactor token each fd is registered under.
//!
//! ## Invariants
//! - One entry per watched fd; its token is its index in `slots`, stable
//!   until both sides are empty and [`IoTable::release`] frees it.
//! - An entry with a reader or a writer is registered with the reactor with
//!   exactly that interest ([`crate::LoopCore`] keeps the two in step).
//! - Tokens are reused only after release, so an event for a released token
//!   finds no entry (or, at worst, a newer fd under the same token, whose
//!   level-triggered dispatch is harmless: its owner reads or writes until
//!   `WouldBlock`).

use std::collections::HashMap;
use std::os::fd::RawFd;

/// The watchers of one fd.
#[derive(Debug)]
pub struct Watcher<W> {
    fd: RawFd,
    pub reader: Option<W>,
    pub writer: Option<W>,
}

impl<W> Watcher<W> {
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn wants_read(&self) -> bool {
        self.reader.is_some()
    }

    pub fn wants_write(&self) -> bool {
        self.writer.is_some()
    }
}

/// What one [`IoTable::set`] changed, for the reactor to follow.
#[derive(Debug)]
pub struct Change<W> {
    pub token: usize,
    /// The fd was registered before this change.
    pub was_registered: bool,
    /// The watcher this change replaced or removed.
    pub replaced: Option<W>,
    now_read: bool,
    now_write: bool,
}

impl<W> Change<W> {
    /// The interest the fd must now be registered with (`None`: none).
    pub fn interest(&self) -> Option<(bool, bool)> {
        (self.now_read || self.now_write).then_some((self.now_read, self.now_write))
    }
}

/// fd → watchers, indexed by reactor token.
#[derive(Debug)]
pub struct IoTable<W> {
    slots: Vec<Option<Watcher<W>>>,
    by_fd: HashMap<RawFd, usize>,
    free: Vec<usize>,
}

impl<W> Default for IoTable<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> IoTable<W> {
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            by_fd: HashMap::new(),
            free: Vec::new(),
        }
    }

    /// Number of watched fds.
    pub fn len(&self) -> usize {
        self.by_fd.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fd.is_empty()
    }

    /// The watchers registered under `token`.
    pub fn get(&self, token: usize) -> Option<&Watcher<W>> {
        self.slots.get(token).and_then(Option::as_ref)
    }

    /// The watchers of `fd`.
    pub fn get_fd(&self, fd: RawFd) -> Option<&Watcher<W>> {
        self.by_fd.get(&fd).and_then(|&t| self.get(t))
    }

    /// Every watched fd.
    pub fn iter(&self) -> impl Iterator<Item = &Watcher<W>> {
        self.slots.iter().flatten()
    }

    /// Sets (`Some`) or clears (`None`) one side of `fd`. `None` when
    /// clearing a side of an fd that is not watched at all.
    pub fn set(&mut self, fd: RawFd, w: Option<W>, read: bool) -> Option<Change<W>> {
        let (token, was_registered) = match self.by_fd.get(&fd) {
            Some(&t) => (t, true),
            None => {
                w.as_ref()?;
                let t = self.free.pop().unwrap_or(self.slots.len());
                if t == self.slots.len() {
                    self.slots.push(None);
                }
                self.slots[t] = Some(Watcher {
                    fd,
                    reader: None,
                    writer: None,
                });
                self.by_fd.insert(fd, t);
                (t, false)
            }
        };
        let entry = self.slots[token]
            .as_mut()
            .expect("by_fd points at a live slot");
        let side = if read {
            &mut entry.reader
        } else {
            &mut entry.writer
        };
        let replaced = std::mem::replace(side, w);
        Some(Change {
            token,
            was_registered,
            replaced,
            now_read: entry.reader.is_some(),
            now_write: entry.writer.is_some(),
        })
    }

    /// Frees the entry under `token` once it has no watcher left.
    pub fn release(&mut self, token: usize) {
        let Some(slot) = self.slots.get_mut(token) else {
            return;
        };
        if slot
            .as_ref()
            .is_some_and(|w| w.reader.is_none() && w.writer.is_none())
        {
            let w = slot.take().expect("checked above");
            self.by_fd.remove(&w.fd);
            self.free.push(token);
        }
    }

    /// Reverts a [`IoTable::set`] that added a watcher the reactor refused:
    /// the side gets its previous watcher back, and a new entry goes away.
    pub fn undo(&mut self, fd: RawFd, change: Change<W>, read: bool) {
        if let Some(entry) = self.slots.get_mut(change.token).and_then(Option::as_mut) {
            let side = if read {
                &mut entry.reader
            } else {
                &mut entry.writer
            };
            *side = change.replaced;
        }
        debug_assert!(self.by_fd.get(&fd) == Some(&change.token));
        self.release(change.token);
    }

    /// Empties the table, handing back every fd and its watchers (the
    /// loop's `close()`; the caller deregisters the fds).
    pub fn drain(&mut self) -> Vec<Watcher<W>> {
        self.by_fd.clear();
        self.free.clear();
        self.slots.drain(..).flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_tokens_and_release() {
        let mut t: IoTable<&str> = IoTable::new();
        let c = t.set(5, Some("r"), true).unwrap();
        assert!(!c.was_registered && c.replaced.is_none());
        assert_eq!(c.interest(), Some((true, false)));
        let tok = c.token;
        let c = t.set(5, Some("w"), false).unwrap();
        assert!(c.was_registered && c.token == tok);
        assert_eq!(c.interest(), Some((true, true)));
        let c = t.set(5, Some("r2"), true).unwrap();
        assert_eq!(c.replaced, Some("r"));
        let c = t.set(5, None, true).unwrap();
        assert_eq!(c.replaced, Some("r2"));
        assert_eq!(c.interest(), Some((false, true)));
        let c = t.set(5, None, false).unwrap();
        assert_eq!(c.interest(), None);
        t.release(c.token);
        assert!(t.is_empty() && t.get(tok).is_none());
        assert!(t.set(5, None, true).is_none());
        // the freed token is reused
        assert_eq!(t.set(9, Some("x"), true).unwrap().token, tok);
    }

    #[test]
    fn undo_restores_previous_state() {
        let mut t: IoTable<&str> = IoTable::new();
        let c = t.set(3, Some("a"), true).unwrap();
        t.undo(3, c, true);
        assert!(t.is_empty());
        t.set(3, Some("a"), true).unwrap();
        let c = t.set(3, Some("b"), true).unwrap();
        t.undo(3, c, true);
        assert_eq!(t.get_fd(3).unwrap().reader, Some("a"));
    }
}
