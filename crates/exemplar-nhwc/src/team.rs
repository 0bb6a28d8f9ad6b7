//! The threads of one forward pass, kept busy-waiting between its layers.
//!
//! A batch-1 pass runs ~80 parallel layers of 20-300 µs each. Under rayon, the second
//! thread went to sleep between them (after a few dozen idle polls) and each layer paid
//! for its wake-up and its late start, and the thread that split the work slept too
//! while it waited for the other half: the small layers gained little from a second
//! thread. Here the pass's thread leads a team of the pool's other
//! threads, which spin on the next layer's work until the pass ends; the leader spins
//! while it waits for them. [`run_pass`] forms a team, [`for_each`] shares a layer's
//! parts among it (and among rayon's threads, as before, outside a pass).

use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Idle polls between two looks for other rayon work (another request's pass), so that
/// a thread serving a team is not withheld from it (~3 µs of `spin_loop` hints).
const POLLS_PER_RAYON_LOOK: u32 = 64;

/// Idle polls (~100 µs) after which a member gives its core to the system between polls:
/// a pass's layers follow each other within microseconds, so a longer wait is a pass
/// that is held up, or a machine with more to run than cores.
const POLLS_BEFORE_YIELDING: u32 = 2048;

thread_local! {
    /// The team this thread leads, while it runs a pass and is not inside one of its
    /// layers (a part that shares its own work again does so through rayon).
    static LEADING: RefCell<Option<Arc<Team>>> = const { RefCell::new(None) };
}

/// Passes under way in the process, with or without a team.
static PASSES: AtomicUsize = AtomicUsize::new(0);

/// Runs one forward pass on a pool thread, with every other pool thread that is free
/// serving it. Threads busy elsewhere (another pass) join when they finish, or never:
/// the leader takes whatever parts nobody else has, so a pass never waits for a thread.
/// A pass that starts while another is under way (an import's concurrent photos,
/// simultaneous searches) goes without a team, its layers shared through rayon as
/// before: passes side by side use the threads better than one pass after the other
/// with a team each (`exemplar import`: 3-5 % fewer photos per second with a team for
/// every pass).
pub fn run_pass<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    struct Under;
    impl Drop for Under {
        fn drop(&mut self) {
            PASSES.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let alone = PASSES.fetch_add(1, Ordering::SeqCst) == 0;
    let _under = Under;
    if !alone || threads() < 2 {
        // Without other threads to serve it, a team is only bookkeeping.
        return rayon::scope(|_| pass());
    }
    let team = Arc::new(Team::default());
    rayon::scope(|scope| {
        for member in 1..threads() {
            let team = &team;
            scope.spawn(move |_| team.serve(member));
        }
        let _leading = Leading::start(team.clone());
        pass()
    })
}

/// Calls `work` on every item, the items shared among the current pass's team, or among
/// rayon's threads outside a pass. Callers choose the items' size: each is claimed by
/// one thread as a whole, a few per thread balance best.
pub(crate) fn for_each<T: Send>(items: Vec<T>, work: impl Fn(T) + Sync) {
    let team = LEADING.with_borrow(Clone::clone);
    match team {
        Some(team) if items.len() > 1 => {
            // Each item is taken once: the job hands out each index once.
            let items: Vec<Mutex<Option<T>>> = items
                .into_iter()
                .map(|item| Mutex::new(Some(item)))
                .collect();
            let task = |i: usize| {
                let item = items[i]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                if let Some(item) = item {
                    work(item);
                }
            };
            team.run(items.len(), &task);
        }
        // One item: the leader works on it still leading, so that the item can share its
        // own work with the team (a Winograd layer's single group, its 36 products).
        Some(_) => items.into_iter().for_each(work),
        None => items.into_par_iter().for_each(&work),
    }
}

/// Whether this thread leads a pass's team (whose threads wait for its next layer).
pub fn leading() -> bool {
    LEADING.with_borrow(Option::is_some)
}

/// How many threads share a layer's work.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Parts per thread where a layer's units (rows) are split evenly: enough to even out a
/// late start, few enough that claiming them costs nothing to speak of.
const PARTS_PER_THREAD: usize = 4;

/// `data` as contiguous parts of whole `unit`-long units, a few per thread, each with
/// the index of its first unit.
pub(crate) fn parts_mut<T>(data: &mut [T], unit: usize) -> Vec<(usize, &mut [T])> {
    let units = data.len() / unit.max(1);
    let per_part = units.div_ceil(PARTS_PER_THREAD * threads()).max(1);
    data.chunks_mut((per_part * unit).max(1))
        .enumerate()
        .map(|(i, part)| (i * per_part, part))
        .collect()
}

#[derive(Default)]
struct Team {
    /// The layer being worked on, or null between layers.
    posted: AtomicPtr<Job<'static>>,
    /// Bumped after each post: idle members watch it, a load that stays in their cache.
    generation: AtomicUsize,
    /// Members that may hold the posted job: the leader takes it down and waits for none
    /// before the job leaves its stack.
    inside: AtomicUsize,
    ended: AtomicBool,
}

/// One layer's parts: `task(i)` for each `i < tasks`, each `i` claimed once. Each
/// thread of the team owns a contiguous range of them and starts there, then takes what
/// is left in the others' (a member that joins late, or never). The ranges keep a thread
/// on the same rows from layer to layer, where its last output is still in its cache:
/// parts handed out in turn move every map between the cores.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    /// The next unclaimed part of each thread's range.
    cursors: Vec<Cursor>,
}

/// On a cache line of its own: the threads claim from their own ranges at once.
#[repr(align(128))]
struct Cursor(AtomicUsize);

impl Job<'_> {
    fn range_end(&self, thread: usize) -> usize {
        self.tasks * (thread + 1) / self.cursors.len()
    }

    /// Works on `thread`'s own range, then on whatever the others have left.
    fn work(&self, thread: usize) {
        let threads = self.cursors.len();
        let thread = thread % threads;
        for owner in (thread..threads).chain(0..thread) {
            let end = self.range_end(owner);
            loop {
                let i = self.cursors[owner].0.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                (self.task)(i);
            }
        }
    }
}

