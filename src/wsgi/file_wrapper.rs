//! `wsgi.file_wrapper`: wraps a file-like object. Iterating it reads blocks (the portable path); when the
//! app returns it and the object has a real file descriptor, the body is sent with sendfile(2) instead and
//! never passes through Python.

use pyo3::prelude::*;

#[pyclass(module = "ferricorn")]
pub struct FileWrapper {
    #[pyo3(get)]
    pub filelike: Py<PyAny>,
    #[pyo3(get)]
    pub blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        let empty = data.len().map(|n| n == 0).unwrap_or(true);
        Ok(if empty { None } else { Some(data) })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

/// The open file behind a wrapper, positioned where the app left it: (a dup of the fd, offset, bytes left).
/// None when the object has no usable descriptor (a BytesIO, a socket file...).
pub fn sendfile_source(py: Python<'_>, wrapper: &FileWrapper) -> Option<(std::fs::File, u64, u64)> {
    let f = wrapper.filelike.bind(py);
    let fd: i32 = f.call_method0("fileno").ok()?.extract().ok()?;
    let offset: u64 = match f.call_method0("tell") {
        Ok(pos) => pos.extract().ok()?,
        Err(_) => 0,
    };
    // SAFETY: fstat only reads the descriptor's metadata.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFREG {
        return None;
    }
    let size = st.st_size as u64;
    // A duplicate keeps the file open for the I/O thread even if the app closes its object meanwhile.
    // SAFETY: dup of a descriptor the app holds open; the new fd is owned by the File.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return None;
    }
    use std::os::fd::FromRawFd;
    // SAFETY: `dup` is a fresh descriptor owned by nobody else.
    let file = unsafe { std::fs::File::from_raw_fd(dup) };
    Some((file, offset, size.saturating_sub(offset)))
}
