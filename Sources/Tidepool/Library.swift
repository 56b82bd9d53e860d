// libtidepool.so: the C ABI of include/tidepool.h. Every exported function lives in
// TidepoolCABI (linked in whole); this target only carries the shared library's link
// settings (static Swift runtime, version script, nodelete), which a fuzzer or test
// linking TidepoolCABI must not inherit.
@_exported import TidepoolCABI
