//! Where the shards run: by default a shard thread may run on every CPU of the process's
//! affinity mask (the scheduler places it); with `[server] pin_shards = true` shard `i` is pinned
//! to the `i`-th CPU of the mask. One gateway at a time in this binary, so the threads named
//! `shard-N` are that gateway's.

mod common;

use std::collections::BTreeSet;

use shardgate::runtime::allowed_cpus;

/// The CPUs a thread of this process may run on.
fn thread_cpus(tid: i32) -> BTreeSet<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the thread `tid`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity({tid})");
    (0..libc::CPU_SETSIZE as usize)
        .filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) })
        .collect()
}

/// The thread id of this process's thread named `name`.
fn thread_named(name: &str) -> i32 {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    tasks
        .filter_map(|t| t.ok())
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no thread named {name}"))
}

/// Each shard's CPUs, with one shard per CPU of the mask and `pin_shards` as given.
fn shard_cpus(pin: bool) -> Vec<BTreeSet<usize>> {
    let shards = allowed_cpus().expect("affinity").len();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = {shards}\npin_shards = {pin}\n\
         drain_timeout_secs = 1\n[[client_keys]]\nkey = \"{}\"\nid = \"k\"\n\
         [[accounts]]\nid = \"a\"\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"sk-up\"\n",
        common::CLIENT_KEY
    );
    let gateway = common::gateway(common::parse_config(&text));
    let cpus = (0..shards)
        .map(|i| thread_cpus(thread_named(&format!("shard-{i}"))))
        .collect();
    gateway.stop();
    cpus
}

#[test]
fn shards_run_anywhere_in_the_mask_unless_pinned() {
    let mask: BTreeSet<usize> = allowed_cpus().expect("affinity").into_iter().collect();
    let free = shard_cpus(false);
    assert!(
        free.iter().all(|cpus| *cpus == mask),
        "{free:?} vs {mask:?}"
    );
    let pinned = shard_cpus(true);
    let want: Vec<BTreeSet<usize>> = mask.iter().map(|c| BTreeSet::from([*c])).collect();
    assert_eq!(pinned, want);
}
