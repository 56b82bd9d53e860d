// swift-tools-version:6.1
import PackageDescription

/// Absolute, because the linker does not run in the package directory.
let packageRoot = String(#filePath.dropLast("/Package.swift".count))

let kernelDependencies: [Target.Dependency] = ["CTidepool", "CTidepoolStream", "CTidepoolVector", "TidepoolSync", "TidepoolTypes"]

/// x86-64-v3 as the Swift compiler names a CPU with exactly its features (AVX2, FMA, F16C,
/// BMI1/2, LZCNT, MOVBE; the rest of Haswell's, AES or RDRAND, are never emitted from plain
/// code). Elsewhere the AVX2 build is the baseline again and is never chosen.
#if arch(x86_64)
let avx2Settings: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]
#else
let avx2Settings: [SwiftSetting] = []
#endif

let package = Package(
    name: "Tidepool",
    products: [
        // libtidepool.so: the stable C ABI declared in include/tidepool.h.
        .library(name: "tidepool", type: .dynamic, targets: ["Tidepool"]),
        .library(name: "TidepoolCore", targets: ["TidepoolCore"]),
        // For the fuzz targets (fuzz/Package.swift), which build these with libFuzzer.
        .library(name: "TidepoolFuzzing", targets: ["TidepoolCABI", "TidepoolServer", "TidepoolProtocol", "TidepoolCore",
                                                    "TidepoolZMQ", "TidepoolSharedMemory"]),
        .executable(name: "tidepoold", targets: ["tidepoold"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // The C ABI header as a Swift module: the one definition of every C-visible type.
        .systemLibrary(name: "CTidepool", path: "include"),
        // libzmq's C API, loaded with dlopen on first use: in-process pooling needs no ZeroMQ.
        // zmq.h (Debian's libzmq3-dev) gives the types and constants; libzmq.so.5 (libzmq5) is
        // needed only where a client or the daemon runs.
        .target(name: "CZeroMQ", linkerSettings: [.linkedLibrary("dl")]),
        // C shims: pidfd_open, eventfd, futex words, the SIGBUS guard for client mappings, and
        // sd_notify's protocol for systemd readiness.
        .target(name: "CTidepoolSystem"),

        // Streaming (non-temporal) copies for large outputs.
        .target(name: "CTidepoolStream"),
        // C vector kernels, chosen at run time: AVX-512 for the last step of 16-bit float
        // averages, AVX2 transposes for rows split into phases and byte maxima of many channels.
        .target(name: "CTidepoolVector"),
        // The one lock type (a pthread mutex, which ThreadSanitizer understands), the one
        // clock (CLOCK_MONOTONIC) of the daemon and the client, and the kernels' worker threads.
        .target(name: "TidepoolSync", dependencies: ["CTidepoolSystem"]),
        // The values every layer shares: dtypes, descriptors, tensor views, errors, the checked
        // geometry, and what passes between TidepoolCore and a build of the kernels.
        .target(name: "TidepoolTypes", dependencies: ["CTidepool"]),
        // The kernels, built for every x86-64 CPU; TidepoolKernelsAVX2 builds the same sources
        // (Shared/ is a link) for x86-64-v3. TidepoolCore picks one at run time, so the library
        // never assumes the CPU it was built on.
        .target(name: "TidepoolKernels", dependencies: kernelDependencies),
        .target(name: "TidepoolKernelsAVX2", dependencies: kernelDependencies, swiftSettings: avx2Settings),
        // Pure compute: validation, threads, the kernels' selection. No I/O, no sockets, no C ABI.
        .target(name: "TidepoolCore", dependencies: ["CTidepool", "CTidepoolVector", "TidepoolTypes", "TidepoolKernels",
                                                     "TidepoolKernelsAVX2"]),
        // Which endpoint to use, and whether an ipc endpoint's directory can be trusted.
        .target(name: "TidepoolEndpoint"),
        // Thin wrapper of libzmq: context, sockets, frames, poll, and typed socket types,
        // options and events, so no target above it imports CZeroMQ.
        .target(name: "TidepoolZMQ", dependencies: ["CZeroMQ"]),
        // POSIX shared memory: create (0600, O_EXCL), map, unlink, guard.
        .target(name: "TidepoolSharedMemory", dependencies: ["CTidepoolSystem"]),
        // The wire format: bytes to checked values and back (no sockets).
        .target(name: "TidepoolProtocol", dependencies: ["CTidepool", "TidepoolCore"]),
        // The daemon's logic: socket loop, jobs, regions, stats.
        .target(
            name: "TidepoolServer",
            dependencies: [
                "CTidepool", "CTidepoolSystem", "TidepoolCore", "TidepoolZMQ", "TidepoolSharedMemory",
                "TidepoolProtocol", "TidepoolEndpoint", "TidepoolSync", .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The client's logic: connect, shared buffers, submit/wait, timeouts.
        .target(
            name: "TidepoolClient",
            dependencies: ["CTidepool", "CTidepoolSystem", "TidepoolCore", "TidepoolZMQ", "TidepoolSharedMemory",
                           "TidepoolProtocol", "TidepoolEndpoint", "TidepoolSync"]
        ),
        // The @_cdecl functions of include/tidepool.h: each checks its pointers and fields,
        // then calls TidepoolCore or TidepoolClient.
        .target(
            name: "TidepoolCABI",
            dependencies: ["CTidepool", "TidepoolCore", "TidepoolClient", "TidepoolProtocol", "TidepoolEndpoint", "TidepoolSync"]
        ),
        // @_cdecl exports only. The Swift runtime is linked in statically so the library
        // loads into plain C and Python hosts; its SONAME is libtidepool.so.0 (the C ABI's major
        // version, see `make install`); nodelete keeps it mapped after dlclose(), since
        // thread-exit destructors and the runtime's state point into it. The version script
        // exports the tp_ functions of tidepool.h and nothing else.
        .target(
            name: "Tidepool",
            dependencies: ["TidepoolCABI"],
            linkerSettings: [
                .unsafeFlags([
                    "-static-stdlib", "-Xlinker", "-z", "-Xlinker", "nodelete", "-Xlinker", "-soname=libtidepool.so.0",
                    "-Xlinker", "--version-script=\(packageRoot)/include/tidepool.map",
                ])
            ]
        ),
        .executableTarget(
            name: "tidepoold",
            dependencies: [
                "CTidepoolSystem", "TidepoolServer", "TidepoolCore", "TidepoolEndpoint", "TidepoolSync", "TidepoolZMQ",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "TidepoolCoreTests", dependencies: ["TidepoolCore", "TidepoolKernels", "TidepoolKernelsAVX2", "TidepoolTypes", "TidepoolSync", "CTidepool",
                                                            "CTidepoolVector"]),
        .testTarget(name: "TidepoolProtocolTests", dependencies: ["TidepoolProtocol", "TidepoolCore", "CTidepool"]),
        .testTarget(
            name: "TidepoolServerTests",
            dependencies: ["TidepoolServer", "TidepoolClient", "TidepoolSharedMemory", "TidepoolProtocol", "TidepoolCore",
                           "TidepoolEndpoint", "TidepoolZMQ", "TidepoolSync", "CTidepool", .product(name: "Logging", package: "swift-log")]
        ),
    ],
    swiftLanguageModes: [.v5]
)
