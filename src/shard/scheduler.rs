//! Picks the account slice a new upstream connection comes from: least loaded first, among the
//! group's accounts that have budget on this shard, whose breaker is not open and (OAuth) whose
//! last refresh did not fail, round-robin
//! among equals.

use std::rc::Rc;
use std::time::Instant;

use super::pool::Pool;
use super::Shard;

/// Whether `group` has a usable pool on this shard outside `excluded` (what [`pick`] would find,
/// without moving its round-robin start).
pub fn any_available(shard: &Shard, group: &str, excluded: impl Fn(usize) -> bool) -> bool {
    let Some(candidates) = shard.groups.get(group) else {
        return false;
    };
    let now = Instant::now();
    candidates.iter().any(|&idx| {
        let pool = &shard.pools[idx];
        !excluded(idx) && pool.budget() > 0 && pool.breaker.is_available(now)
    })
}

/// The least-loaded usable pool of `group` on this shard, skipping `exclude`d accounts.
pub fn pick(shard: &Shard, group: &str, exclude: &[usize]) -> Option<Rc<Pool>> {
    let candidates = shard.groups.get(group)?;
    let n = candidates.len();
    let start = shard.next_rr();
    let now = Instant::now();
    let mut best: Option<(&Rc<Pool>, f64)> = None;
    for i in 0..n {
        let idx = candidates[(start + i) % n];
        if exclude.contains(&idx) {
            continue;
        }
        let pool = &shard.pools[idx];
        if pool.budget() == 0 || !pool.breaker.is_available(now) || !pool.account.usable() {
            continue;
        }
        let load = pool.load();
        if best.is_none_or(|(_, b)| load < b) {
            best = Some((pool, load));
        }
    }
    best.map(|(p, _)| p.clone())
}
