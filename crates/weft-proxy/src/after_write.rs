//! Work a request can leave until its response has been written.
//!
//! The end of a response is noticed while hyper is still filling its write buffer: the last
//! body frame comes back, and only after that does the connection write it out. Whatever runs
//! at that moment (access-log formatting costs several microseconds per line) delays the
//! response's last bytes. [`after_write`] queues such work on a task of the same thread instead;
//! the connection task finishes its poll (and its write) before that task runs. Under load the
//! task runs once for many responses.
//!
//! Nothing queued is lost: the task runs what is left when the runtime drops it, and work queued
//! outside a runtime, or after the task is gone, runs at once.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// The drain task's waker, once it has been polled.
    waker: Option<Waker>,
    /// The drain task is gone (its runtime shut down): run new work at once.
    closed: bool,
}

type Shared = Arc<Mutex<Queue>>;

fn lock(q: &Shared) -> MutexGuard<'_, Queue> {
    // A job that panicked poisons nothing worth refusing the queue for.
    q.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// This thread's queue and the task draining it.
    static LOCAL: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

/// Runs `job` after the current task's poll, on a task of this thread's runtime; at once when
/// there is no runtime.
pub fn after_write(job: impl FnOnce() + Send + 'static) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return job();
    };
    let job: Job = Box::new(job);
    let refused = LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let q = match &*local {
            Some(q) if !lock(q).closed => q,
            _ => {
                let q = Shared::default();
                rt.spawn(Drain(q.clone()));
                local.insert(q)
            }
        };
        let mut g = lock(q);
        if g.closed {
            return Some(job);
        }
        g.jobs.push(job);
        if g.jobs.len() == 1
            && let Some(w) = &g.waker
        {
            w.wake_by_ref();
        }
        None
    });
    if let Some(job) = refused {
        job();
    }
}

/// The task that runs a thread's queued work.
struct Drain(Shared);

impl Future for Drain {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let jobs = {
                let mut g = lock(&self.0);
                if g.jobs.is_empty() {
                    if !g.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        g.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                std::mem::take(&mut g.jobs)
            };
            for job in jobs {
                job();
            }
        }
    }
}

impl Drop for Drain {
    /// The runtime is shutting down: what is queued runs now, and what comes later runs at once.
    fn drop(&mut self) {
        let jobs = {
            let mut g = lock(&self.0);
            g.closed = true;
            g.waker = None;
            std::mem::take(&mut g.jobs)
        };
        for job in jobs {
            job();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counter() -> (Arc<AtomicUsize>, impl Fn() -> Box<dyn FnOnce() + Send>) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (n, move || {
            let m = m.clone();
            Box::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            })
        })
    }

    #[test]
    fn work_runs_after_the_task_yields_not_before() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (ran, job) = counter();
        rt.block_on(async {
            tokio::spawn(async move {
                after_write(job());
                after_write(job());
                // Still inside this task's poll: nothing has run.
                assert_eq!(ran.load(Ordering::SeqCst), 0);
                tokio::task::yield_now().await;
                assert_eq!(ran.load(Ordering::SeqCst), 2);
                after_write(job());
                tokio::task::yield_now().await;
                assert_eq!(ran.load(Ordering::SeqCst), 3);
            })
            .await
            .unwrap();
        });
    }

    #[test]
    fn nothing_is_lost_when_the_runtime_goes_or_is_absent() {
        let (ran, job) = counter();
        // Queued, then the runtime shuts down before the drain task runs.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { after_write(job()) });
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        drop(rt);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        // No runtime: at once.
        after_write(job());
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        // A new runtime on the same thread gets a new drain task.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            after_write(job());
            tokio::task::yield_now().await;
        });
        assert_eq!(ran.load(Ordering::SeqCst), 3);
    }
}
