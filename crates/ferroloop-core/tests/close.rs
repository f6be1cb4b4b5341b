//! `LoopCore::close` releases the loop's OS resources. A test binary of its
//! own: counting this process's fds must not race with other tests.

use std::sync::Arc;

use ferroloop_core::{Cancellable, LoopCore};

struct Never;

impl Cancellable for Never {
    fn is_cancelled(&self) -> bool {
        false
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[test]
fn close_releases_the_poller_and_the_waker() {
    let before = open_fds();
    let mut core: LoopCore<(), Never, ()> = LoopCore::new().unwrap();
    let injector = Arc::clone(core.injector());
    assert!(open_fds() > before);
    core.close();
    // The epoll instance and the eventfd are gone although another thread
    // may still hold the injector; waking it is a no-op now.
    assert_eq!(open_fds(), before);
    injector.wake().unwrap();
    assert_eq!(core.source_count(), 0);
}
