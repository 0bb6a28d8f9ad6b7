//! A safe handle on one hnswlib graph (inner-product space) through `hnswlib/shim.cpp`.
//!
//! build.rs compiles the shim once per x86-64 instruction-set level; [`Api::for_this_cpu`]
//! picks the copy once per process. Every graph is created and used through one copy.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::OnceLock;

const ERROR_LEN: usize = 256;

/// The shim's functions, from one compiled copy.
struct Api {
    name: &'static str,
    new: unsafe extern "C" fn(
        usize,
        usize,
        usize,
        usize,
        usize,
        *mut *mut c_void,
        *mut c_char,
        usize,
    ) -> i32,
    load: unsafe extern "C" fn(
        *const c_char,
        usize,
        usize,
        *mut *mut c_void,
        *mut c_char,
        usize,
    ) -> i32,
    free: unsafe extern "C" fn(*mut c_void),
    save: unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_char, usize) -> i32,
    resize: unsafe extern "C" fn(*mut c_void, usize, *mut c_char, usize) -> i32,
    add: unsafe extern "C" fn(*mut c_void, u64, *const f32, *mut c_char, usize) -> i32,
    remove: unsafe extern "C" fn(*mut c_void, u64) -> i32,
    is_live: unsafe extern "C" fn(*const c_void, u64) -> i32,
    live_count: unsafe extern "C" fn(*const c_void) -> usize,
    capacity: unsafe extern "C" fn(*const c_void) -> usize,
    set_ef: unsafe extern "C" fn(*mut c_void, usize),
    search: unsafe extern "C" fn(
        *const c_void,
        *const f32,
        usize,
        *mut u64,
        *mut f32,
        *mut c_char,
        usize,
    ) -> i64,
}

macro_rules! shim_copy {
    ($module:ident) => {
        mod $module {
            use std::ffi::{c_char, c_void};
            extern "C" {
                #[link_name = concat!(stringify!($module), "_new")]
                pub fn new(
                    dim: usize,
                    capacity: usize,
                    m: usize,
                    ef_construction: usize,
                    seed: usize,
                    out: *mut *mut c_void,
                    error: *mut c_char,
                    error_len: usize,
                ) -> i32;
                #[link_name = concat!(stringify!($module), "_load")]
                pub fn load(
                    path: *const c_char,
                    dim: usize,
                    capacity: usize,
                    out: *mut *mut c_void,
                    error: *mut c_char,
                    error_len: usize,
                ) -> i32;
                #[link_name = concat!(stringify!($module), "_free")]
                pub fn free(index: *mut c_void);
                #[link_name = concat!(stringify!($module), "_save")]
                pub fn save(
                    index: *mut c_void,
                    path: *const c_char,
                    error: *mut c_char,
                    error_len: usize,
                ) -> i32;
                #[link_name = concat!(stringify!($module), "_resize")]
                pub fn resize(
                    index: *mut c_void,
                    capacity: usize,
                    error: *mut c_char,
                    error_len: usize,
                ) -> i32;
                #[link_name = concat!(stringify!($module), "_add")]
                pub fn add(
                    index: *mut c_void,
                    label: u64,
                    vector: *const f32,
                    error: *mut c_char,
                    error_len: usize,
                ) -> i32;
                #[link_name = concat!(stringify!($module), "_remove")]
                pub fn remove(index: *mut c_void, label: u64) -> i32;
                #[link_name = concat!(stringify!($module), "_is_live")]
                pub fn is_live(index: *const c_void, label: u64) -> i32;
                #[link_name = concat!(stringify!($module), "_live_count")]
                pub fn live_count(index: *const c_void) -> usize;
                #[link_name = concat!(stringify!($module), "_capacity")]
                pub fn capacity(index: *const c_void) -> usize;
                #[link_name = concat!(stringify!($module), "_set_ef")]
                pub fn set_ef(index: *mut c_void, ef: usize);
                #[link_name = concat!(stringify!($module), "_search")]
                pub fn search(
                    index: *const c_void,
                    query: *const f32,
                    k: usize,
                    labels: *mut u64,
                    distances: *mut f32,
                    error: *mut c_char,
                    error_len: usize,
                ) -> i64;
            }
            pub const API: super::Api = super::Api {
                name: stringify!($module),
                new,
                load,
                free,
                save,
                resize,
                add,
                remove,
                is_live,
                live_count,
                capacity,
                set_ef,
                search,
            };
        }
    };
}

