//! `cairn`: the command-line client. Everything it prints lives in
//! [`cli`]; the library (`cairn_client`) holds the engines.

mod cli;

fn main() -> std::process::ExitCode {
    cap_malloc_arenas();
    cli::main()
}

/// glibc gives threads that allocate at once arenas of their own, up to
/// eight per core, and keeps what is freed in each arena for that arena:
/// with chunks compressed on one thread and freed on another, a backup's
/// resident memory grew by the chunks each arena had once held. One arena
/// per core is the measured best (`docs/BENCHMARKS.md`, "Memory"): 14 MB
/// less for a first backup of a kernel tree and 50 MB less for its restore,
/// at the same speed. `MALLOC_ARENA_MAX` in the environment still decides.
/// The one `unsafe` of the client: glibc's tunable has no safe wrapper.
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` only sets a tunable of the allocator; it is
        // called before this process starts a second thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
