//! Intra-op threads: the pools tract's matrix products and element-wise kernels run on.
//!
//! A model's [`LoadOptions::threads`](super::super::LoadOptions::threads) picks a pool by size;
//! pools of one size are shared by every model that asks for it, so the server holds one pool per
//! distinct setting, not one per model. A request's thread hands its operators' parallel parts
//! to the pool and waits.
//!
//! The default ([`Threads::Adaptive`], when neither the model nor the server sets a number) is
//! chosen from measurements (`examples/threads.rs`, 2 cores): a request that runs alone gets the
//! pool of as many threads as cores ([`default_threads`]), and a request that runs while other
//! tract requests do runs on its own thread only. With eight clients, a pool for every request
//! made them queue for the same two threads and cost throughput (MiniLM-L3: 69 requests/s
//! against 96 on one thread each; open_nsfw: 21 against 35), while one thread per request keeps
//! every core busy with no hand-offs. The pool can only shorten a request that has cores to
//! itself; on the shared 2-core machine measured, it brought no gain at one client beyond the
//! noise.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tract_linalg::multithread::{multithread_tract_scope, Executor};

/// tract runs in flight in this process, on every model.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How a model's runs use threads.
#[derive(Clone, Debug)]
pub(super) enum Threads {
    /// Always this executor (a number of threads was set).
    Fixed(Executor),
    /// The pool of [`default_threads`] for a run that is alone, the calling thread otherwise.
    Adaptive(Executor),
}

impl Threads {
    /// The threads for a model's setting (`None`: neither the model nor the server sets one).
    pub(super) fn new(threads: Option<usize>) -> Threads {
        match threads {
            Some(n) => Threads::Fixed(executor(Some(n))),
            None => Threads::Adaptive(executor(None)),
        }
    }

    /// Runs `run` (one inference) on this setting's threads.
    pub(super) fn scope<R>(&self, run: impl FnOnce() -> R) -> R {
        match self {
            Threads::Fixed(executor) => multithread_tract_scope(executor.clone(), run),
            Threads::Adaptive(pool) => {
                let in_flight = InFlight::enter();
                let executor = if in_flight.others == 0 {
                    pool.clone()
                } else {
                    Executor::SingleThread
                };
                multithread_tract_scope(executor, run)
            }
        }
    }
}

/// One run counted in [`IN_FLIGHT`] while it lives, panics included.
struct InFlight {
    /// The runs in flight when this one started.
    others: usize,
}

impl InFlight {
    fn enter() -> InFlight {
        InFlight {
            others: IN_FLIGHT.fetch_add(1, Ordering::SeqCst),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The most threads a pool may have: more than any machine the server runs on has cores, and a
/// bound on what a configuration can make the server spawn.
pub const MAX_THREADS: usize = 256;

/// Pools by size, made on first use and kept for the process.
static POOLS: Mutex<BTreeMap<usize, Executor>> = Mutex::new(BTreeMap::new());

/// The size of the pool a run that is alone gets when neither its model nor the server sets a
/// number of threads: as many as the cores the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The executor for `threads` (`None` for [`default_threads`]): the calling thread alone for 1
/// (or 0), otherwise the shared pool of that size (at most [`MAX_THREADS`]). Should a pool fail
/// to start, the model runs on the calling thread.
fn executor(threads: Option<usize>) -> Executor {
    let threads = threads.unwrap_or_else(default_threads).min(MAX_THREADS);
    if threads <= 1 {
        return Executor::SingleThread;
    }
    let mut pools = POOLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(pool) = pools.get(&threads) {
        return pool.clone();
    }
    // tract panics when the operating system refuses the threads.
    match catch_unwind(AssertUnwindSafe(|| {
        Executor::multithread_with_name(threads, "tract")
    })) {
        Ok(pool) => {
            pools.insert(threads, pool.clone());
            pool
        }
        Err(_) => Executor::SingleThread,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_is_the_calling_thread_and_pools_are_shared_by_size() {
        assert!(matches!(executor(Some(1)), Executor::SingleThread));
        assert!(matches!(executor(Some(0)), Executor::SingleThread));
        let (Executor::MultiThread(a), Executor::MultiThread(b)) =
            (executor(Some(2)), executor(Some(2)))
        else {
            panic!("two threads make a pool");
        };
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 2);
    }

    #[test]
    fn a_run_alone_gets_the_pool_and_concurrent_runs_their_own_thread() {
        let pool = Executor::multithread(2);
        let threads = Threads::Adaptive(pool);
        let current = || {
            matches!(
                tract_linalg::multithread::current_tract_executor(),
                Executor::MultiThread(_)
            )
        };
        // Other tests may run tract at the same time, so only the nested case is certain: a run
        // inside a run is never alone.
        threads.scope(|| {
            assert!(!threads.scope(current));
        });
        let fixed = Threads::Fixed(executor(Some(2)));
        fixed.scope(|| assert!(fixed.scope(current)));
    }
}
