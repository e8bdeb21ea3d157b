//! Helpers shared by the unit tests of this crate: waiting on conditions with a deadline
//! (never fixed sleeps) and tearing down process trees a test started.
//!
//! Test-only; nothing here is compiled into the library.

use std::time::Duration;

use crate::driver::process::{ProcessDriver, ProcessId};

/// Polls `cond` every 10 ms until it holds or `within` passes; returns whether it held.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Default patience for conditions in tests.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Kills a started instance's whole tree when dropped, so a failing test leaves nothing
/// behind.
pub struct KillOnDrop {
    pub driver: ProcessDriver,
    pub id: ProcessId,
    pub tag: String,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.driver.kill_all(self.id, &self.tag);
    }
}

/// A tag unique within this test process.
pub fn unique_tag(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{}-{}-{}",
        std::process::id(),
        name,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
