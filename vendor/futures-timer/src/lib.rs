//! futures-timer's `Delay`, on tokio's timer.
//!
//! libp2p arms a `futures_timer::Delay` for every substream it opens or accepts (the upgrade's
//! timeout, and request-response's per-request timeout), so a node or gateway arms several per
//! inference step. Upstream futures-timer keeps every delay on one global helper thread that
//! each new or dropped delay wakes with a futex; with many small steps those wake-ups were
//! nearly half of all context switches in `bench swarm --concurrency 8` (355k with upstream,
//! 195k with this crate, for the same work). Tokio's timer, which every libp2p task here
//! already runs under, keeps delays in the runtime's own wheel: registering or dropping one
//! takes a lock, and wakes the timer's driver only when the delay is due before the driver's
//! next wake-up (libp2p's timeouts, of seconds, rarely are).
//!
//! A delay created outside a tokio runtime (nothing in InferGrid does, but a dependency might)
//! runs on a timer thread of its own, started on first use, as upstream's does. One created in
//! a runtime built without its timer panics, as `tokio::time::sleep` does there; every runtime
//! in InferGrid enables it.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::time::{Instant, Sleep};

/// The longest delay: what `tokio::time::sleep` caps its durations at.
const HORIZON: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A future that completes once its duration has elapsed.
#[derive(Debug)]
pub struct Delay {
    sleep: Pin<Box<Sleep>>,
}

impl Delay {
    /// A delay that completes `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        // Outside any runtime, the delay registers with the fallback timer's.
        let _entered = Handle::try_current().is_err().then(|| fallback_timer().enter());
        Delay { sleep: Box::pin(tokio::time::sleep(dur)) }
    }

    /// Makes the delay complete `dur` from now instead, whether or not it has completed. A
    /// duration past tokio's horizon (~30 years) is capped there, as [`Delay::new`]'s is.
    pub fn reset(&mut self, dur: Duration) {
        self.sleep.as_mut().reset(Instant::now() + dur.min(HORIZON));
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }
}

/// A timer-only runtime on a thread of its own, for delays created outside any runtime.
fn fallback_timer() -> &'static Handle {
    static TIMER: OnceLock<Handle> = OnceLock::new();
    TIMER.get_or_init(|| {
        let runtime = Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("building futures-timer's fallback timer runtime");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("futures-timer".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("spawning futures-timer's fallback timer thread");
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::time::Instant as StdInstant;

    #[tokio::test]
    async fn completes_after_its_duration_and_after_a_reset() {
        let start = StdInstant::now();
        Delay::new(Duration::from_millis(20)).await;
        assert!(start.elapsed() >= Duration::from_millis(20));
        let mut delay = Delay::new(Duration::from_millis(5));
        delay.reset(Duration::from_millis(40));
        (&mut delay).await;
        assert!(start.elapsed() >= Duration::from_millis(60));
        // Upstream's reset to "never" must not overflow the clock.
        delay.reset(Duration::MAX);
        assert!((&mut delay).now_or_never().is_none());
    }

    #[test]
    fn outside_a_runtime_runs_on_the_fallback_timer() {
        let start = StdInstant::now();
        // futures' executor, not tokio's: no runtime is entered.
        futures::executor::block_on(Delay::new(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
