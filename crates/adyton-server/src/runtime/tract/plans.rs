//! A bounded cache of plans per concrete input shape ([`Plan::PerShape`](super::Plan::PerShape)).
//!
//! A model whose plan depends on its input shapes gets one plan per shape set a request brings,
//! compiled on first use. The cache keeps the most recently used ones within two bounds
//! ([`PlanCacheOptions`]): a count, and a memory bound by the engine's estimate of each plan
//! (see `plan_bytes` in the parent module). A plan over the memory bound on its own is refused.
//!
//! The cache is work a client can ask the server to do, so:
//! - concurrent first requests for one shape compile it once: the first takes a slot for the key,
//!   the others wait on that slot and share its outcome;
//! - a refused shape (one the model cannot take) is remembered, within [`MAX_REFUSALS`], so that
//!   asking again does not compile again;
//! - compilations are capped per minute; beyond the cap a request is answered `Busy` at once.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::super::{PlanCacheOptions, PlanStats};

/// The shapes of a request's inputs, in the signature's input order.
pub(super) type ShapeKey = Vec<Vec<usize>>;

/// The most refused shapes remembered; the least recently asked is forgotten beyond it. A
/// refusal is a few hundred bytes, so this bounds the memory at well under a megabyte.
pub(super) const MAX_REFUSALS: usize = 1024;

/// The window of the compilation cap.
const MINUTE: Duration = Duration::from_secs(60);

/// Why a shape set cannot be served: the input to blame (an index into the key) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The input's index in the signature.
    pub input: usize,
    /// Why, without tensor values.
    pub reason: String,
}

/// A compiled plan and its size by the engine's estimate, in bytes.
pub(super) struct Compiled<P> {
    pub plan: P,
    pub bytes: u64,
}

/// What a lookup found.
pub(super) enum Lookup<P> {
    /// A plan for the key, cached or compiled now.
    Plan(Arc<P>),
    /// The key is refused (now or earlier).
    Refused(Arc<Refusal>),
    /// The compilation cap is reached; try again after this many seconds.
    Busy { retry_after_secs: u64 },
}

/// Whether a compilation counts against the per-minute cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// A request's shape: capped.
    Request,
    /// A shape the operator asked to compile at load: not capped.
    Ahead,
}

/// The cache. `P` is the plan type (a tract plan in the engine, anything in tests).
pub(super) struct PlanCache<P> {
    options: PlanCacheOptions,
    inner: Mutex<Inner<P>>,
}

struct Inner<P> {
    /// A counter that orders uses, for least-recently-used eviction.
    tick: u64,
    plans: HashMap<ShapeKey, Entry<P>>,
    refusals: HashMap<ShapeKey, (Arc<Refusal>, u64)>,
    compiling: HashMap<ShapeKey, Arc<Slot<P>>>,
    /// When each compilation of the last minute started, oldest first.
    compiles: VecDeque<Instant>,
    bytes: u64,
    stats: PlanStats,
}

struct Entry<P> {
    plan: Arc<P>,
    bytes: u64,
    used: u64,
}

/// One compilation in progress, which the other requests for its key wait on.
struct Slot<P> {
    outcome: Mutex<Option<Outcome<P>>>,
    done: Condvar,
}

enum Outcome<P> {
    Plan(Arc<P>),
    Refused(Arc<Refusal>),
}

impl<P> Clone for Outcome<P> {
    fn clone(&self) -> Outcome<P> {
        match self {
            Outcome::Plan(plan) => Outcome::Plan(Arc::clone(plan)),
            Outcome::Refused(refusal) => Outcome::Refused(Arc::clone(refusal)),
        }
    }
}

/// A lock that survives a panic of another holder: the cache's state is consistent between
/// statements, and compilation (which may panic) runs outside the lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Role<P> {
    Compile(Arc<Slot<P>>),
    Wait(Arc<Slot<P>>),
}

impl<P> PlanCache<P> {
    /// An empty cache with these bounds.
    pub fn new(options: PlanCacheOptions) -> PlanCache<P> {
        PlanCache {
            options,
            inner: Mutex::new(Inner {
                tick: 0,
                plans: HashMap::new(),
                refusals: HashMap::new(),
                compiling: HashMap::new(),
                compiles: VecDeque::new(),
                bytes: 0,
                stats: PlanStats::default(),
            }),
        }
    }

