//! What the state benches' turns are made of: client sessions that cycle and one connection's
//! binding, as a gateway's steady state has them. Included with
//! `#[path = "support/sticky.rs"] mod sticky;`.

use shardgate::state::{Binding, SessionKey};

/// 1024 sessions of one client, cycled through by the benches' turns.
pub fn sessions() -> Vec<SessionKey> {
    (0..1024)
        .map(|i| SessionKey::of_client("team-a", &format!("session-{i}")))
        .collect()
}

/// Where the benches' responses live: one connection of one account on this host.
pub fn binding() -> Binding {
    Binding {
        account: "acct-0".into(),
        instance: "gw-1".into(),
        shard: 0,
        connection: 7,
    }
}
