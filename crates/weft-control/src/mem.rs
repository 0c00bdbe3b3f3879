//! Returns freed heap memory to the operating system after each push.
//!
//! A push builds and drops a whole mesh's worth of resources; glibc keeps freed pages in its
//! arenas, so without this the control plane's resident memory would sit at its peak.

/// Returns free heap pages to the OS (glibc only; a no-op elsewhere).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers from us, only walks glibc's own arenas under their
    // locks, and may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps glibc's malloc arenas at two. By default glibc may create up to eight per core, and a
/// control plane that builds large pushes on several threads then keeps each arena's high-water
/// mark resident. Call before starting threads (first thing in `main`).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets a glibc tuning parameter; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
