//! Tidepool from Rust: MLX-exact channels-last average and max pooling (1-d to 3-d) through
//! libtidepool's C ABI, in-process or on a `tidepoold` daemon.
//!
//! ```no_run
//! use tidepool::{Pool, PoolKind};
//! let pool = Pool::new(PoolKind::Avg, &[2, 2], None, &[0, 0]).unwrap();   // AvgPool2d(2)
//! let x = vec![1.0f32; 1 * 4 * 4 * 3];                                     // (N, H, W, C)
//! let (y, shape) = pool.avg(&x, &[1, 4, 4, 3]).unwrap();
//! assert_eq!(shape, vec![1, 2, 2, 3]);
//! assert!(y.iter().all(|&v| v == 1.0));
//! ```
//!
//! [`sys`] is the raw C ABI, item for item; everything else is a safe layer over it: slices in,
//! owned (`Vec`) or borrowed (`&mut [T]`) output, and `Result`s whose [`Error`] carries the
//! library's status and `tp_last_error()`'s message.

pub mod sys;

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::c_void;
use std::ptr;

/// A failed call: the `tp_status` and the library's message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: sys::tp_status,
    pub message: String,
}

impl Error {
    /// The status's name, e.g. "TP_ERR_SHAPE".
    pub fn status_name(&self) -> String {
        unsafe { c_text(sys::tp_status_string(self.status)) }
    }

    fn last(status: sys::tp_status) -> Error {
        Error { status, message: unsafe { c_text(sys::tp_last_error()) } }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status_name())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

unsafe fn c_text(text: *const std::os::raw::c_char) -> String {
    if text.is_null() {
        String::new()
    } else {
        CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}

/// Turns a status into a `Result`, reading the message on this thread right after the call.
fn check(status: sys::tp_status) -> Result<()> {
    if status == sys::TP_OK {
        Ok(())
    } else {
        Err(Error::last(status))
    }
}

fn invalid(message: String) -> Error {
    Error { status: sys::TP_ERR_INVALID_ARGUMENT, message }
}

/// An element type of the engine. Averages of integers are float32 (`Avg`), as in MLX.
pub trait Element: Copy + Default + 'static {
    const DTYPE: i32;
    /// The element type of an average of this type.
    type Avg: Element;
}

macro_rules! element {
    ($($t:ty => $code:ident, $avg:ty;)*) => {$(
        impl Element for $t {
            const DTYPE: i32 = sys::$code;
            type Avg = $avg;
        }
    )*};
}

element! {
    f32 => TP_DTYPE_FLOAT32, f32;
    f64 => TP_DTYPE_FLOAT64, f64;
    i8 => TP_DTYPE_INT8, f32;
    i16 => TP_DTYPE_INT16, f32;
    i32 => TP_DTYPE_INT32, f32;
    i64 => TP_DTYPE_INT64, f32;
    u8 => TP_DTYPE_UINT8, f32;
    u16 => TP_DTYPE_UINT16, f32;
    u32 => TP_DTYPE_UINT32, f32;
    u64 => TP_DTYPE_UINT64, f32;
}

/// How max pooling's gradient shares a window's cotangent among equal maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ties {
    /// MLX's rule: split evenly among all of them (NaN windows give NaN).
    Split,
    /// PyTorch's rule: all of it to the first in scan order.
    First,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Avg,
    Max,
}

/// A pooling layer (MLX's `AvgPool1d` ... `MaxPool3d`): one entry per spatial axis, in the order
/// (depth, height, width), checked once here.
#[derive(Clone, Copy)]
pub struct Pool {
    desc: sys::tp_pool_desc,
}

/// A contiguous channels-last tensor of `T` described for the C ABI; `data` is borrowed.
fn tensor<T: Element>(data: *const T, dtype: i32, shape: &[usize]) -> Result<sys::tp_tensor> {
    if shape.len() > sys::TP_MAX_RANK {
        return Err(invalid(format!("a tensor has at most {} axes, not {}", sys::TP_MAX_RANK, shape.len())));
    }
    let mut dims = [0i64; sys::TP_MAX_RANK];
    for (d, &n) in dims.iter_mut().zip(shape) {
        *d = i64::try_from(n).map_err(|_| invalid(format!("shape {shape:?} has an axis past 2^63")))?;
    }
    let mut t = std::mem::MaybeUninit::<sys::tp_tensor>::uninit();
    check(unsafe {
        sys::tp_tensor_init(t.as_mut_ptr(), data as *mut c_void, dtype, shape.len() as i32, dims.as_ptr(), ptr::null())
    })?;
    Ok(unsafe { t.assume_init() })
}

