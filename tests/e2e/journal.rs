//! The embedded store with `[mediator] sync_interval`: accepted messages are
//! journaled, not fsynced, before their publishers are answered (PROTOCOL.md
//! §13.2). A `kill -9` of the Core must still lose none of them (M12).

/// The M12 durability test with a sync interval longer than the test, so
/// every message accepted between two kills is only in the journal when
/// the Core dies: the restarted Core puts each back.
#[tokio::test]
async fn m12_journaled_publishes_survive_three_kill_9s_of_the_core() {
    super::messages::through_three_kills("sync_interval = \"60s\"").await;
}
