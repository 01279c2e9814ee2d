//! Blocking work called from async code: a durable write (an fsync: milliseconds), the
//! checks of a large answer (hashing and scanning megabytes).

/// Bytes of hashing or scanning (a large answer, a message's outputs) past which that work
/// goes through [`without_stalling`]: a decode step's answers are far below it, a prefill
/// chunk's logits above.
pub const STALLING_BYTES: usize = 1 << 20;

/// Runs `work` so that it does not stall the async tasks sharing the calling thread: on a
/// worker of a multi-threaded tokio runtime, the worker hands its other tasks over first
/// (`block_in_place`); anywhere else (a blocking thread, no runtime) the work just runs.
pub fn without_stalling<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_threaded = Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
    if multi_threaded { tokio::task::block_in_place(work) } else { work() }
}
