//! The CPU backend's threads: the calling thread takes a share of every pass, and
//! idle workers spin a little before they sleep.
//!
//! Why not a general-purpose pool (rayon, which gacc used before): a pass started from
//! the host's thread, which is outside such a pool, is queued, a sleeping worker is
//! woken and the caller blocks until the job is done. On a virtual machine waking an
//! idle vCPU costs tens of microseconds, which is as long as a whole pass over a
//! 1M-parameter model (measured: docs/benchmarks-notes.md). OpenMP runtimes, torch's
//! among them, avoid both costs: the caller works as one of the threads, and workers
//! spin between parallel regions. This pool does the same. [`Pool::run`] publishes a
//! job, takes items itself, and returns when every item is done. Items are handed
//! out in runs of consecutive items, a share of what is left that shrinks as the job
//! drains (OpenMP's "guided" schedule): each thread streams through long stretches
//! of the buffers, which measured 5-12% faster at 1M, 16M and 64M parameters than
//! one item at a time (same process, alternating windows, 2026-12-02). A worker that
//! finished a job spins for `GACC_CPU_SPIN_US` microseconds (default 500; 0 parks at
//! once) before it parks, so back-to-back passes (the micro-batches of a window, then
//! the step) find it awake.
//!
//! Which thread runs which item never changes a result: every item writes its own
//! outputs, and reductions combine per-item values in item order (parallel.rs).
//! One job runs at a time; a pass started while another is running (two engines
//! driven from two host threads) runs on its own calling thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks, unless `GACC_CPU_SPIN_US` says.
const DEFAULT_SPIN: Duration = Duration::from_micros(500);
/// The most `GACC_CPU_SPIN_US` may ask for (a larger value is clamped).
const MAX_SPIN: Duration = Duration::from_millis(100);

/// A fixed set of worker threads plus whichever thread calls [`Pool::run`].
pub struct Pool {
    shared: Arc<Shared>,
    /// Workers plus the calling thread.
    threads: usize,
    workers: Vec<JoinHandle<()>>,
}

/// What the workers and the callers share.
struct Shared {
    /// Bumped (under `state`'s lock) whenever a job is published or the pool shuts
    /// down; spinning workers watch it without the lock.
    generation: AtomicU64,
    state: Mutex<State>,
    wake: Condvar,
    spin: Duration,
}

struct State {
    /// The job workers may join, while its caller has not closed it.
    job: Option<JobPtr>,
    /// Workers parked on `wake`.
    sleepers: usize,
    shutdown: bool,
}

/// One call of [`Pool::run`]: items `0..count`, handed out one at a time.
struct Job<'a> {
    body: &'a (dyn Fn(usize) + Sync),
    count: usize,
    /// Threads of the pool (sizes the runs handed out).
    threads: usize,
    next: AtomicUsize,
    /// Workers inside this job; its caller returns only once this is back to 0.
    joined: AtomicUsize,
    panicked: AtomicBool,
}