shim_copy!(hnsw_base);
#[cfg(target_arch = "x86_64")]
shim_copy!(hnsw_v3);
#[cfg(target_arch = "x86_64")]
shim_copy!(hnsw_v4);

impl Api {
    /// The copy compiled for the most capable instruction-set level this CPU has.
    fn for_this_cpu() -> &'static Api {
        static CHOSEN: OnceLock<&'static Api> = OnceLock::new();
        CHOSEN.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                let v3 = has!("avx2")
                    && has!("fma")
                    && has!("bmi1")
                    && has!("bmi2")
                    && has!("f16c")
                    && has!("lzcnt")
                    && has!("movbe");
                if v3
                    && has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512cd")
                    && has!("avx512dq")
                    && has!("avx512vl")
                {
                    return &hnsw_v4::API;
                }
                if v3 {
                    return &hnsw_v3::API;
                }
            }
            &hnsw_base::API
        })
    }
}

/// Which compiled copy of hnswlib this process uses (`hnsw_base`, `hnsw_v3`, `hnsw_v4`).
pub fn instruction_set() -> &'static str {
    Api::for_this_cpu().name
}

/// An owned hnswlib graph of `dim`-dimensional vectors under the inner product.
pub(crate) struct Graph {
    api: &'static Api,
    handle: NonNull<c_void>,
    dim: usize,
}

// SAFETY: the graph is plain heap memory owned by this handle. hnswlib allows concurrent
// searches, and concurrent `add`s of distinct labels (its per-label and per-node locks);
// every other mutation takes `&mut self`.
unsafe impl Send for Graph {}
// SAFETY: as above: the `&self` methods are the ones hnswlib allows concurrently.
unsafe impl Sync for Graph {}

