//! llama.cpp's CPU threads here are OpenMP's (llama-cpp-sys-2's `openmp`
//! feature): each thread that evaluates a model keeps a team of workers, and
//! libgomp cuts its busy-wait from 300,000 spins to 100 once a process holds
//! more of them than CPUs, so every barrier of a decode step then sleeps on a
//! futex. A second local model that has served one call, idle since, made
//! the first decode 3-4x slower on two cores (docs/BENCHMARKS.md). An engine
//! thread with nothing to do hands its team back.

use std::ffi::c_int;

/// OpenMP's `omp_pause_soft`.
const OMP_PAUSE_SOFT: c_int = 1;

#[allow(unsafe_code)]
mod ffi {
    use std::ffi::c_int;

    unsafe extern "C" {
        /// OpenMP 5.0; libgomp frees the calling thread's team (its
        /// workers exit) and recreates it at the next parallel region.
        pub(super) fn omp_pause_resource_all(kind: c_int) -> c_int;
    }
}

/// Lets the calling thread's OpenMP workers go (a no-op if it has none).
/// Call only between evaluations, from the thread that runs them.
pub fn release_threads() {
    // SAFETY: no parallel region is active on this thread (it is between
    // llama.cpp calls), which is all omp_pause_resource_all asks.
    #[allow(unsafe_code)]
    let refused = unsafe { ffi::omp_pause_resource_all(OMP_PAUSE_SOFT) } != 0;
    if refused {
        tracing::debug!("libgomp kept this thread's OpenMP team");
    }
}
