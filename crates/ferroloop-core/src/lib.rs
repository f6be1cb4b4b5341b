//! # ferroloop-core
//!
//! The Python-free heart of ferroloop: the data structures one iteration of an
//! asyncio-style event loop is made of. The Python binding (`ferroloop-python`)
//! adapts Python callables to these types, and Rust programs can drive them
//! directly through [`Scheduler`].
//!
//! ## One iteration (asyncio's `_run_once`, kept exactly)
//! Written once, in [`LoopCore`] (`loop_core.rs`), in phases a driver runs
//! in order (the Python binding releases the GIL around the poll):
//! 1. Drop cancelled timers: lazily from the head of the [`TimerHeap`], or by a
//!    full compaction when most scheduled timers are cancelled.
//! 2. Compute the poll timeout: zero when callbacks are ready or the loop is
//!    stopping, else the time to the earliest timer, else "block".
//! 3. Poll the [`Reactor`]. Wake-ups from other threads arrive through the
//!    [`Injector`]; readiness of watched fds through the fd table
//!    ([`io_table::IoTable`]).
//! 4. Move injected items, then I/O callbacks, then every timer due by
//!    `now + clock_resolution` (in `(deadline, sequence)` order) to the
//!    [`ReadyQueue`].
//! 5. Run exactly the callbacks that were ready when step 5 began; callbacks
//!    they schedule wait for the next iteration.
//!
//! ## Invariants
//! - Everything but the [`Injector`] belongs to the thread running the loop;
//!   the injector is the only structure shared across threads (it is `Sync`).
//! - Timer order is total: `(deadline, sequence)` with `f64::total_cmp`, so
//!   `Ord` agrees with `Eq` even for NaN deadlines; a NaN deadline is due at
//!   once, as in asyncio (`max(0, nan)` is 0), see [`timer`].
//! - No callback is ever dropped silently: cancelled entries are skipped by
//!   the caller's run step, everything else runs exactly once.

pub mod clock;
pub mod injector;
pub mod io_table;
pub mod loop_core;
pub mod reactor;
pub mod ready;
pub mod scheduler;
pub mod signal_wake;
pub mod timer;
pub mod write_queue;

pub use clock::{monotonic, resolution};
pub use injector::Injector;
pub use loop_core::{IoOutcome, LoopCore, PollPlan, Poller};
pub use reactor::Reactor;
pub use ready::ReadyQueue;
pub use scheduler::Scheduler;
pub use timer::{Cancellable, TimerHeap};

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: the longest a single poll may block (one day).
pub const MAXIMUM_POLL_TIMEOUT: f64 = 24.0 * 3600.0;