fn elements(shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| invalid(format!("shape {shape:?} overflows")))
}

impl Pool {
    /// `stride` defaults to the kernel size. Errors name the argument at fault.
    pub fn new(kind: PoolKind, kernel_size: &[i64], stride: Option<&[i64]>, padding: &[i64]) -> Result<Pool> {
        let dims = kernel_size.len();
        if stride.map_or(false, |s| s.len() != dims) || padding.len() != dims {
            return Err(invalid(format!(
                "kernel_size, stride and padding must have one entry per spatial axis ({dims})"
            )));
        }
        let kind = match kind {
            PoolKind::Avg => sys::TP_POOL_AVG,
            PoolKind::Max => sys::TP_POOL_MAX,
        };
        let mut desc = std::mem::MaybeUninit::<sys::tp_pool_desc>::uninit();
        check(unsafe {
            sys::tp_pool_desc_init(desc.as_mut_ptr(), kind, dims as i32, kernel_size.as_ptr(),
                                   stride.map_or(ptr::null(), |s| s.as_ptr()), padding.as_ptr())
        })?;
        Ok(Pool { desc: unsafe { desc.assume_init() } })
    }

    /// PyTorch's `ceil_mode` (`TP_POOL_CEIL_MODE`): output lengths rounded up, keeping a last
    /// window that reaches past the padding when it starts inside the input or its left padding.
    /// Off by default (MLX's floor rule). Needs a library of 0.3.0 or later (an older one refuses
    /// it with `TP_ERR_FLAGS`).
    pub fn ceil_mode(mut self, on: bool) -> Pool {
        self.desc.flags = if on { self.desc.flags | sys::TP_POOL_CEIL_MODE } else { self.desc.flags & !sys::TP_POOL_CEIL_MODE };
        self
    }

    /// PyTorch's `count_include_pad` for averages: `true` (the default, MLX's rule) divides a
    /// window's sum by its positions inside the padded input, `false` (`TP_POOL_EXCLUDE_PADDING`)
    /// by those inside the input. `false` with max pooling is refused when the pooling runs.
    pub fn count_include_pad(mut self, on: bool) -> Pool {
        let bit = sys::TP_POOL_EXCLUDE_PADDING;
        self.desc.flags = if on { self.desc.flags & !bit } else { self.desc.flags | bit };
        self
    }

    pub fn kind(&self) -> PoolKind {
        if self.desc.kind == sys::TP_POOL_AVG { PoolKind::Avg } else { PoolKind::Max }
    }

    /// The output's shape for a channels-last input of `shape` (batch first).
    pub fn output_shape<T: Element>(&self, shape: &[usize]) -> Result<Vec<usize>> {
        let input = tensor(ptr::null::<T>(), T::DTYPE, shape)?;
        let mut output = std::mem::MaybeUninit::<sys::tp_tensor>::uninit();
        check(unsafe { sys::tp_pool_output(&self.desc, &input, output.as_mut_ptr()) })?;
        let output = unsafe { output.assume_init() };
        Ok(output.shape[..output.rank as usize].iter().map(|&n| n as usize).collect())
    }

    /// Pools `x` (of `shape`) into `out`, whose length must be the output's element count and
    /// whose type the output's dtype (`T::Avg` for averages, `T` for max). Returns the output
    /// shape. Nothing is written on error.
    pub fn run_into<T: Element, O: Element>(&self, x: &[T], shape: &[usize], out: &mut [O]) -> Result<Vec<usize>> {
        let (input, output, out_shape) = self.tensors(x, shape, out)?;
        check(unsafe { sys::tp_pool(&self.desc, &input, &output) })?;
        Ok(out_shape)
    }

    fn tensors<T: Element, O: Element>(&self, x: &[T], shape: &[usize], out: &mut [O])
        -> Result<(sys::tp_tensor, sys::tp_tensor, Vec<usize>)> {
        if elements(shape)? != x.len() {
            return Err(invalid(format!("input has {} elements but shape {shape:?} holds {}", x.len(), elements(shape)?)));
        }
        let out_shape = self.output_shape::<T>(shape)?;
        if elements(&out_shape)? != out.len() {
            return Err(invalid(format!("out has {} elements but the output {out_shape:?} holds {}", out.len(),
                                       elements(&out_shape)?)));
        }
        let input = tensor(x.as_ptr(), T::DTYPE, shape)?;
        let output = tensor(out.as_mut_ptr() as *const O, O::DTYPE, &out_shape)?;
        Ok((input, output, out_shape))
    }

