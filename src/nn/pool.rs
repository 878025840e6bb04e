//! A tiny fork-join pool for coarse-grained parallelism (batch halves, row blocks).
//!
//! [`run`] executes `f(0..n)` on the caller and [`super::threads`]` − 1` persistent workers.
//! Workers spin briefly after each job (jobs of one training step or one generated token
//! follow each other closely) and then park, so an idle process costs nothing.
//!
//! Results never depend on the thread count: callers split work into tasks by a fixed rule
//! (for example rows), and each task writes only its own outputs. When the pool is busy
//! (another thread is using it, or `run` is called from inside a task) the tasks simply run
//! on the caller, one after another.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long a worker spins for the next job before parking.
const SPIN: Duration = Duration::from_micros(200);

type Task = dyn Fn(usize) + Sync;

struct Job {
    /// The caller's closure with its lifetime erased; only called for task indices < `n`,
    /// and the caller does not return before all of those have finished (see [`run`]).
    f: *const Task,
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `f` points to a `Sync` closure that outlives every call made through it.
unsafe impl Send for Job {}
// SAFETY: as for `Send`; the other fields are atomics and a mutex.
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs tasks until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.n {
                return;
            }
            // SAFETY: i < n, so the caller is still waiting in `run` and `f` is alive.
            let f = unsafe { &*self.f };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i)));
            if let Err(p) = r {
                if let Ok(mut slot) = self.panic.lock() {
                    slot.get_or_insert(p);
                }
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

struct Shared {
    job: Mutex<Option<Arc<Job>>>,
    generation: AtomicU64,
    sleeping: Vec<AtomicBool>,
}

struct Pool {
    shared: Arc<Shared>,
    workers: Vec<Thread>,
    /// Held by the thread that currently owns the workers.
    busy: Mutex<()>,
}

thread_local! {
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let nw = super::threads().saturating_sub(1);
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            generation: AtomicU64::new(0),
            sleeping: (0..nw).map(|_| AtomicBool::new(false)).collect(),
        });
        let mut workers = Vec::with_capacity(nw);
        for w in 0..nw {
            let sh = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(format!("quill-worker-{w}"))
                .spawn(move || worker(sh, w));
            match spawned {
                Ok(h) => workers.push(h.thread().clone()),
                Err(_) => break,
            }
        }
        Pool {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    })
}

fn worker(sh: Arc<Shared>, w: usize) {
    IN_TASK.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        // Spin, then park until the generation moves.
        let t0 = Instant::now();
        let mut spins = 0u32;
        while sh.generation.load(SeqCst) == seen {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(64) && t0.elapsed() > SPIN {
                sh.sleeping[w].store(true, SeqCst);
                if sh.generation.load(SeqCst) == seen {
                    thread::park();
                }
                sh.sleeping[w].store(false, SeqCst);
            }
        }
        seen = sh.generation.load(SeqCst);
        let job = sh.job.lock().ok().and_then(|j| j.clone());
        if let Some(job) = job {
            job.work();
        }
    }
}

/// Number of threads [`run`] uses when the pool is free (the caller included).
pub fn width() -> usize {
    pool().workers.len() + 1
}

