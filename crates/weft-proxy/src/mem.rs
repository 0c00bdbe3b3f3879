//! The proxy's memory: which allocator it runs on, and handing back memory that only config
//! loading needed.
//!
//! The allocator is mimalloc rather than the C library's. A proxied request makes about ten
//! allocations, one of them hyper's 8 KiB read buffer, past glibc's per-thread cache; on this
//! path mimalloc's thread-local free lists measured 4% more requests per second on one core
//! (bench/RESULTS.md, 2026-11-22). Its arenas are committed on demand (see `early`) so that
//! idle memory stays as low as with glibc.
//!
//! Parsing a bootstrap builds a protobuf descriptor pool, decodes through a large body of
//! generated code, and allocates many short-lived values. Afterwards the allocator keeps the
//! freed pages, and the executable's code pages that only the parser touched (plus the kernel's
//! fault-around neighbours) stay mapped — both would count as resident memory for the life of a
//! sidecar. After each load we return free heap pages (`mi_collect`) and ask the kernel to page
//! out our own clean, file-backed image pages (`MADV_PAGEOUT`); the code the proxy keeps running
//! faults back in from the page cache at the cost of a minor fault.
//!
//! This is the only module of the proxy with `unsafe` code; each block says why it is sound.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc's `mi_option_e` (v2 and v3 alike), which
/// `libmimalloc-sys` has no constant for.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Makes mimalloc commit its arenas page by page as they are used, not up front: on Linux an
/// eagerly committed arena keeps the pages it purges resident, 10–12 MB for an idle proxy
/// instead of 7. The option is read when the first arena is reserved, which the first
/// allocation does — before `main` — so it is set from `.preinit_array`, which the loader runs
/// before every constructor of the executable, mimalloc's among them.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod early {
    // SAFETY: `.preinit_array` holds plain `extern "C" fn()` pointers the loader calls once,
    // single-threaded, before the executable's constructors; the function only stores an
    // integer in mimalloc's option table (no pointers, no allocation, no Rust runtime needed).
    #[used]
    #[unsafe(link_section = ".preinit_array")]
    static LAZY_COMMIT: extern "C" fn() = lazy_commit;

    extern "C" fn lazy_commit() {
        // SAFETY: see above; mi_option_set may be called before mimalloc is initialised.
        unsafe { libmimalloc_sys::mi_option_set(super::MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
}

/// Releases memory held only because a config was just loaded.
pub fn release_after_load() {
    trim_heap();
    #[cfg(target_os = "linux")]
    page_out_image();
}

/// Returns free heap pages to the OS (cheap enough for every xDS update).
#[allow(unsafe_code)]
pub fn trim_heap() {
    // SAFETY: mi_collect takes no pointers; it walks this thread's heap and mimalloc's own
    // arenas under their locks and may be called at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn page_out_image() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        // 55d0c3a00000-55d0c4000000 r-xp 002f1000 fd:01 1234  /path/to/weft-proxy
        let mut it = line.split_whitespace();
        let (Some(range), Some(perms)) = (it.next(), it.next()) else {
            continue;
        };
        let path = it.nth(3).unwrap_or("");
        // Only read-only (code and constants) mappings of our own executable: never writable
        // data, heap or stacks.
        if std::path::Path::new(path) != exe || perms.contains('w') {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        else {
            continue;
        };
        // SAFETY: the range is exactly one mapping of our own executable that the kernel
        // reported, read-only and file-backed; MADV_PAGEOUT only drops resident pages, which
        // the kernel re-reads from the file on the next access, so no memory we use changes.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The option must be in force before the first allocation: only the loader's pre-init
    /// call can do that, and this test binary is linked like the proxy.
    #[test]
    #[allow(unsafe_code)]
    fn arenas_commit_lazily_from_the_start() {
        // SAFETY: mi_option_get reads an integer from mimalloc's option table.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT) };
        assert_eq!(
            v, 0,
            "mimalloc's default (2: eager on Linux) is still in force"
        );
    }
}
