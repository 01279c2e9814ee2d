//! futures-timer's `Delay`, on tokio's timer.
//!
//! libp2p arms a `futures_timer::Delay` for every substream it opens or accepts (the upgrade's
//! timeout, and request-response's per-request timeout), so a node or gateway arms several per
//! inference step. Upstream futures-timer keeps every delay on one global helper thread that
//! each new or dropped delay wakes with a futex; with many small steps those wake-ups and the
//! helper's context switches were ~6% of all CPU in `bench swarm --concurrency 8`. Tokio's
//! timer, which every libp2p task here already runs under, registers a delay on the worker
//! that polls it, without waking any thread.
//!
//! A delay created outside a tokio runtime (nothing in InferGrid does, but a dependency might)
//! runs on a timer thread of its own, started on first use, as upstream's does.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::time::{Instant, Sleep};

/// A future that completes once its duration has elapsed.
#[derive(Debug)]
pub struct Delay {
    sleep: Pin<Box<Sleep>>,
}

impl Delay {
    /// A delay that completes `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        let sleep = match Handle::try_current() {
            Ok(_) => tokio::time::sleep(dur),
            Err(_) => {
                let _entered = fallback_timer().enter();
                tokio::time::sleep(dur)
            }
        };
        Delay { sleep: Box::pin(sleep) }
    }

    /// Makes the delay complete `dur` from now instead, whether or not it has completed.
    pub fn reset(&mut self, dur: Duration) {
        self.sleep.as_mut().reset(Instant::now() + dur);
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
    }

    #[test]
    fn outside_a_runtime_runs_on_the_fallback_timer() {
        let start = StdInstant::now();
        let delay = Delay::new(Duration::from_millis(20));
        futures_executor_block_on(delay);
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    /// Polls a future to completion on this thread, as a non-tokio executor would.
    fn futures_executor_block_on<F: Future>(future: F) -> F::Output {
        use std::sync::Arc;
        use std::task::Wake;
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Arc::new(Unpark(std::thread::current())).into();
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            std::thread::park();
        }
    }
}
