// swift-tools-version:6.1
import PackageDescription

/// Absolute, because the linker does not run in the package directory.
let packageRoot = String(#filePath.dropLast("/Package.swift".count))

let package = Package(
    name: "Tidepool",
    products: [
        // libtidepool.so: the stable C ABI declared in include/tidepool.h.
        .library(name: "tidepool", type: .dynamic, targets: ["Tidepool"]),
        .library(name: "TidepoolCore", targets: ["TidepoolCore"]),
    ],
    targets: [
        // The C ABI header as a Swift module: the one definition of every C-visible type.
        .systemLibrary(name: "CTidepool", path: "include"),
        // Pure compute: dtypes, shapes, validation, kernels. No I/O, no sockets, no C ABI.
        .target(name: "TidepoolCore", dependencies: ["CTidepool"]),
        // @_cdecl exports only. The Swift runtime is linked in statically so the library
        // loads into plain C and Python hosts; nodelete keeps it mapped after dlclose(), since
        // thread-exit destructors and the runtime's state point into it. The version script
        // exports the tp_ functions of tidepool.h and nothing else.
        .target(
            name: "Tidepool",
            dependencies: ["CTidepool", "TidepoolCore"],
            linkerSettings: [
                .unsafeFlags([
                    "-static-stdlib", "-Xlinker", "-z", "-Xlinker", "nodelete",
                    "-Xlinker", "--version-script=\(packageRoot)/include/tidepool.map",
                ])
            ]
        ),
        .testTarget(name: "TidepoolCoreTests", dependencies: ["TidepoolCore", "CTidepool"]),
    ],
    swiftLanguageModes: [.v5]
)
