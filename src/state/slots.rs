//! Entries in write order, in slots that never move: the embedded store's memory.
//!
//! A young store only grows (entries live for the TTL, an hour by default), so what a write
//! costs in fresh memory is what it touches for the first time. Entries kept inline in a hash
//! table are copied into a fresh table at every doubling (128-byte buckets), and a FIFO of
//! writes doubles too. Here an entry is written once into a slot of a fixed-size chunk that is
//! never reallocated (a chunk's pages are touched as its slots are used), the hash tables hold
//! 4-byte slot numbers, and the write order is a doubly linked list through the slots: a
//! rewrite moves its slot to the back instead of queueing a second element. Freed slots are
//! reused first (a free list through the same links).

use std::time::Instant;

/// Slots per chunk (a power of two: a slot number splits into chunk and offset by shifts).
const CHUNK: usize = 256;

/// No slot: the end of a list.
const NONE: u32 = u32::MAX;

/// One slot: its neighbours in write order (or the next free slot), its entry's key hash and
/// expiry, and the entry (`None` while free).
#[derive(Debug)]
struct Slot<T> {
    prev: u32,
    next: u32,
    hash: u64,
    expires: Instant,
    value: Option<T>,
}

/// Entries in slots numbered by `u32`, linked oldest write first. Holds at most `u32::MAX - 1`
/// entries.
#[derive(Debug)]
pub struct Slots<T> {
    chunks: Vec<Vec<Slot<T>>>,
    /// Oldest and newest write.
    head: u32,
    tail: u32,
    /// Last freed slot, linked through `next` to the ones freed before it.
    free: u32,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            chunks: Vec::new(),
            head: NONE,
            tail: NONE,
            free: NONE,
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores `value` as the newest write (a free slot if there is one, else a new one) and
    /// returns its slot number.
    pub fn insert(&mut self, hash: u64, expires: Instant, value: T) -> u32 {
        let i = if self.free != NONE {
            let i = self.free;
            let slot = self.slot_mut(i);
            let next_free = slot.next;
            slot.hash = hash;
            slot.expires = expires;
            slot.value = Some(value);
            self.free = next_free;
            i
        } else {
            self.push(hash, expires, value)
        };
        self.link_back(i);
        self.len += 1;
        i
    }

    /// A new slot at the end of the last chunk (a new chunk when it is full).
    fn push(&mut self, hash: u64, expires: Instant, value: T) -> u32 {
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let n = self.chunks.len() - 1;
        let chunk = &mut self.chunks[n];
        let i = n * CHUNK + chunk.len();
        chunk.push(Slot {
            prev: NONE,
            next: NONE,
            hash,
            expires,
            value: Some(value),
        });
        u32::try_from(i).unwrap_or_else(|_| unreachable!("the store's capacity is below u32::MAX"))
    }

    /// The entry in slot `i`, if it holds one.
    #[inline]
    pub fn get(&self, i: u32) -> Option<&T> {
        self.slot(i)?.value.as_ref()
    }

    /// The key hash slot `i` was written with (0 for a slot that does not exist).
    #[inline]
    pub fn hash(&self, i: u32) -> u64 {
        self.slot(i).map_or(0, |s| s.hash)
    }

    /// When the entry in slot `i` expires.
    #[inline]
    pub fn expires(&self, i: u32) -> Option<Instant> {
        self.slot(i)
            .filter(|s| s.value.is_some())
            .map(|s| s.expires)
    }

    /// The oldest write's slot.
    pub fn oldest(&self) -> Option<u32> {
        (self.head != NONE).then_some(self.head)
    }

    /// The oldest write's slot if its entry expired by `now`.
    #[inline]
    pub fn oldest_expired(&self, now: Instant) -> Option<u32> {
        let slot = self.slot(self.head)?;
        (slot.expires <= now).then_some(self.head)
    }

    /// Makes slot `i` the newest write, expiring at `expires` (a rewrite of its entry), and
    /// returns its entry to update.
    pub fn rewrite(&mut self, i: u32, expires: Instant) -> Option<&mut T> {
        self.get(i)?;
        self.unlink(i);
        self.link_back(i);
        let slot = self.slot_mut(i);
        slot.expires = expires;
        slot.value.as_mut()
    }

    /// Takes the entry out of slot `i` and frees the slot.
    pub fn remove(&mut self, i: u32) -> Option<T> {
        self.get(i)?;
        self.unlink(i);
        let free = self.free;
        let slot = self.slot_mut(i);
        let value = slot.value.take();
        slot.next = free;
        self.free = i;
        self.len -= 1;
        value
    }

