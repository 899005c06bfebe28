//! `cairn`: the command-line client. Everything it prints lives in
//! [`cli`]; the library (`cairn_client`) holds the engines.

mod cli;

fn main() -> std::process::ExitCode {
    tune_malloc();
    cli::main()
}

/// Two glibc tunables, each unless the environment sets it.
///
/// Arenas: glibc gives threads that allocate at once arenas of their own,
/// up to eight per core, and keeps what is freed in each arena for that
/// arena: with chunks compressed on one thread and freed on another, a
/// backup's resident memory grew by the chunks each arena had once held. One
/// arena per core is the measured best (`docs/BENCHMARKS.md`, "Memory"):
/// 14 MB less for a first backup of a kernel tree and 50 MB less for its
/// restore, at the same speed (`MALLOC_ARENA_MAX`).
///
/// Mapping threshold: glibc maps a large block on its own and unmaps it when
/// freed, but after the first such free it raises the threshold to that
/// block's size, and later blocks of the size stay in an arena when freed.
/// A fixed threshold just above the largest chunk keeps chunks (and
/// everything smaller) in the arenas, where they are reused, and keeps the
/// stream segments (twice the largest chunk) mapped, so that the memory of
/// a large file's segments goes back to the system when its stream ends
/// (`SegmentPool`): 7–14 MB less for a first backup of a kernel tree
/// (`MALLOC_MMAP_THRESHOLD_`).
///
/// The one `unsafe` of the client: glibc's tunables have no safe wrapper.
#[allow(unsafe_code)]
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use cairn_chunk_store::chunker::ChunkerParams;
        const MMAP_THRESHOLD: u32 = ChunkerParams::DEFAULT.max + (1 << 20);
        let unset = |name: &str| std::env::var_os(name).is_none();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` only sets a tunable of the allocator; it is
        // called before this process starts a second thread.
        unsafe {
            if unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, arenas);
            }
            if unset("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            }
        }
    }
}
