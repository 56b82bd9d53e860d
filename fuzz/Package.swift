// swift-tools-version:6.1
// Coverage-guided fuzz targets (libFuzzer) over Tidepool's two outside boundaries: the
// daemon's request handling (wire decoding, regions, jobs) and the C ABI. A package of its
// own, so that only these executables are built with -sanitize=fuzzer: `make fuzz` and
// `make test` build it with `swift build --sanitize=fuzzer --sanitize=address`.
import PackageDescription

let package = Package(
    name: "TidepoolFuzz",
    dependencies: [.package(name: "Tidepool", path: "..")],
    targets: [
        .executableTarget(
            name: "tidepool-fuzz-daemon",
            dependencies: [.product(name: "TidepoolFuzzing", package: "Tidepool")]
        ),
        .executableTarget(
            name: "tidepool-fuzz-cabi",
            dependencies: [.product(name: "TidepoolFuzzing", package: "Tidepool")]
        ),
    ],
    swiftLanguageModes: [.v5]
)
