//! Python stacks written straight to a file descriptor without taking the GIL — the same routine
//! `faulthandler` uses — so a worker whose app thread is stuck (in C code, in a loop that swallows
//! exceptions, holding the GIL) can still show where it is.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

extern "C" {
    // CPython's own signal-safe dumper (exported by libpython; used by faulthandler). With a null
    // interpreter and thread state it finds the main interpreter itself.
    fn _Py_DumpTraceback(fd: libc::c_int, tstate: *mut libc::c_void);
    fn _Py_DumpTracebackThreads(
        fd: libc::c_int,
        interp: *mut libc::c_void,
        current_tstate: *mut libc::c_void,
    ) -> *const libc::c_char;
}

/// Write the stack of every Python thread of this process to `fd`.
pub fn dump_all_threads(fd: RawFd) {
    // SAFETY: the dumper only reads interpreter structures and writes to `fd`; it is designed to run
    // without the GIL, from a signal handler, while other threads keep running.
    let err = unsafe { _Py_DumpTracebackThreads(fd, std::ptr::null_mut(), std::ptr::null_mut()) };
    if !err.is_null() {
        // SAFETY: on failure CPython returns a static NUL-terminated message.
        let msg = unsafe { std::ffi::CStr::from_ptr(err) };
        let line = format!("(stack dump unavailable: {})\n", msg.to_string_lossy());
        // SAFETY: plain write to an fd we were handed.
        unsafe { libc::write(fd, line.as_ptr() as *const libc::c_void, line.len()) };
    }
}

/// Write the stack of one Python thread, given its thread state, to `fd` (without the GIL).
pub(crate) fn dump_thread(fd: RawFd, tstate: *mut libc::c_void) {
    if tstate.is_null() {
        dump_all_threads(fd);
        return;
    }
    // SAFETY: `tstate` belongs to a thread of this process that is still alive (app threads never exit
    // while the worker runs); the dumper only reads its frames, as faulthandler does.
    unsafe { _Py_DumpTraceback(fd, tstate) };
}

/// The stack of one Python thread as text, for a log record written in one piece: several workers
/// dumping at once (a graceful stop cutting requests off everywhere) would otherwise interleave their
/// frames line by line. Not for a signal handler (it allocates). None if no scratch file can be made.
pub(crate) fn thread_stack(tstate: *mut libc::c_void) -> Option<Vec<u8>> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"ferricorn-stack".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just created and is owned by nothing else; the File closes it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    dump_thread(file.as_raw_fd(), tstate);
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_end(&mut text).ok()?;
    Some(text)
}