    /// The plan for `key`: cached, or compiled now by `compile` (once, whoever else asks at the
    /// same time), or refused.
    pub fn get(
        &self,
        key: &ShapeKey,
        admission: Admission,
        compile: impl FnOnce() -> Result<Compiled<P>, Refusal>,
    ) -> Lookup<P> {
        let role = {
            let mut inner = lock(&self.inner);
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(entry) = inner.plans.get_mut(key) {
                entry.used = tick;
                let plan = Arc::clone(&entry.plan);
                inner.stats.hits += 1;
                return Lookup::Plan(plan);
            }
            if let Some((refusal, used)) = inner.refusals.get_mut(key) {
                *used = tick;
                let refusal = Arc::clone(refusal);
                inner.stats.refusals += 1;
                return Lookup::Refused(refusal);
            }
            if let Some(slot) = inner.compiling.get(key) {
                Role::Wait(Arc::clone(slot))
            } else {
                let now = Instant::now();
                while inner
                    .compiles
                    .front()
                    .is_some_and(|&started| now.duration_since(started) >= MINUTE)
                {
                    inner.compiles.pop_front();
                }
                let cap =
                    usize::try_from(self.options.max_compiles_per_minute).unwrap_or(usize::MAX);
                if admission == Admission::Request && inner.compiles.len() >= cap {
                    inner.stats.rate_limited += 1;
                    let waited = inner
                        .compiles
                        .front()
                        .map_or(Duration::ZERO, |&started| now.duration_since(started));
                    let retry_after_secs = MINUTE.saturating_sub(waited).as_secs().max(1);
                    return Lookup::Busy { retry_after_secs };
                }
                inner.compiles.push_back(now);
                let slot = Arc::new(Slot {
                    outcome: Mutex::new(None),
                    done: Condvar::new(),
                });
                inner.compiling.insert(key.clone(), Arc::clone(&slot));
                Role::Compile(slot)
            }
        };
        match role {
            Role::Wait(slot) => {
                let mut outcome = lock(&slot.outcome);
                while outcome.is_none() {
                    outcome = slot
                        .done
                        .wait(outcome)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                let outcome = outcome.clone();
                let mut inner = lock(&self.inner);
                match outcome {
                    Some(Outcome::Plan(plan)) => {
                        inner.stats.hits += 1;
                        Lookup::Plan(plan)
                    }
                    Some(Outcome::Refused(refusal)) => {
                        inner.stats.refusals += 1;
                        Lookup::Refused(refusal)
                    }
                    // Unreachable: the loop above waits for an outcome.
                    None => Lookup::Busy {
                        retry_after_secs: 1,
                    },
                }
            }
            Role::Compile(slot) => {
                let started = Instant::now();
                // The engine guards its own calls; this keeps the waiters from waiting forever
                // should anything else panic.
                let compiled = catch_unwind(AssertUnwindSafe(compile)).unwrap_or_else(|_| {
                    Err(Refusal {
                        input: 0,
                        reason: "compiling the plan panicked".to_owned(),
                    })
                });
                let outcome = self.settle(key, compiled, started.elapsed());
                *lock(&slot.outcome) = Some(outcome.clone());
                slot.done.notify_all();
                match outcome {
                    Outcome::Plan(plan) => Lookup::Plan(plan),
                    Outcome::Refused(refusal) => Lookup::Refused(refusal),
                }
            }
        }
    }

    /// Records a compilation's result: the plan cached (evicting the least recently used beyond
    /// the bounds), or the refusal remembered.
    fn settle(
        &self,
        key: &ShapeKey,
        compiled: Result<Compiled<P>, Refusal>,
        took: Duration,
    ) -> Outcome<P> {
        let mut inner = lock(&self.inner);
        inner.compiling.remove(key);
        inner.stats.compile_seconds += took.as_secs_f64();
        let compiled = match compiled {
            Ok(compiled) => {
                inner.stats.compiled += 1;
                if compiled.bytes > self.options.max_bytes {
                    Err(Refusal {
                        input: first_input_of(key),
                        reason: format!(
                            "its plan needs about {}, over the model's plan memory bound of {} \
                             (max_plan_bytes)",
                            super::super::human_bytes(u128::from(compiled.bytes)),
                            super::super::human_bytes(u128::from(self.options.max_bytes)),
                        ),
                    })
                } else {
                    Ok(compiled)
                }
            }
            Err(refusal) => Err(refusal),
        };
        let tick = inner.tick;
        match compiled {
            Ok(Compiled { plan, bytes }) => {
                let plan = Arc::new(plan);
                inner.plans.insert(
                    key.clone(),
                    Entry {
                        plan: Arc::clone(&plan),
                        bytes,
                        used: tick,
                    },
                );
                inner.bytes = inner.bytes.saturating_add(bytes);
                while inner.plans.len() > self.options.max_plans
                    || inner.bytes > self.options.max_bytes
                {
                    let Some(oldest) = inner
                        .plans
                        .iter()
                        .min_by_key(|(_, entry)| entry.used)
                        .map(|(key, _)| key.clone())
                    else {
                        break;
                    };
                    if let Some(evicted) = inner.plans.remove(&oldest) {
                        inner.bytes = inner.bytes.saturating_sub(evicted.bytes);
                        inner.stats.evictions += 1;
                    }
                }
                Outcome::Plan(plan)
            }
            Err(refusal) => {
                inner.stats.refusals += 1;
                let refusal = Arc::new(refusal);
                if inner.refusals.len() >= MAX_REFUSALS {
                    let oldest = inner
                        .refusals
                        .iter()
                        .min_by_key(|(_, (_, used))| *used)
                        .map(|(key, _)| key.clone());
                    if let Some(oldest) = oldest {
                        inner.refusals.remove(&oldest);
                    }
                }
                inner
                    .refusals
                    .insert(key.clone(), (Arc::clone(&refusal), tick));
                Outcome::Refused(refusal)
            }
        }
    }

    /// The plan for `key` if it is cached (a hit), never compiling one.
    pub fn cached(&self, key: &ShapeKey) -> Option<Arc<P>> {
        let mut inner = lock(&self.inner);
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.plans.get_mut(key)?;
        entry.used = tick;
        let plan = Arc::clone(&entry.plan);
        inner.stats.hits += 1;
        Some(plan)
    }

    /// The counters, with the cache's size now.
    pub fn stats(&self) -> PlanStats {
        let inner = lock(&self.inner);
        PlanStats {
            cached_plans: u64::try_from(inner.plans.len()).unwrap_or(u64::MAX),
            cached_bytes: inner.bytes,
            ..inner.stats
        }
    }
}

/// The input blamed for a refusal that concerns the shape set as a whole: the first that is not
/// a scalar, or the first.
fn first_input_of(key: &ShapeKey) -> usize {
    key.iter().position(|shape| !shape.is_empty()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;
    use std::thread;

    use super::*;

    fn options(max_plans: usize, max_bytes: u64, max_compiles_per_minute: u32) -> PlanCacheOptions {
        PlanCacheOptions {
            max_plans,
            max_bytes,
            max_compiles_per_minute,
        }
    }

    fn key(n: usize) -> ShapeKey {
        vec![vec![1, n]]
    }

    /// A plan that is its key's second dimension, of `bytes` bytes.
    fn compile(n: usize, bytes: u64) -> impl FnOnce() -> Result<Compiled<usize>, Refusal> {
        move || Ok(Compiled { plan: n, bytes })
    }

    fn plan(lookup: Lookup<usize>) -> usize {
        match lookup {
            Lookup::Plan(plan) => *plan,
            Lookup::Refused(refusal) => panic!("refused: {refusal:?}"),
            Lookup::Busy { .. } => panic!("busy"),
        }
    }

    #[test]
    fn random_shapes_stay_within_the_count_and_memory_bounds() {
        let cache = PlanCache::new(options(4, 1000, u32::MAX));
        // A deterministic pseudo-random stream of shapes and plan sizes.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = usize::try_from(state % 64).unwrap();
            let bytes = 100 + state % 500;
            assert_eq!(
                plan(cache.get(&key(n), Admission::Request, compile(n, bytes))),
                n
            );
            let stats = cache.stats();
            assert!(stats.cached_plans <= 4, "{stats:?}");
            assert!(stats.cached_bytes <= 1000, "{stats:?}");
        }
        let stats = cache.stats();
        assert!(stats.evictions > 0 && stats.hits > 0, "{stats:?}");
        assert_eq!(
            stats.compiled,
            stats.evictions + stats.cached_plans,
            "{stats:?}"
        );
    }

    #[test]
    fn the_least_recently_used_plan_is_evicted() {
        let cache = PlanCache::new(options(2, u64::MAX, u32::MAX));
        for n in [1, 2, 1, 3] {
            plan(cache.get(&key(n), Admission::Request, compile(n, 1)));
        }
        // 2 was the least recently used when 3 came: 1 is still cached, 2 compiles again.
        let compiles = AtomicUsize::new(0);
        let counting = |n: usize| {
            let compiles = &compiles;
            move || {
                compiles.fetch_add(1, Ordering::SeqCst);
                Ok(Compiled { plan: n, bytes: 1 })
            }
        };
        plan(cache.get(&key(1), Admission::Request, counting(1)));
        assert_eq!(compiles.load(Ordering::SeqCst), 0);
        plan(cache.get(&key(2), Admission::Request, counting(2)));
        assert_eq!(compiles.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats().evictions, 2);
    }

    #[test]
    fn a_plan_over_the_memory_bound_is_refused_and_not_compiled_again() {
        let cache = PlanCache::new(options(4, 100, u32::MAX));
        let refused = |lookup: Lookup<usize>| match lookup {
            Lookup::Refused(refusal) => refusal.reason.clone(),
            _ => panic!("not refused"),
        };
        let reason = refused(cache.get(&key(7), Admission::Request, compile(7, 101)));
        assert!(reason.contains("max_plan_bytes"), "{reason}");
        let again = refused(cache.get(&key(7), Admission::Request, || {
            panic!("a refused shape is compiled again")
        }));
        assert_eq!(again, reason);
        let stats = cache.stats();
        assert_eq!(
            (stats.compiled, stats.refusals, stats.cached_plans),
            (1, 2, 0)
        );
        assert_eq!(stats.cached_bytes, 0);
    }

    #[test]
    fn refusals_are_remembered_within_their_bound() {
        let cache: PlanCache<usize> = PlanCache::new(options(4, 100, u32::MAX));
        let refuse = || {
            Err(Refusal {
                input: 0,
                reason: "no".to_owned(),
            })
        };
        for n in 0..MAX_REFUSALS + 10 {
            assert!(matches!(
                cache.get(&key(n), Admission::Ahead, refuse),
                Lookup::Refused(_)
            ));
        }
        assert_eq!(lock(&cache.inner).refusals.len(), MAX_REFUSALS);
        // The most recent are remembered, the oldest forgotten.
        assert!(matches!(
            cache.get(&key(MAX_REFUSALS + 9), Admission::Request, || panic!(
                "compiled again"
            )),
            Lookup::Refused(_)
        ));
        assert_eq!(cache.stats().compiled, 0);
    }

    #[test]
    fn concurrent_first_requests_compile_once() {
        let cache = PlanCache::new(options(4, u64::MAX, u32::MAX));
        let compiles = AtomicUsize::new(0);
        let barrier = Barrier::new(8);
        thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    barrier.wait();
                    let got = plan(cache.get(&key(5), Admission::Request, || {
                        compiles.fetch_add(1, Ordering::SeqCst);
                        // Long enough for the others to arrive and wait on the slot; the
                        // assertion holds however the threads are scheduled.
                        thread::sleep(Duration::from_millis(50));
                        Ok(Compiled { plan: 5, bytes: 1 })
                    }));
                    assert_eq!(got, 5);
                });
            }
        });
        assert_eq!(compiles.load(Ordering::SeqCst), 1);
        let stats = cache.stats();
        assert_eq!((stats.compiled, stats.hits), (1, 7), "{stats:?}");
    }

    #[test]
    fn compilations_beyond_the_cap_are_busy_but_cached_plans_still_serve() {
        let cache = PlanCache::new(options(8, u64::MAX, 2));
        plan(cache.get(&key(1), Admission::Request, compile(1, 1)));
        plan(cache.get(&key(2), Admission::Request, compile(2, 1)));
        match cache.get(&key(3), Admission::Request, || {
            panic!("compiled over the cap")
        }) {
            Lookup::Busy { retry_after_secs } => assert!((1..=60).contains(&retry_after_secs)),
            _ => panic!("not busy"),
        }
        assert_eq!(
            plan(cache.get(&key(1), Admission::Request, compile(1, 1))),
            1
        );
        assert_eq!(cache.cached(&key(2)).map(|p| *p), Some(2));
        assert!(cache.cached(&key(3)).is_none());
        // Shapes compiled ahead, at load, are not capped.
        assert_eq!(plan(cache.get(&key(4), Admission::Ahead, compile(4, 1))), 4);
        let stats = cache.stats();
        assert_eq!(
            (stats.compiled, stats.rate_limited, stats.hits),
            (3, 1, 2),
            "{stats:?}"
        );
    }

    #[test]
    fn a_panicking_compilation_is_a_refusal_and_frees_its_waiters() {
        let cache: PlanCache<usize> = PlanCache::new(options(4, u64::MAX, u32::MAX));
        let lookup = cache.get(&key(1), Admission::Request, || panic!("boom"));
        assert!(matches!(lookup, Lookup::Refused(_)));
        assert!(lock(&cache.inner).compiling.is_empty());
    }
}
