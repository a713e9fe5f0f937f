//! Process titles: `ferricorn: master [NAME]` and `ferricorn: worker [NAME]` in `ps`, `top -c` and
//! `/proc/PID/cmdline`.
//!
//! Written by hand: the title crates on crates.io only call `prctl(PR_SET_NAME)`, which changes the
//! 15-byte thread name (`ps -o comm`) but not the command line `ps` shows, and the kernel offers no call
//! to move the command line without CAP_SYS_RESOURCE (`PR_SET_MM`). So, as BSD's `setproctitle(3)` and
//! Python's `setproctitle` do on Linux, the title is written over the memory that holds the original
//! `argv` strings, whose bounds the kernel publishes in `/proc/self/stat`. The environment strings that
//! follow them are first copied to the heap (and `environ` pointed at the copies) so the title may use
//! that space as well. The short thread name is set too, for `top` and `ps -o comm`.
//!
//! Both steps touch process-wide state without locks, so titles are set only while the process has a
//! single thread: in the master before it forks, and in a worker right after fork.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// The writable region that holds the command line, as addresses.
#[derive(Clone, Copy, Debug)]
struct Area {
    start: usize,
    /// End of the original `argv` strings: the kernel looks at the byte before it to decide how to read
    /// the command line.
    arg_end: usize,
    /// End of the region we may write (the environment strings' end when they follow `argv`).
    end: usize,
}

static AREA: OnceLock<Option<Area>> = OnceLock::new();

extern "C" {
    static mut environ: *mut *mut libc::c_char;
}

/// `arg_start arg_end env_start env_end` from `/proc/self/stat` (fields 48 to 51, Linux 3.5+).
fn stat_bounds() -> Option<[usize; 4]> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field n (1-based) is at index n - 3 here.
    let get = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
    Some([get(48)?, get(49)?, get(50)?, get(51)?])
}

/// Find the region and free the environment part of it. Runs once; workers inherit the result.
fn prepare() -> Option<Area> {
    let [arg_start, arg_end, env_start, env_end] = stat_bounds()?;
    if arg_start == 0 || arg_end <= arg_start {
        return None;
    }
    // The kernel lets the command line run on into the environment only when it directly follows.
    let mut end = arg_end;
    if env_start == arg_end && env_end > env_start {
        // SAFETY: single-threaded (see the module note). `environ` is the C library's NULL-terminated
        // array; each entry that points into the original environment block is replaced by a leaked
        // heap copy of the same string, so nothing reading the environment later looks at the memory
        // we are about to overwrite.
        unsafe {
            let env = std::ptr::addr_of!(environ).read();
            if !env.is_null() {
                let mut i = 0;
                loop {
                    let entry = *env.add(i);
                    if entry.is_null() {
                        break;
                    }
                    let addr = entry as usize;
                    if (env_start..env_end).contains(&addr) {
                        let copy: CString = CStr::from_ptr(entry).to_owned();
                        *env.add(i) = copy.into_raw();
                    }
                    i += 1;
                }
            }
        }
        end = env_end;
    }
    Some(Area {
        start: arg_start,
        arg_end,
        end,
    })
}

/// Show `title` as this process's command line, truncated to the space there is, and a short form of
/// `comm` as its thread name.
pub fn set(title: &str, comm: &str) {
    set_comm(comm);
    let Some(area) = *AREA.get_or_init(prepare) else {
        return;
    };
    let bytes: Vec<u8> = title.bytes().filter(|b| *b != 0).collect();
    let len = area.end - area.start;
    let n = bytes.len().min(len - 1);
    let arg_len = area.arg_end - area.start;
    // SAFETY: [start, end) is this process's own argv/environment block (from /proc/self/stat), mapped
    // writable on the initial stack, and nothing refers to its contents any more (see `prepare`). We
    // write at most `len` bytes from `start`.
    unsafe {
        let base = area.start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), base, n);
        std::ptr::write_bytes(base.add(n), 0, len - n);
        // A title shorter than the original arguments leaves NULs up to `arg_end`, and the kernel would
        // show all of them (`ps` prints them as trailing spaces). A non-NUL last byte makes it read the
        // title only, up to its terminating NUL.
        if n + 1 < arg_len {
            *base.add(arg_len - 1) = b'.';
        }
    }
}

fn set_comm(comm: &str) {
    // The kernel keeps 15 bytes and a NUL.
    let short: Vec<u8> = comm.bytes().filter(|b| *b != 0).take(15).collect();
    if let Ok(name) = CString::new(short) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
    }
}

/// The title of the current process as `ps` shows it (for tests).
#[cfg(test)]
fn current() -> String {
    let raw = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_read() {
        let [a, b, c, d] = stat_bounds().expect("Linux 3.5+");
        assert!(a > 0 && a < b && b <= c && c <= d);
    }

    /// Runs in a child process: the test harness runs tests in threads, and the title is per process.
    #[test]
    fn title_shows_in_cmdline() {
        // SAFETY: the child only sets the title and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            set("ferricorn: master [unit]", "ferricorn");
            let ok = current() == "ferricorn: master [unit]"
                // SAFETY: getenv reads the environment array the title code rewired.
                && !unsafe { libc::getenv(c"PATH".as_ptr()) }.is_null()
                && std::fs::read_to_string("/proc/self/comm").unwrap_or_default() == "ferricorn\n";
            // SAFETY: leave the child without running the harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