fn message(buffer: &[c_char; ERROR_LEN]) -> String {
    // SAFETY: the shim always writes a NUL-terminated string within ERROR_LEN bytes, and the
    // buffer starts zeroed, so a terminator exists either way.
    unsafe { CStr::from_ptr(buffer.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The shim's status as a result: 0 is success, anything else left its message in `error`.
fn checked(status: i32, error: &[c_char; ERROR_LEN]) -> Result<(), String> {
    if status == 0 {
        Ok(())
    } else {
        Err(message(error))
    }
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("path {} contains a NUL byte", path.display()))
}

impl Graph {
    pub fn new(
        dim: usize,
        capacity: usize,
        m: usize,
        ef_construction: usize,
    ) -> Result<Self, String> {
        let api = Api::for_this_cpu();
        let mut handle = std::ptr::null_mut();
        let mut error = [0 as c_char; ERROR_LEN];
        // SAFETY: `handle` and `error` are valid for writes; the shim fills `handle` on success.
        let status = unsafe {
            (api.new)(
                dim,
                capacity.max(1),
                m,
                ef_construction,
                100,
                &mut handle,
                error.as_mut_ptr(),
                ERROR_LEN,
            )
        };
        Self::from_status(api, status, handle, dim, &error)
    }

    /// Reads a graph written by [`Graph::save`]. The caller checks the file's integrity
    /// first: hnswlib trusts the sizes it reads.
    pub fn load(path: &Path, dim: usize, capacity: usize) -> Result<Self, String> {
        let api = Api::for_this_cpu();
        let path = c_path(path)?;
        let mut handle = std::ptr::null_mut();
        let mut error = [0 as c_char; ERROR_LEN];
        // SAFETY: `path` is NUL-terminated; `handle` and `error` are valid for writes.
        let status = unsafe {
            (api.load)(
                path.as_ptr(),
                dim,
                capacity,
                &mut handle,
                error.as_mut_ptr(),
                ERROR_LEN,
            )
        };
        Self::from_status(api, status, handle, dim, &error)
    }

    fn from_status(
        api: &'static Api,
        status: i32,
        handle: *mut c_void,
        dim: usize,
        error: &[c_char; ERROR_LEN],
    ) -> Result<Self, String> {
        match NonNull::new(handle) {
            Some(handle) if status == 0 => Ok(Self { api, handle, dim }),
            _ => Err(message(error)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let path = c_path(path)?;
        let mut error = [0 as c_char; ERROR_LEN];
        // SAFETY: saving only reads the graph; no mutation runs meanwhile (`&self` excludes
        // `&mut self`, and concurrent `add`s only happen inside `add_parallel`'s `&mut self`).
        let status = unsafe {
            (self.api.save)(
                self.handle.as_ptr(),
                path.as_ptr(),
                error.as_mut_ptr(),
                ERROR_LEN,
            )
        };
        checked(status, &error)
    }

    pub fn capacity(&self) -> usize {
        // SAFETY: a read of a field; the handle is live.
        unsafe { (self.api.capacity)(self.handle.as_ptr()) }
    }

    /// Makes room for at least `needed` points in total (hnswlib does not grow by itself).
    pub fn reserve(&mut self, needed: usize) -> Result<(), String> {
        let capacity = self.capacity();
        if needed <= capacity {
            return Ok(());
        }
        let target = needed.max(capacity.saturating_mul(2)).max(1024);
        let mut error = [0 as c_char; ERROR_LEN];
        // SAFETY: `&mut self`: nothing else uses the graph while it is reallocated.
        let status = unsafe {
            (self.api.resize)(self.handle.as_ptr(), target, error.as_mut_ptr(), ERROR_LEN)
        };
        checked(status, &error)
    }

    /// Adds distinct labels from `threads` threads (vectors already checked for length).
    pub fn add_parallel(&mut self, items: &[(u64, &[f32])], threads: usize) -> Result<(), String> {
        let live = self.live_count();
        self.reserve(live + items.len())?;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let graph = &*self;
        let worker = || -> Result<(), String> {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((label, vector)) = items.get(i) else {
                    return Ok(());
                };
                graph.add(*label, vector)?;
            }
        };
        let threads = threads.clamp(1, items.len().max(1));
        if threads == 1 {
            return worker();
        }
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("an insertion thread panicked".into()))
            })
        })
    }

    /// One insertion; called concurrently only by [`Graph::add_parallel`], for distinct labels,
    /// after room was reserved.
    fn add(&self, label: u64, vector: &[f32]) -> Result<(), String> {
        assert_eq!(vector.len(), self.dim);
        let mut error = [0 as c_char; ERROR_LEN];
        // SAFETY: `vector` holds `dim` floats; hnswlib's label and node locks make concurrent
        // additions of distinct labels safe, and capacity was reserved under `&mut self`.
        let status = unsafe {
            (self.api.add)(
                self.handle.as_ptr(),
                label,
                vector.as_ptr(),
                error.as_mut_ptr(),
                ERROR_LEN,
            )
        };
        checked(status, &error)
    }

    /// Deletes `label` (its slot is reused by a later addition). Returns whether it was live.
    pub fn remove(&mut self, label: u64) -> bool {
        // SAFETY: `&mut self`: no concurrent use.
        unsafe { (self.api.remove)(self.handle.as_ptr(), label) == 1 }
    }

    pub fn is_live(&self, label: u64) -> bool {
        // SAFETY: a locked lookup; the handle is live.
        unsafe { (self.api.is_live)(self.handle.as_ptr(), label) == 1 }
    }

    pub fn live_count(&self) -> usize {
        // SAFETY: reads of two counters; the handle is live.
        unsafe { (self.api.live_count)(self.handle.as_ptr()) }
    }

    pub fn set_ef(&mut self, ef: usize) {
        // SAFETY: `&mut self`: no search reads `ef` meanwhile.
        unsafe { (self.api.set_ef)(self.handle.as_ptr(), ef) }
    }

    /// The `k` nearest live labels with their inner-product distance `1 - dot`, nearest first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>, String> {
        assert_eq!(query.len(), self.dim);
        let mut labels = vec![0u64; k];
        let mut distances = vec![0f32; k];
        let mut error = [0 as c_char; ERROR_LEN];
        // SAFETY: `query` holds `dim` floats, the outputs hold `k` entries each; searches may
        // run concurrently with each other.
        let found = unsafe {
            (self.api.search)(
                self.handle.as_ptr(),
                query.as_ptr(),
                k,
                labels.as_mut_ptr(),
                distances.as_mut_ptr(),
                error.as_mut_ptr(),
                ERROR_LEN,
            )
        };
        let found = usize::try_from(found).map_err(|_| message(&error))?;
        Ok(labels.into_iter().zip(distances).take(found).collect())
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: the handle came from the same copy's `new`/`load` and is freed once.
        unsafe { (self.api.free)(self.handle.as_ptr()) }
    }
}