    /// Average pooling of `x` into a new `Vec` (float32 for integer inputs), with its shape.
    pub fn avg<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<(Vec<T::Avg>, Vec<usize>)> {
        self.expect(PoolKind::Avg)?;
        let mut out = vec![T::Avg::default(); elements(&self.output_shape::<T>(shape)?)?];
        let out_shape = self.run_into(x, shape, &mut out)?;
        Ok((out, out_shape))
    }

    /// Max pooling of `x` into a new `Vec` of the same type, with its shape.
    pub fn max<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<(Vec<T>, Vec<usize>)> {
        self.expect(PoolKind::Max)?;
        let mut out = vec![T::default(); elements(&self.output_shape::<T>(shape)?)?];
        let out_shape = self.run_into(x, shape, &mut out)?;
        Ok((out, out_shape))
    }

    /// The gradient with respect to `x` (of `shape`, floating point) of this pooling, for the
    /// cotangent `grad_output` (the output's shape and `x`'s type), as MLX differentiates it;
    /// `ties` chooses max's rule for equal maxima. A new `Vec` of `x`'s shape.
    pub fn backward<T: Element>(&self, x: &[T], shape: &[usize], grad_output: &[T], ties: Ties) -> Result<Vec<T>> {
        self.run_backward(x, shape, grad_output, ties, |input, cotangent, gradient, options| unsafe {
            sys::tp_pool_backward(&self.desc, input, cotangent, gradient, options)
        })
    }

    /// Checks the slices against `shape`, makes the gradient and calls `run` with the C
    /// structs (the in-process call or the daemon's).
    fn run_backward<T: Element>(&self, x: &[T], shape: &[usize], grad_output: &[T], ties: Ties,
                                run: impl FnOnce(&sys::tp_tensor, &sys::tp_tensor, &sys::tp_tensor,
                                                 &sys::tp_backward_options) -> sys::tp_status)
        -> Result<Vec<T>> {
        if elements(shape)? != x.len() {
            return Err(invalid(format!("input has {} elements but shape {shape:?} holds {}", x.len(), elements(shape)?)));
        }
        let out_shape = self.output_shape::<T>(shape)?;
        if elements(&out_shape)? != grad_output.len() {
            return Err(invalid(format!("grad_output has {} elements but the output {out_shape:?} holds {}",
                                       grad_output.len(), elements(&out_shape)?)));
        }
        let mut gradient = vec![T::default(); x.len()];
        let input = tensor(x.as_ptr(), T::DTYPE, shape)?;
        let cotangent = tensor(grad_output.as_ptr(), T::DTYPE, &out_shape)?;
        let grad_input = tensor(gradient.as_mut_ptr() as *const T, T::DTYPE, shape)?;
        let options = sys::tp_backward_options {
            struct_size: std::mem::size_of::<sys::tp_backward_options>() as u32,
            max_ties: match ties {
                Ties::Split => sys::TP_TIES_SPLIT,
                Ties::First => sys::TP_TIES_FIRST,
            },
            ..Default::default()
        };
        check(run(&input, &cotangent, &grad_input, &options))?;
        Ok(gradient)
    }

    fn expect(&self, kind: PoolKind) -> Result<()> {
        if self.kind() == kind {
            Ok(())
        } else {
            Err(invalid(format!("this layer is {:?} pooling, not {kind:?}", self.kind())))
        }
    }
}

/// Engine threads for later in-process calls, process-wide; 0 means one per CPU.
pub fn set_num_threads(threads: i32) -> Result<()> {
    check(unsafe { sys::tp_set_num_threads(threads) })
}

/// The library's version, e.g. "0.2.0".
pub fn version() -> String {
    unsafe { c_text(sys::tp_version_string()) }
}

/// The CPU level whose kernels run in this process: "x86-64" or "x86-64-v3" (AVX2); the best
/// this CPU runs unless `TIDEPOOL_CPU` names another.
pub fn cpu_level() -> String {
    unsafe { c_text(sys::tp_cpu_level()) }
}