/// Runs `f(i)` for every `i` in `0..n`, in parallel where possible, and returns when all
/// have finished. A panic in a task is resumed on the caller.
pub fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n == 0 {
        return;
    }
    let inline = |f: &(dyn Fn(usize) + Sync)| (0..n).for_each(f);
    if n == 1 || IN_TASK.with(|c| c.get()) {
        return inline(f);
    }
    let p = pool();
    if p.workers.is_empty() {
        return inline(f);
    }
    let Ok(_guard) = p.busy.try_lock() else {
        return inline(f);
    };
    let f_ptr: *const (dyn Fn(usize) + Sync + '_) = f;
    // SAFETY: lifetime erasure; the job is only called for indices < n, and this function
    // waits below until all n calls have returned, so `f` outlives every use.
    let f_static: *const Task = unsafe { std::mem::transmute(f_ptr) };
    let job = Arc::new(Job {
        f: f_static,
        n,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panic: Mutex::new(None),
    });
    if let Ok(mut slot) = p.shared.job.lock() {
        *slot = Some(Arc::clone(&job));
    }
    p.shared.generation.fetch_add(1, SeqCst);
    for (w, t) in p.workers.iter().enumerate() {
        if p.shared.sleeping[w].load(SeqCst) {
            t.unpark();
        }
    }
    IN_TASK.with(|c| c.set(true));
    job.work();
    IN_TASK.with(|c| c.set(false));
    let mut spins = 0u32;
    while job.done.load(SeqCst) < n {
        spins += 1;
        if spins < 1 << 14 {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
    if let Ok(mut slot) = p.shared.job.lock() {
        *slot = None;
    }
    let panic = job.panic.lock().ok().and_then(|mut s| s.take());
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
}

/// Runs `f` on every item, one task per item, in parallel where possible (for disjoint
/// pieces of buffers, such as chunks of `&mut [f32]`); returns when all have finished.
pub fn for_each_mut<T: Send>(items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
    // One uncontended lock per item hands each task its `&mut` safely.
    let cells: Vec<Mutex<&mut T>> = items.iter_mut().map(Mutex::new).collect();
    run(cells.len(), &|i| {
        if let Ok(mut item) = cells[i].lock() {
            f(&mut item);
        }
    });
}

/// Splits `0..len` into `parts` contiguous ranges whose sizes differ by at most one.
pub fn split(len: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let (q, r) = (len / parts, len % parts);
    let start = i * q + i.min(r);
    start..start + q + usize::from(i < r)
}

/// A raw pointer that may cross to pool threads; each task touches only its own rows.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<F>(pub(crate) *mut F);
// SAFETY: used only for disjoint row ranges of one buffer, from tasks joined before the
// buffer is used again.
unsafe impl<F> Send for SyncPtr<F> {}
// SAFETY: as for `Send`: shared only by tasks that touch disjoint elements.
unsafe impl<F> Sync for SyncPtr<F> {}

impl<F> SyncPtr<F> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub(crate) fn ptr(&self) -> *mut F {
        self.0
    }

    /// `len` elements from `off`.
    ///
    /// # Safety
    /// In bounds, and no other live reference to these elements.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> &mut [F] {
        // SAFETY: the caller upholds this function's `# Safety` contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(off), len) }
    }
}

/// How many row groups to split B streams into: one per pool thread, never empty.
pub(crate) fn parts(b: usize) -> usize {
    width().min(b).max(1)
}

/// Number of row tasks for a product with `n` rows: a multiple of the thread count, with
/// blocks of at most about 192 rows, so threads finish together even when one is slower.
pub(crate) fn row_tasks(n: usize) -> usize {
    const BLOCK: usize = 192;
    let w = width();
    (w * n.div_ceil(w * BLOCK)).clamp(1, n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for n in [1, 2, 3, 7, 64] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            run(n, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n = {n}");
        }
    }

    #[test]
    fn nested_and_concurrent_calls_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..50 {
                        run(4, &|_| {
                            run(3, &|_| {
                                total.fetch_add(1, SeqCst);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 3 * 50 * 4 * 3);
    }

    #[test]
    fn a_panicking_task_panics_the_caller() {
        let r = std::panic::catch_unwind(|| {
            run(4, &|i| {
                if i == 3 {
                    panic!("task 3");
                }
            })
        });
        assert!(r.is_err());
        // the pool still works afterwards
        let n = AtomicUsize::new(0);
        run(4, &|_| {
            n.fetch_add(1, SeqCst);
        });
        assert_eq!(n.load(SeqCst), 4);
    }

    #[test]
    fn split_covers_the_range() {
        for len in 0..20 {
            for parts in 1..5 {
                let mut next = 0;
                for i in 0..parts {
                    let r = split(len, parts, i);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