/// A job's address as the workers see it.
#[derive(Clone, Copy)]
struct JobPtr(*const Job<'static>);

// SAFETY: a JobPtr is only dereferenced by a worker that registered in `joined` while
// the job was published, and the job's caller does not return (so the Job and what
// `body` borrows stay alive) until every such worker has deregistered.
unsafe impl Send for JobPtr {}

impl Job<'_> {
    /// Runs items until none is left (or one panicked somewhere).
    fn work(&self) {
        while let Some((first, end)) = self.claim() {
            for k in first..end {
                if self.panicked.load(Ordering::Relaxed) {
                    return;
                }
                (self.body)(k);
            }
        }
    }

    /// Takes the next run of consecutive items: a share of what is left, shrinking
    /// as the job drains (OpenMP's "guided" schedule), so each thread streams
    /// through long contiguous stretches of the buffers while the last items still
    /// balance the threads.
    fn claim(&self) -> Option<(usize, usize)> {
        let mut first = self.next.load(Ordering::Relaxed);
        loop {
            if first >= self.count {
                return None;
            }
            let take = ((self.count - first) / (2 * self.threads)).max(1);
            match self.next.compare_exchange_weak(first, first + take, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some((first, first + take)),
                Err(now) => first = now,
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never happens while the lock is held; recover the guard regardless.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until the generation moves past `seen`: spins for `spin`, then parks.
    fn wait_for_news(&self, seen: u64) -> u64 {
        let start = Instant::now();
        let mut spins: u32 = 0;
        loop {
            let now = self.generation.load(Ordering::Acquire);
            if now != seen {
                return now;
            }
            spins = spins.wrapping_add(1);
            // Reading the clock costs more than a pause; look at it now and then.
            if spins.is_multiple_of(64) && start.elapsed() >= self.spin {
                break;
            }
            std::hint::spin_loop();
        }
        let mut state = self.lock();
        state.sleepers += 1;
        // The generation only changes under the lock, so no wake-up is lost.
        while self.generation.load(Ordering::Relaxed) == seen {
            state = self.wake.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.sleepers -= 1;
        self.generation.load(Ordering::Relaxed)
    }

    /// A worker's life: wait for a job, join it, work, repeat.
    fn serve(&self) {
        // Generation 0 is the pool's at creation, not whatever it is when this thread
        // first runs: a job or the shutdown may already have been published.
        let mut seen = 0;
        loop {
            seen = self.wait_for_news(seen);
            let job = {
                let state = self.lock();
                if state.shutdown {
                    return;
                }
                match state.job {
                    Some(ptr) => {
                        // SAFETY: published and not closed (we hold the lock), so its
                        // caller is still inside run().
                        unsafe { &*ptr.0 }.joined.fetch_add(1, Ordering::Relaxed);
                        ptr
                    }
                    None => continue, // done before we looked
                }
            };
            // SAFETY: registered in `joined` above; the caller waits for us.
            let job = unsafe { &*job.0 };
            if catch_unwind(AssertUnwindSafe(|| job.work())).is_err() {
                job.panicked.store(true, Ordering::Relaxed);
            }
            // Release: our items' writes are visible to the caller that sees 0. The
            // job may be gone right after this line.
            job.joined.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Closes a published job and waits for the workers inside it, also when the caller's
/// own share panics (the job lives on the caller's stack).
struct Close<'a> {
    shared: &'a Shared,
    job: &'a Job<'a>,
}

impl Drop for Close<'_> {
    fn drop(&mut self) {
        self.shared.lock().job = None;
        let mut spins: u32 = 0;
        while self.job.joined.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                // A worker was preempted mid-item: give it the CPU.
                std::thread::yield_now();
            }
        }
    }
}

impl Pool {
    /// A pool of `threads` threads in all (the caller and `threads - 1` workers).
    pub fn new(threads: usize, spin: Duration) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            state: Mutex::new(State { job: None, sleepers: 0, shutdown: false }),
            wake: Condvar::new(),
            spin: spin.min(MAX_SPIN),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new().name(format!("gacc-cpu-{i}")).spawn(move || shared.serve());
            match spawned {
                Ok(handle) => workers.push(handle),
                // Fewer threads than asked is slower, never wrong: the caller does
                // whatever the workers do not take.
                Err(_) => break,
            }
        }
        let threads = workers.len() + 1;
        Pool { shared, threads, workers }
    }

    /// Threads that take part in a pass, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `body(k)` for every k in `0..count`, on the calling thread and the
    /// workers, and returns when all are done. A panic in any item panics here.
    pub fn run(&self, count: usize, body: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 || count <= 1 {
            (0..count).for_each(body);
            return;
        }
        let job = Job {
            body,
            count,
            threads: self.threads,
            next: AtomicUsize::new(0),
            joined: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        {
            let mut state = self.shared.lock();
            if state.job.is_some() {
                // Another caller's pass is running: do this one here.
                drop(state);
                (0..count).for_each(body);
                return;
            }
            state.job = Some(JobPtr((&job as *const Job<'_>).cast()));
            self.shared.generation.fetch_add(1, Ordering::Release);
            if state.sleepers > 0 {
                self.shared.wake.notify_all();
            }
        }
        let close = Close { shared: &self.shared, job: &job };
        job.work();
        drop(close);
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a gacc CPU worker thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.shutdown = true;
            self.shared.generation.fetch_add(1, Ordering::Release);
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Parses a thread count (`GACC_CPU_THREADS`): a positive integer.
fn parse_threads(s: &str) -> Option<usize> {
    s.trim().parse::<usize>().ok().filter(|&n| n > 0)
}

/// Parses a spin time in microseconds (`GACC_CPU_SPIN_US`).
fn parse_spin(s: &str) -> Option<Duration> {
    s.trim().parse::<u64>().ok().map(Duration::from_micros)
}

/// The process's pool, started on first use: `GACC_CPU_THREADS` threads (default:
/// every CPU this process may run on), idle workers spinning `GACC_CPU_SPIN_US`.
pub fn global() -> &'static Pool {
    static GLOBAL: OnceLock<Pool> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let threads = std::env::var("GACC_CPU_THREADS")
            .ok()
            .as_deref()
            .and_then(parse_threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let spin = std::env::var("GACC_CPU_SPIN_US").ok().as_deref().and_then(parse_spin).unwrap_or(DEFAULT_SPIN);
        Pool::new(threads, spin)
    })
}

#[cfg(feature = "test-support")]
thread_local! {
    static OVERRIDE: std::cell::RefCell<Option<Arc<Pool>>> = const { std::cell::RefCell::new(None) };
}

/// The pool this thread's passes run on: the global one, or inside [`with_threads`]
/// the one made for it.
pub(crate) fn run(count: usize, body: &(dyn Fn(usize) + Sync)) {
    #[cfg(feature = "test-support")]
    {
        if let Some(pool) = OVERRIDE.with(|o| o.borrow().clone()) {
            return pool.run(count, body);
        }
    }
    global().run(count, body)
}

/// Threads a pass started on this thread runs on.
pub(crate) fn current_threads() -> usize {
    #[cfg(feature = "test-support")]
    {
        if let Some(pool) = OVERRIDE.with(|o| o.borrow().clone()) {
            return pool.threads();
        }
    }
    global().threads()
}

/// Runs `body` with every gacc CPU pass started on this thread on a pool of its own
/// with `threads` threads (tests prove results do not depend on the thread count).
#[cfg(feature = "test-support")]
pub fn with_threads<R>(threads: usize, body: impl FnOnce() -> R) -> R {
    let pool = Arc::new(Pool::new(threads, DEFAULT_SPIN));
    let previous = OVERRIDE.with(|o| o.borrow_mut().replace(pool));
    let result = catch_unwind(AssertUnwindSafe(body));
    OVERRIDE.with(|o| *o.borrow_mut() = previous);
    match result {
        Ok(r) => r,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of_squares(pool: &Pool, count: usize) -> Vec<u64> {
        let out: Vec<AtomicU64> = (0..count).map(|_| AtomicU64::new(u64::MAX)).collect();
        pool.run(count, &|k| out[k].store((k as u64) * (k as u64), Ordering::Relaxed));
        out.into_iter().map(AtomicU64::into_inner).collect()
    }

    #[test]
    fn every_item_runs_exactly_once_at_every_thread_count() {
        for threads in [1, 2, 3, 8] {
            let pool = Pool::new(threads, Duration::from_micros(50));
            for count in [0, 1, 2, 7, 1000] {
                let runs: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
                pool.run(count, &|k| {
                    runs[k].fetch_add(1, Ordering::Relaxed);
                });
                assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1), "{threads} threads, {count} items");
            }
            let expected: Vec<u64> = (0..500u64).map(|k| k * k).collect();
            assert_eq!(sum_of_squares(&pool, 500), expected);
        }
    }

    #[test]
    fn claims_are_contiguous_shrinking_runs_that_cover_every_item() {
        let body = |_: usize| {};
        let job = Job {
            body: &body,
            count: 1000,
            threads: 2,
            next: AtomicUsize::new(0),
            joined: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        let mut runs = Vec::new();
        while let Some(run) = job.claim() {
            runs.push(run);
        }
        assert_eq!(runs.first(), Some(&(0, 250)), "a quarter of 1000 items for 2 threads");
        assert!(runs.windows(2).all(|w| w[0].1 == w[1].0), "runs follow each other: {runs:?}");
        assert!(runs.windows(2).all(|w| w[0].1 - w[0].0 >= w[1].1 - w[1].0), "runs shrink: {runs:?}");
        assert_eq!(runs.last().map(|r| r.1), Some(1000));
        assert_eq!(runs.last().map(|r| r.1 - r.0), Some(1), "the last runs are single items");
    }

    #[test]
    fn workers_take_items_and_wake_after_parking() {
        // A zero spin parks workers at once: every job then needs a wake-up.
        let pool = Pool::new(2, Duration::ZERO);
        let caller = std::thread::current().id();
        let mut helped = false;
        for _ in 0..200 {
            let others = AtomicUsize::new(0);
            pool.run(64, &|_| {
                if std::thread::current().id() != caller {
                    others.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(20));
            });
            helped |= others.load(Ordering::Relaxed) > 0;
            std::thread::sleep(Duration::from_micros(200)); // let the worker park
        }
        assert!(helped, "the worker never took an item");
    }

    #[test]
    fn concurrent_callers_each_finish_their_own_job() {
        let pool = Arc::new(Pool::new(3, Duration::from_micros(100)));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    for round in 0..50 {
                        let count = 10 + t * 7 + round;
                        let expected: Vec<u64> = (0..count as u64).map(|k| k * k).collect();
                        assert_eq!(sum_of_squares(&pool, count), expected);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_item_panics_the_caller_and_the_pool_still_works() {
        let pool = Pool::new(2, Duration::from_micros(100));
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(100, &|k| {
                if k == 37 {
                    panic!("item 37");
                }
            })
        }));
        assert!(result.is_err());
        let expected: Vec<u64> = (0..100u64).map(|k| k * k).collect();
        assert_eq!(sum_of_squares(&pool, 100), expected);
    }

    /// A forked child has none of the parent's workers: its passes still finish, on
    /// the calling thread (rayon's pool, before, would wait for workers that no longer
    /// exist).
    #[cfg(unix)]
    #[test]
    fn a_forked_child_runs_passes_on_its_calling_thread() {
        // A long spin, and a pause before the fork: the worker is then in its spin
        // loop, holding no lock, when the child is made (a lock held at fork time
        // would stay held in the child).
        let pool = Pool::new(2, MAX_SPIN);
        assert_eq!(sum_of_squares(&pool, 64)[63], 63 * 63, "the parent's pool works");
        std::thread::sleep(Duration::from_millis(2));
        // SAFETY: the child only runs the pool (atomics, a mutex nobody holds) and
        // leaves with _exit, never returning into the harness.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let ok = sum_of_squares(&pool, 1000).iter().enumerate().all(|(k, &v)| v == (k * k) as u64);
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // A hung child (a pass waiting for a worker) fails the test by timing out here.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(waited, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
    }

    #[test]
    fn environment_values_parse() {
        assert_eq!(parse_threads(" 4 "), Some(4));
        assert_eq!(parse_threads("0"), None);
        assert_eq!(parse_threads("many"), None);
        assert_eq!(parse_spin("0"), Some(Duration::ZERO));
        assert_eq!(parse_spin("250"), Some(Duration::from_micros(250)));
        assert_eq!(parse_spin("-1"), None);
        assert_eq!(Pool::new(1, Duration::from_secs(5)).shared.spin, MAX_SPIN);
    }
}