/// The endpoint a client uses by default ($TIDEPOOL_ENDPOINT, else the per-user ipc socket).
pub fn default_endpoint() -> String {
    unsafe { c_text(sys::tp_default_endpoint()) }
}

/// A connection to a `tidepoold`; closed when dropped. Jobs from slices travel inline.
pub struct Client {
    handle: *mut sys::tp_client,
}

// The C ABI serialises calls on one client.
unsafe impl Send for Client {}
unsafe impl Sync for Client {}

impl Client {
    /// Connects to `endpoint` (None: `default_endpoint()`) and pings it; `timeout_ms` bounds
    /// this and every later call (-1: no limit).
    pub fn connect(endpoint: Option<&str>, timeout_ms: i32) -> Result<Client> {
        let endpoint = CString::new(endpoint.map(str::to_owned).unwrap_or_else(default_endpoint))
            .map_err(|_| invalid("the endpoint holds a NUL byte".to_owned()))?;
        let mut handle = ptr::null_mut();
        check(unsafe { sys::tp_client_connect(endpoint.as_ptr(), timeout_ms, &mut handle) })?;
        Ok(Client { handle })
    }

    /// Connects to a tcp endpoint served with CurveZMQ (docs/protocol.md): `server_key` is
    /// the daemon's public key (40 Z85 characters, or the path of its NAME.key certificate),
    /// `client_cert` the path of this client's secret certificate (NAME.key_secret, mode 0600).
    /// `connect` takes them from $TIDEPOOL_CURVE_SERVER_KEY and $TIDEPOOL_CURVE_CLIENT_CERT.
    /// A daemon that refuses this client's key fails with TP_ERR_CONNECTION saying so.
    pub fn connect_curve(endpoint: &str, timeout_ms: i32, server_key: &str, client_cert: &str) -> Result<Client> {
        let text = |value: &str, name: &str| CString::new(value).map_err(|_| invalid(format!("{name} holds a NUL byte")));
        let endpoint = text(endpoint, "the endpoint")?;
        let server_key = text(server_key, "server_key")?;
        let client_cert = text(client_cert, "client_cert")?;
        let options = sys::tp_client_options {
            struct_size: std::mem::size_of::<sys::tp_client_options>() as u32,
            flags: 0,
            timeout_ms,
            reserved: 0,
            curve_server_key: server_key.as_ptr(),
            curve_client_cert: client_cert.as_ptr(),
        };
        let mut handle = ptr::null_mut();
        check(unsafe { sys::tp_client_connect_v2(endpoint.as_ptr(), &options, &mut handle) })?;
        Ok(Client { handle })
    }

    /// The round trip of a ping, in seconds.
    pub fn ping(&self) -> Result<f64> {
        let mut seconds = 0.0;
        check(unsafe { sys::tp_client_ping(self.handle, &mut seconds) })?;
        Ok(seconds)
    }

    /// The daemon's counters, as JSON.
    pub fn stats(&self) -> Result<String> {
        let mut length = 0usize;
        check(unsafe { sys::tp_client_stats(self.handle, ptr::null_mut(), 0, &mut length) })?;
        let mut text = vec![0u8; length + 256];
        check(unsafe { sys::tp_client_stats(self.handle, text.as_mut_ptr().cast(), text.len(), &mut length) })?;
        text.truncate(length);
        String::from_utf8(text).map_err(|_| invalid("the daemon's counters are not UTF-8".to_owned()))
    }

    /// `Pool::run_into` on the daemon.
    pub fn run_into<T: Element, O: Element>(&self, pool: &Pool, x: &[T], shape: &[usize], out: &mut [O])
        -> Result<Vec<usize>> {
        let (input, output, out_shape) = pool.tensors(x, shape, out)?;
        check(unsafe { sys::tp_client_pool(self.handle, &pool.desc, &input, &output) })?;
        Ok(out_shape)
    }

    /// `Pool::backward` on the daemon.
    pub fn backward<T: Element>(&self, pool: &Pool, x: &[T], shape: &[usize], grad_output: &[T], ties: Ties)
        -> Result<Vec<T>> {
        pool.run_backward(x, shape, grad_output, ties, |input, cotangent, gradient, options| unsafe {
            sys::tp_client_pool_backward(self.handle, &pool.desc, input, cotangent, gradient, options)
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        unsafe { sys::tp_client_close(self.handle) };
    }
}