impl Team {
    /// The leader's side of a layer: post it, work on it, take it down.
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        let threads = threads();
        let job = Job {
            task,
            tasks,
            cursors: (0..threads)
                .map(|t| Cursor(AtomicUsize::new(tasks * t / threads)))
                .collect(),
        };
        // Members see the job for the leader's lifetime of it only: `TakeDown` retracts
        // it and waits until no member holds it, before `job` goes, even on a panic.
        let erased: *const Job<'_> = &job;
        self.posted
            .store(erased.cast::<Job<'static>>().cast_mut(), Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::Release);
        let _take_down = TakeDown(self);
        let _outside = Leading::pause();
        job.work(0);
    }

    /// A member's side: spin until a new layer is posted, work on it, until the pass
    /// ends. `member` numbers it among the threads (the leader is 0).
    fn serve(&self, member: usize) {
        let mut seen = 0;
        let mut idle: u32 = 0;
        while !self.ended.load(Ordering::Acquire) {
            let generation = self.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                idle = 0;
                self.join_posted(member);
            } else {
                idle = idle.wrapping_add(1);
                if idle.is_multiple_of(POLLS_PER_RAYON_LOOK) {
                    rayon::yield_now();
                } else if idle > POLLS_BEFORE_YIELDING {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }

    fn join_posted(&self, member: usize) {
        // Counted inside before reading `posted` (both sequentially consistent): a
        // leader that takes its job down after this read sees the count and waits.
        self.inside.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave(&self.inside);
        let job = self.posted.load(Ordering::SeqCst);
        // SAFETY: a non-null `posted` read while counted in `inside` points at a `Job`
        // on its leader's stack that stays there until `inside` drops back (`TakeDown`
        // retracts the pointer, then waits for the count), and `Job` is `Sync`.
        if let Some(job) = unsafe { job.as_ref() } {
            job.work(member);
        }
    }
}

/// Retracts the leader's job and waits until every member that read it has left.
struct TakeDown<'a>(&'a Team);

impl Drop for TakeDown<'_> {
    fn drop(&mut self) {
        self.0.posted.store(std::ptr::null_mut(), Ordering::SeqCst);
        let mut polls: u32 = 0;
        while self.0.inside.load(Ordering::SeqCst) != 0 {
            // A member that was preempted inside the job needs the core back.
            polls = polls.wrapping_add(1);
            if polls > POLLS_BEFORE_YIELDING {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// This thread's team while it leads one; restores the previous on drop (a pass run
/// inside a part of another's), and at the end of its pass lets the members go.
struct Leading {
    previous: Option<Arc<Team>>,
    ends: Option<Arc<Team>>,
}

impl Leading {
    fn start(team: Arc<Team>) -> Self {
        let previous = LEADING.replace(Some(team.clone()));
        Leading {
            previous,
            ends: Some(team),
        }
    }

    /// Not leading for a while: inside a job, nested sharing goes through rayon.
    fn pause() -> Self {
        Leading {
            previous: LEADING.take(),
            ends: None,
        }
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        LEADING.set(self.previous.take());
        if let Some(team) = &self.ends {
            team.ended.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of_squares_in_parts(parts: usize, per_part: usize) -> Vec<u64> {
        let mut out = vec![0u64; parts];
        let items: Vec<(usize, &mut u64)> = out.iter_mut().enumerate().collect();
        for_each(items, |(part, out)| {
            *out = (part * per_part..(part + 1) * per_part)
                .map(|v| (v * v) as u64)
                .sum();
        });
        out
    }

    fn expected(parts: usize, per_part: usize) -> Vec<u64> {
        (0..parts)
            .map(|part| {
                (part * per_part..(part + 1) * per_part)
                    .map(|v| (v * v) as u64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn every_item_is_worked_on_once_inside_and_outside_a_pass() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            assert_eq!(sum_of_squares_in_parts(7, 1000), expected(7, 1000));
            let calls = AtomicUsize::new(0);
            let layers = run_pass(|| {
                // Many small layers one after another, as in a pass: members join and
                // leave jobs while the leader posts the next.
                (0..500)
                    .map(|layer| {
                        let parts = 1 + layer % 9;
                        calls.fetch_add(parts, Ordering::Relaxed);
                        sum_of_squares_in_parts(parts, 50 + layer) == expected(parts, 50 + layer)
                    })
                    .filter(|&right| right)
                    .count()
            });
            assert_eq!(layers, 500);
            assert_eq!(
                calls.load(Ordering::Relaxed),
                (0..500).map(|l| 1 + l % 9).sum::<usize>()
            );
        });
    }

    #[test]
    fn the_other_threads_take_part_in_a_pass() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        let mut helped = false;
        // Passes of layers whose parts take a while, until another thread has taken one
        // (within seconds even on a loaded machine). A pass that starts while another
        // test's is under way goes without a team, hence several passes.
        while !helped && start.elapsed() < std::time::Duration::from_secs(20) {
            helped = pool.install(|| {
                run_pass(|| {
                    if LEADING.with_borrow(Option::is_none) {
                        return false; // no team: rayon shares the parts
                    }
                    let leader = std::thread::current().id();
                    let others = AtomicUsize::new(0);
                    for _ in 0..20 {
                        for_each((0..8).collect(), |_: usize| {
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            if std::thread::current().id() != leader {
                                others.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    others.load(Ordering::Relaxed) > 0
                })
            });
        }
        assert!(
            helped,
            "no other thread took a part of a pass led by a team"
        );
    }

    #[test]
    fn a_part_may_share_its_own_work_and_passes_may_run_side_by_side() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let totals: Vec<u64> = pool.install(|| {
            (0..4u64)
                .into_par_iter()
                .map(|pass| {
                    run_pass(|| {
                        let mut sums = [0u64; 4];
                        let items: Vec<(usize, &mut u64)> = sums.iter_mut().enumerate().collect();
                        for_each(items, |(i, sum)| {
                            // Nested: goes through rayon, not the team.
                            *sum = sum_of_squares_in_parts(3, 10 + i).iter().sum::<u64>() + pass;
                        });
                        sums.iter().sum()
                    })
                })
                .collect()
        });
        let base: u64 = (0..4)
            .map(|i| expected(3, 10 + i).iter().sum::<u64>())
            .sum();
        assert_eq!(
            totals,
            (0..4).map(|pass| base + 4 * pass).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_panicking_part_reaches_the_caller_and_the_pool_stays_usable() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                run_pass(|| {
                    for_each((0..8).collect(), |i: usize| {
                        assert!(i != 5, "part five fails");
                    });
                })
            })
        }));
        assert!(caught.is_err());
        pool.install(|| assert_eq!(run_pass(|| sum_of_squares_in_parts(4, 9)), expected(4, 9)));
    }
}
