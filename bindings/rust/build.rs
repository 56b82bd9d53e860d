//! Links libtidepool.so: from $TIDEPOOL_LIB_DIR, else this checkout's .build/release (where
//! `make build` leaves it), else the system's search path (`make install`). The directory is
//! also the run-time path of the crate's tests and examples.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=TIDEPOOL_LIB_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let directory = std::env::var_os("TIDEPOOL_LIB_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let checkout = manifest.join("../../.build/release");
            checkout.join("libtidepool.so").exists().then_some(checkout)
        });
    if let Some(directory) = directory {
        let directory = directory.canonicalize().unwrap_or(directory);
        println!("cargo:rustc-link-search=native={}", directory.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", directory.display());
    }
    println!("cargo:rustc-link-lib=dylib=tidepool");
}
