//! Hands memory that only config loading needed back to the operating system.
//!
//! Parsing a bootstrap builds a protobuf descriptor pool, decodes through a large body of
//! generated code, and allocates many short-lived values. Afterwards glibc keeps the freed heap
//! pages in its arenas, and the executable's code pages that only the parser touched (plus the
//! kernel's fault-around neighbours) stay mapped — both would count as resident memory for the
//! life of a sidecar. After each load we return free heap pages (`malloc_trim`) and ask the
//! kernel to page out our own clean, file-backed image pages (`MADV_PAGEOUT`); the code the proxy
//! keeps running faults back in from the page cache at the cost of a minor fault.
//!
//! This is the only module of the proxy with `unsafe` code; each block says why it is sound.

/// Releases memory held only because a config was just loaded (Linux with glibc; a no-op
/// elsewhere).
pub fn release_after_load() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        trim_heap_glibc();
        page_out_image();
    }
}

/// Returns free heap pages to the OS (cheap enough for every xDS update).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    trim_heap_glibc();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap_glibc() {
    // SAFETY: malloc_trim takes no pointers from us, only walks glibc's own arenas under their
    // locks, and may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
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
