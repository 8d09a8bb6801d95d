//! Intra-op threads: the pools tract's matrix products and element-wise kernels run on.
//!
//! A model's [`LoadOptions::threads`](super::super::LoadOptions::threads) picks a pool by size;
//! pools of one size are shared by every model that asks for it, so the server holds one pool per
//! distinct setting, not one per model. A request's thread hands its operators' parallel parts
//! to the pool and waits: with many clients at once, the pool's threads are the only ones
//! computing those parts, so eight clients on a pool of as many threads as cores do not
//! oversubscribe the machine.
//!
//! The default ([`default_threads`]) is as many threads as cores.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use tract_linalg::multithread::Executor;

/// The most threads a pool may have: more than any machine the server runs on has cores, and a
/// bound on what a configuration can make the server spawn.
pub const MAX_THREADS: usize = 256;

/// Pools by size, made on first use and kept for the process.
static POOLS: Mutex<BTreeMap<usize, Executor>> = Mutex::new(BTreeMap::new());

/// The threads a model gets when neither it nor the server sets any: as many as the cores the
/// process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The executor for `threads` (`None` for [`default_threads`]): the calling thread alone for 1
/// (or 0), otherwise the shared pool of that size (at most [`MAX_THREADS`]). Should a pool fail
/// to start, the model runs on the calling thread.
pub(super) fn executor(threads: Option<usize>) -> Executor {
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
}
