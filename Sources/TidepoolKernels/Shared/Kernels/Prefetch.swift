import CTidepoolStream
import TidepoolTypes

/// Memory to prefetch for reading: `planes` runs of `planeBytes`, `planeStride` bytes apart.
struct PrefetchRegion {
    let start: UnsafeRawPointer
    let planeBytes: Int
    let planes: Int
    let planeStride: Int

    /// Nothing to prefetch (its address is never used).
    static let none = PrefetchRegion(start: UnsafeRawPointer(bitPattern: 64)!, planeBytes: 0, planes: 0, planeStride: 0)
    var isEmpty: Bool { planeBytes * planes == 0 }

    /// Prefetches part `part` of the region cut into `parts` equal parts.
    func fetch(part: Int, of parts: Int) {
        let total = planeBytes * planes
        guard total > 0 else { return }
        fetch(bytes: (total * part / parts)..<(total * (part + 1) / parts))
    }

    /// Prefetches bytes `bytes` of the region (offsets as if its planes were one run).
    func fetch(bytes run: Range<Int>) {
        var from = run.lowerBound
        let to = run.upperBound
        while from < to {
            // One plane (a 2-d pooling's row, a tile's rows of one plane) needs no division.
            let plane = planes == 1 ? 0 : from / planeBytes, offset = from - plane * planeBytes
            let bytes = Swift.min(to - from, planeBytes - offset)
            let address = start + plane * planeStride + offset
            tpstream_prefetch(address, bytes)
            from += bytes
        }
    }
}

/// Runs `body` over `range` cut into `parts` parts (fewer when it is shorter: no part is
/// empty; `PartCuts`), prefetching the matching part of `region` after each (in one part when
/// there is nothing to prefetch).
@inline(__always)
func fetchingInParts(_ range: Range<Int>, _ parts: Int, _ region: PrefetchRegion, _ body: (Range<Int>) -> Void) {
    let parts = region.isEmpty || range.isEmpty ? 1 : Swift.min(parts, range.count)
    guard parts > 1 else {
        body(range)
        region.fetch(part: 0, of: 1)
        return
    }
    var cut = PartCuts(range.count, parts), regionCut = PartCuts(region.planeBytes * region.planes, parts)
    for _ in 0..<parts {
        let part = cut.next()
        body((range.lowerBound + part.lowerBound)..<(range.lowerBound + part.upperBound))
        region.fetch(bytes: regionCut.next())
    }
}

/// `total` cut into `parts` parts in turn, part i being total * i / parts ..< total * (i + 1) /
/// parts, stepped without a division per part: each of a row's sixteen parts divided its ends
/// and its regions' (32-bit divisions, on which `perf` found a 2-d pooling's short rows
/// stalled), and MaxPool2d k6 s1 p1 of 2 uint8 channels, its input in L2, took 1.01-1.06x as
/// long with them.
package struct PartCuts {
    let quotient: Int, remainder: Int, parts: Int
    var end = 0, carried = 0

    /// `total` (0 or more) in `parts` (1 or more) parts.
    package init(_ total: Int, _ parts: Int) {
        (quotient, remainder) = total.quotientAndRemainder(dividingBy: parts)
        self.parts = parts
    }

    /// The next part: its end is the last end plus the quotient, and one more each time the
    /// remainders carried reach `parts` (floor(total * i / parts) = quotient * i +
    /// floor(remainder * i / parts)).
    @inline(__always)
    package mutating func next() -> Range<Int> {
        let start = end
        end += quotient
        carried += remainder
        if carried >= parts {
            carried -= parts
            end += 1
        }
        return start..<end
    }
}

/// Prefetching for the strategies: the input the next planes or rows will read, fetched while
/// the current ones finish (where `KernelPlan.prefetchInput` says), in parts spread over the
/// finishing pass.
extension TilePass {
    /// Prefetches are spread over this many parts of the finishing pass, so they overlap with
    /// its arithmetic instead of queueing up at once.
    static var prefetchChunks: Int { 16 }

    /// The input rows that the planes new to output planes `od + 1 ... od + count` (those in
    /// the tile) will read, when rows are dense: the finishing pass of `od` touches no input,
    /// so without a prefetch, memory would idle through it.
    func upcomingInput(after od: Int, count: Int = 1) -> PrefetchRegion {
        guard kernel.prefetchInput, od + 1 < tile.od.upperBound else { return .none }
        let (_, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
        let last = Swift.min(od + count, tile.od.upperBound - 1)
        let (next0, _) = windowBounds(od + 1, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
        let (_, next1) = windowBounds(last, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
        let first = Swift.max(next0, d1)
        // Height first fetches each further plane while it reduces the one before
        // (`reducePlaneHeightFirst`).
        let end = kernel.strategy == .heightFirst ? first + 1 : next1
        return inputRegion(planes: first..<Swift.max(first, Swift.min(end, next1)), rows: inputRows)
    }

    /// The input rows of plane d + 1, where the plan fetches each plane while the one before
    /// is reduced (`KernelPlan.prefetchPlaneAhead`) and the tile's windows read it (windows
    /// shorter than the D stride skip the planes between them).
    func planeAfter(_ d: Int) -> PrefetchRegion {
        guard kernel.prefetchPlaneAhead, (d + 1 + g.padD) % g.strideD < g.kernelD else { return .none }
        let (_, last) = windowBounds(tile.od.upperBound - 1, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
        return d + 1 < last ? inputRegion(planes: (d + 1)..<(d + 2), rows: inputRows) : .none
    }

    /// Input rows `rows` of planes `planes` of the tile's batch entry, when rows are dense (a
    /// contiguous run per plane); nothing otherwise.
    func inputRegion(planes: Range<Int>, rows: Range<Int>) -> PrefetchRegion {
        guard g.hasDenseRows, !planes.isEmpty, !rows.isEmpty else {
            return .none
        }
        let size = MemoryLayout<R.Input>.stride
        return PrefetchRegion(start: UnsafeRawPointer(input + tile.n * g.stepN + planes.lowerBound * g.stepD + rows.lowerBound * g.stepH),
                              planeBytes: rows.count * g.stepH * size, planes: planes.count, planeStride: g.stepD * size)
    }

    /// Runs `body` over `range` cut into `prefetchChunks` parts, prefetching the matching part
    /// of `region` after each (`fetchingInParts`). A 2-d pooling's rows run as
    /// planes of one row, and sixteen calls of the body and of the prefetch for one row cost
    /// more than the row.
    @inline(__always)
    func inParts(_ range: Range<Int>, prefetching region: PrefetchRegion, _ body: (Range<Int>) -> Void) {
        fetchingInParts(range, Self.prefetchChunks, region, body)
    }
}
