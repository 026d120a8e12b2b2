//! The configured latency, kept to the microsecond.
//!
//! A simulated API call is answered `latency` after it arrives; the benches compare a client's
//! throughput with `calls × latency ÷ concurrency`, so a latency that runs long is charged to
//! the client. `tokio::time::sleep` runs long: its timer counts whole milliseconds (a deadline
//! is rounded up to the next one), and a busy runtime advances it only between tasks. On the
//! no-limit cycle bench (daemon, database and simulator on two busy cores) a 20 ms sleep took
//! 21.7 ms on average, so no client could reach more than 92 % of the bound.
//!
//! Here one thread per simulator holds the deadlines in a heap and waits for the earliest with
//! a futex timeout (microsecond precision), then completes the waiting call's oneshot. The call
//! still needs a runtime worker to resume it, as any answer does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

struct Due {
    at: Instant,
    seq: u64,
    done: oneshot::Sender<()>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A deadline and whom to tell when it has come.
type Request = (Instant, oneshot::Sender<()>);

/// The delay thread's inbox; the thread ends when this is dropped and nothing is left due.
pub(crate) struct Delays {
    tx: Mutex<Option<mpsc::Sender<Request>>>,
}

impl Delays {
    /// Starts the thread lazily, on the first delay: a simulator without latency has none.
    pub(crate) fn new() -> Delays {
        Delays {
            tx: Mutex::new(None),
        }
    }

    /// Resolves at `at` (or at once if it has passed).
    pub(crate) async fn until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (done, rx) = oneshot::channel();
        let sent = {
            let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            let sender = tx.get_or_insert_with(start);
            sender.send((at, done)).is_ok()
        };
        if !sent || rx.await.is_err() {
            // The thread is gone (it cannot be started, or it panicked): the runtime's timer.
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

fn start() -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel();
    // If the thread cannot start, `rx` is dropped with the closure and every send fails:
    // `until` falls back to the runtime's timer.
    let _ = std::thread::Builder::new()
        .name("sim-latency".into())
        .spawn(move || run(&rx));
    tx
}

fn run(rx: &mpsc::Receiver<Request>) {
    let mut heap: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut open = true;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|d| d.0.at <= now) {
            if let Some(Reverse(d)) = heap.pop() {
                let _ = d.done.send(());
            }
        }
        let next = match heap.peek() {
            Some(d) => {
                let wait = d.0.at.saturating_duration_since(now);
                if open {
                    rx.recv_timeout(wait)
                } else {
                    std::thread::sleep(wait);
                    Err(RecvTimeoutError::Timeout)
                }
            }
            None if open => rx.recv_timeout(Duration::from_secs(3600)),
            None => return,
        };
        match next {
            Ok((at, done)) => {
                seq += 1;
                heap.push(Reverse(Due { at, seq, done }));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delay_ends_at_its_deadline_not_before() {
        let delays = Delays::new();
        let started = Instant::now();
        delays.until(started + Duration::from_millis(20)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(took < Duration::from_millis(200), "{took:?}");
    }

    #[tokio::test]
    async fn delays_end_in_deadline_order() {
        let delays = std::sync::Arc::new(Delays::new());
        let base = Instant::now();
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for ms in [30u64, 10, 20] {
            let (delays, order) = (delays.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                delays.until(base + Duration::from_millis(ms)).await;
                order.lock().unwrap().push(ms);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![10, 20, 30]);
    }
}
