//! The raw C ABI of include/tidepool.h: one Rust item per C item, nothing else.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_double, c_void};

pub const TP_API_VERSION: u32 = 5;
pub const TP_MAX_SPATIAL_DIMS: usize = 3;
pub const TP_MAX_RANK: usize = 8;

pub type tp_status = i32;
pub const TP_OK: tp_status = 0;
pub const TP_ERR_INVALID_ARGUMENT: tp_status = 1;
pub const TP_ERR_NULL_POINTER: tp_status = 2;
pub const TP_ERR_DTYPE: tp_status = 3;
pub const TP_ERR_SHAPE: tp_status = 4;
pub const TP_ERR_OVERFLOW: tp_status = 5;
pub const TP_ERR_FLAGS: tp_status = 6;
pub const TP_ERR_VERSION: tp_status = 7;
pub const TP_ERR_LAYOUT: tp_status = 8;
pub const TP_ERR_NO_MEMORY: tp_status = 9;
pub const TP_ERR_INTERNAL: tp_status = 10;
pub const TP_ERR_PROTOCOL: tp_status = 11;
pub const TP_ERR_TOO_LARGE: tp_status = 12;
pub const TP_ERR_BUSY: tp_status = 13;
pub const TP_ERR_TIMEOUT: tp_status = 14;
pub const TP_ERR_CONNECTION: tp_status = 15;
pub const TP_ERR_NOT_FOUND: tp_status = 16;
pub const TP_ERR_CLOSED: tp_status = 17;
pub const TP_ERR_SYSTEM: tp_status = 18;
pub const TP_ERR_PERMISSION: tp_status = 19;

pub const TP_DTYPE_FLOAT32: i32 = 1;
pub const TP_DTYPE_FLOAT64: i32 = 2;
pub const TP_DTYPE_FLOAT16: i32 = 3;
pub const TP_DTYPE_BFLOAT16: i32 = 4;
pub const TP_DTYPE_INT8: i32 = 5;
pub const TP_DTYPE_INT16: i32 = 6;
pub const TP_DTYPE_INT32: i32 = 7;
pub const TP_DTYPE_INT64: i32 = 8;
pub const TP_DTYPE_UINT8: i32 = 9;
pub const TP_DTYPE_UINT16: i32 = 10;
pub const TP_DTYPE_UINT32: i32 = 11;
pub const TP_DTYPE_UINT64: i32 = 12;

pub const TP_POOL_AVG: i32 = 1;
pub const TP_POOL_MAX: i32 = 2;

pub const TP_POOL_CEIL_MODE: u32 = 1;
pub const TP_POOL_EXCLUDE_PADDING: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct tp_tensor {
    pub struct_size: u32,
    pub flags: u32,
    pub data: *mut c_void,
    pub dtype: i32,
    pub rank: i32,
    pub shape: [i64; TP_MAX_RANK],
    pub strides: [i64; TP_MAX_RANK],
}

pub const TP_TIES_SPLIT: i32 = 0;
pub const TP_TIES_FIRST: i32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tp_client_options {
    pub struct_size: u32,
    pub flags: u32,
    pub timeout_ms: i32,
    pub reserved: i32,
    pub curve_server_key: *const c_char,
    pub curve_client_cert: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct tp_backward_options {
    pub struct_size: u32,
    pub flags: u32,
    pub max_ties: i32,
    pub reserved: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct tp_pool_desc {
    pub struct_size: u32,
    pub flags: u32,
    pub kind: i32,
    pub spatial_dims: i32,
    pub kernel_size: [i64; TP_MAX_SPATIAL_DIMS],
    pub stride: [i64; TP_MAX_SPATIAL_DIMS],
    pub padding: [i64; TP_MAX_SPATIAL_DIMS],
}

#[repr(C)]
pub struct tp_client {
    _opaque: [u8; 0],
}

#[repr(C)]
pub struct tp_buffer {
    _opaque: [u8; 0],
}

extern "C" {
    pub fn tp_version() -> u32;
    pub fn tp_version_string() -> *const c_char;
    pub fn tp_cpu_level() -> *const c_char;
    pub fn tp_status_string(status: tp_status) -> *const c_char;
    pub fn tp_last_error() -> *const c_char;
    pub fn tp_dtype_size(dtype: i32) -> usize;
    pub fn tp_tensor_init(tensor: *mut tp_tensor, data: *mut c_void, dtype: i32, rank: i32, shape: *const i64,
                          strides: *const i64) -> tp_status;
    pub fn tp_pool_desc_init(desc: *mut tp_pool_desc, kind: i32, spatial_dims: i32, kernel_size: *const i64,
                             stride: *const i64, padding: *const i64) -> tp_status;
    pub fn tp_pool_output(desc: *const tp_pool_desc, input: *const tp_tensor, output: *mut tp_tensor) -> tp_status;
    pub fn tp_tensor_nbytes(tensor: *const tp_tensor, nbytes: *mut usize) -> tp_status;
    pub fn tp_pool(desc: *const tp_pool_desc, input: *const tp_tensor, output: *const tp_tensor) -> tp_status;
    pub fn tp_pool_backward(desc: *const tp_pool_desc, input: *const tp_tensor, grad_output: *const tp_tensor,
                            grad_input: *const tp_tensor, options: *const tp_backward_options) -> tp_status;
    pub fn tp_set_num_threads(num_threads: i32) -> tp_status;
    pub fn tp_get_num_threads() -> i32;
    pub fn tp_default_endpoint() -> *const c_char;
    pub fn tp_client_connect(endpoint: *const c_char, timeout_ms: i32, client: *mut *mut tp_client) -> tp_status;
    pub fn tp_client_connect_v2(endpoint: *const c_char, options: *const tp_client_options,
                                client: *mut *mut tp_client) -> tp_status;
    pub fn tp_client_close(client: *mut tp_client) -> tp_status;
    pub fn tp_client_ping(client: *mut tp_client, seconds: *mut c_double) -> tp_status;
    pub fn tp_client_stats(client: *mut tp_client, json: *mut c_char, capacity: usize, length: *mut usize) -> tp_status;
    pub fn tp_client_alloc(client: *mut tp_client, nbytes: usize, buffer: *mut *mut tp_buffer) -> tp_status;
    pub fn tp_buffer_data(buffer: *const tp_buffer) -> *mut c_void;
    pub fn tp_buffer_size(buffer: *const tp_buffer) -> usize;
    pub fn tp_buffer_free(buffer: *mut tp_buffer) -> tp_status;
    pub fn tp_client_pool(client: *mut tp_client, desc: *const tp_pool_desc, input: *const tp_tensor,
                          output: *const tp_tensor) -> tp_status;
    pub fn tp_client_submit(client: *mut tp_client, desc: *const tp_pool_desc, input: *const tp_tensor,
                            output: *const tp_tensor, job: *mut u64) -> tp_status;
    pub fn tp_client_wait(client: *mut tp_client, job: u64, timeout_ms: i32) -> tp_status;
    pub fn tp_client_cancel(client: *mut tp_client, job: u64) -> tp_status;
    pub fn tp_client_pool_backward(client: *mut tp_client, desc: *const tp_pool_desc, input: *const tp_tensor,
                                   grad_output: *const tp_tensor, grad_input: *const tp_tensor,
                                   options: *const tp_backward_options) -> tp_status;
    pub fn tp_client_submit_backward(client: *mut tp_client, desc: *const tp_pool_desc, input: *const tp_tensor,
                                     grad_output: *const tp_tensor, grad_input: *const tp_tensor,
                                     options: *const tp_backward_options, job: *mut u64) -> tp_status;
}