    /// Slots made so far, free ones included (tests: freed slots are reused before new ones).
    #[cfg(test)]
    pub fn made(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    #[inline]
    fn slot(&self, i: u32) -> Option<&Slot<T>> {
        self.chunks.get(i as usize / CHUNK)?.get(i as usize % CHUNK)
    }

    /// Slot `i`, which the caller knows exists (it was handed out and slots are never dropped).
    #[inline]
    fn slot_mut(&mut self, i: u32) -> &mut Slot<T> {
        &mut self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    /// Appends slot `i` (linked nowhere) to the write order.
    #[inline]
    fn link_back(&mut self, i: u32) {
        let tail = self.tail;
        let slot = self.slot_mut(i);
        slot.prev = tail;
        slot.next = NONE;
        if tail == NONE {
            self.head = i;
        } else {
            self.slot_mut(tail).next = i;
        }
        self.tail = i;
    }

    /// Takes slot `i` out of the write order.
    #[inline]
    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = self.slot_mut(i);
            (s.prev, s.next)
        };
        if prev == NONE {
            self.head = next;
        } else {
            self.slot_mut(prev).next = next;
        }
        if next == NONE {
            self.tail = prev;
        } else {
            self.slot_mut(next).prev = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Slot numbers oldest write first, walking the links (and checking them both ways).
    fn order<T>(s: &Slots<T>) -> Vec<u32> {
        let mut out = Vec::new();
        let (mut i, mut prev) = (s.head, NONE);
        while i != NONE {
            let slot = s.slot(i).expect("linked slot exists");
            assert_eq!(slot.prev, prev);
            assert!(slot.value.is_some());
            out.push(i);
            (prev, i) = (i, slot.next);
        }
        assert_eq!(s.tail, prev);
        assert_eq!(out.len(), s.len());
        out
    }

    #[test]
    fn writes_are_kept_oldest_first_and_a_rewrite_moves_to_the_back() {
        let t0 = Instant::now();
        let mut s = Slots::default();
        let a = s.insert(1, t0, "a");
        let b = s.insert(2, t0, "b");
        let c = s.insert(3, t0, "c");
        assert_eq!(order(&s), [a, b, c]);
        assert_eq!(s.rewrite(a, t0 + Duration::from_secs(1)), Some(&mut "a"));
        assert_eq!(order(&s), [b, c, a]);
        s.rewrite(c, t0 + Duration::from_secs(2));
        assert_eq!(order(&s), [b, a, c]);
        s.rewrite(c, t0 + Duration::from_secs(3));
        assert_eq!(order(&s), [b, a, c]);
        assert_eq!(s.oldest(), Some(b));
        assert_eq!(s.oldest_expired(t0), Some(b));
        s.rewrite(b, t0 + Duration::from_secs(4));
        assert_eq!(order(&s), [a, c, b]);
        assert_eq!(s.oldest_expired(t0), None);
        assert_eq!(s.oldest_expired(t0 + Duration::from_secs(1)), Some(a));
        assert_eq!(s.expires(c), Some(t0 + Duration::from_secs(3)));
        assert_eq!((s.hash(a), s.get(a)), (1, Some(&"a")));
    }

    #[test]
    fn removal_anywhere_keeps_the_order_and_frees_the_slot_for_reuse() {
        let t0 = Instant::now();
        let mut s = Slots::default();
        let ids: Vec<u32> = (0..5).map(|n| s.insert(n, t0, n)).collect();
        assert_eq!(s.remove(ids[2]), Some(2));
        assert_eq!(s.remove(ids[2]), None);
        assert_eq!(s.rewrite(ids[2], t0), None);
        assert_eq!(s.remove(ids[0]), Some(0));
        assert_eq!(s.remove(ids[4]), Some(4));
        assert_eq!(order(&s), [ids[1], ids[3]]);
        assert_eq!(s.get(ids[0]), None);
        assert_eq!(s.expires(ids[0]), None);
        // The last freed slot first, then the one before it; then new slots.
        assert_eq!(s.insert(40, t0, 40), ids[4]);
        assert_eq!(s.insert(0, t0, 0), ids[0]);
        assert_eq!(s.insert(20, t0, 20), ids[2]);
        assert_eq!(s.insert(5, t0, 5), 5);
        assert_eq!(order(&s), [ids[1], ids[3], ids[4], ids[0], ids[2], 5]);
        assert_eq!(s.get(ids[4]), Some(&40));
        while let Some(i) = s.oldest() {
            s.remove(i);
        }
        assert_eq!(s.len(), 0);
        assert!(order(&s).is_empty());
    }

    #[test]
    fn slots_never_move_across_chunks_and_are_found_after_many_inserts() {
        let t0 = Instant::now();
        let mut s = Slots::default();
        let n = 5 * CHUNK as u64 + 3;
        let first = s.insert(0, t0, 0u64);
        let addr = s.get(first).map(|v| v as *const u64);
        let ids: Vec<u32> = (1..n).map(|k| s.insert(k, t0, k)).collect();
        assert_eq!(s.get(first).map(|v| v as *const u64), addr);
        for (k, i) in (1..n).zip(&ids) {
            assert_eq!((s.get(*i), s.hash(*i)), (Some(&k), k));
        }
        assert_eq!(s.chunks.len(), 6);
        assert!(s.chunks.iter().all(|c| c.capacity() == CHUNK));
        assert_eq!(order(&s).len() as u64, n);
        assert_eq!(s.get(NONE), None);
        assert_eq!(s.hash(NONE), 0);
    }
}
