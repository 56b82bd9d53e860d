import CTidepoolSystem

#if canImport(Glibc)
import Glibc
#endif

/// POSIX shared memory for tensors: created private to the user (0600, O_EXCL, random
/// name) by a client, mapped by the daemon, and unlinked as soon as the daemon has it, so
/// nothing lingers in /dev/shm.

public struct SharedMemoryError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    init(_ operation: String, errno code: Int32) { message = "\(operation): \(String(cString: strerror(code)))" }
    public var description: String { message }
}

/// Every Tidepool object's name starts with this; the daemon maps nothing else.
public let sharedMemoryNamePrefix = "/tidepool-"
public let maximumSharedMemoryNameLength = 200

/// A mapped shared-memory object. Unmapped when the last reference goes, so a job that
/// holds the region keeps it valid even if its owner unregisters it meanwhile.
public final class SharedRegion: @unchecked Sendable {
    public let name: String
    public let base: UnsafeMutableRawPointer
    public let size: Int
    private let guardSlot: Int32

    private init(name: String, base: UnsafeMutableRawPointer, size: Int, guarded: Bool) {
        self.name = name
        self.base = base
        self.size = size
        guardSlot = guarded ? tpsys_guard_add(base, size) : -1
    }

    deinit {
        if guardSlot >= 0 { tpsys_guard_remove(guardSlot) }
        munmap(base, size)
    }

    /// Creates a new object of `size` bytes (mode 0600, O_EXCL, random name) and maps it.
    /// The name stays in /dev/shm until `unlink` (the daemon unlinks it once mapped).
    public static func create(size: Int) throws -> SharedRegion {
        guard size > 0 else { throw SharedMemoryError("shared memory size must be positive but is \(size)") }
        for _ in 0..<16 {
            let name = "\(sharedMemoryNamePrefix)\(getpid())-\(UInt64.random(in: 0...UInt64.max).hexadecimal)"
            let fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd < 0 {
                if errno == EEXIST { continue }
                throw SharedMemoryError("shm_open(\(name))", errno: errno)
            }
            defer { close(fd) }
            guard ftruncate(fd, off_t(size)) == 0 else {
                let code = errno
                shm_unlink(name)
                throw SharedMemoryError("ftruncate(\(name), \(size))", errno: code)
            }
            guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
                let code = errno
                shm_unlink(name)
                throw SharedMemoryError("mmap(\(name), \(size))", errno: code)
            }
            return SharedRegion(name: name, base: base, size: size, guarded: false)
        }
        throw SharedMemoryError("shm_open: no free random name after 16 tries")
    }

    /// Maps another process's object, checking that it is a Tidepool object private to this
    /// user and at least `size` bytes long. The mapping is guarded against the owner
    /// truncating the object later (see tidepool_system.h).
    public static func open(name: String, size: Int) throws -> SharedRegion {
        guard name.hasPrefix(sharedMemoryNamePrefix), name.utf8.count <= maximumSharedMemoryNameLength,
              !name.dropFirst().contains("/"), !name.contains("\0")
        else {
            throw SharedMemoryError(
                "name \"\(name.prefix(64))\" is not a Tidepool shared-memory name (\(sharedMemoryNamePrefix)..., "
                    + "at most \(maximumSharedMemoryNameLength) bytes, no further '/')")
        }
        guard size > 0 else { throw SharedMemoryError("size must be positive but is \(size)") }
        // O_NOFOLLOW: never follow a link planted in /dev/shm.
        let fd = shm_open(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0)
        guard fd >= 0 else { throw SharedMemoryError("shm_open(\(name))", errno: errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SharedMemoryError("fstat(\(name))", errno: errno) }
        guard info.st_uid == geteuid() else {
            throw SharedMemoryError("\(name) belongs to uid \(info.st_uid), not to this user (\(geteuid()))")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw SharedMemoryError("\(name) has mode \(String(info.st_mode & 0o777, radix: 8)); it must be private (0600)")
        }
        guard Int(info.st_size) >= size else {
            throw SharedMemoryError("\(name) is \(info.st_size) bytes, smaller than the \(size) registered")
        }
        guard tpsys_guard_install() == 0 else { throw SharedMemoryError("sigaction(SIGBUS)", errno: errno) }
        // MAP_POPULATE builds the page tables now, at registration, instead of in the first job.
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0), base != MAP_FAILED else {
            throw SharedMemoryError("mmap(\(name), \(size))", errno: errno)
        }
        let region = SharedRegion(name: name, base: base, size: size, guarded: true)
        guard region.guardSlot >= 0 else { throw SharedMemoryError("too many guarded shared-memory regions") }
        return region
    }

    /// Removes the name from /dev/shm; the memory lives on while mapped.
    @discardableResult
    public static func unlink(name: String) -> Bool { shm_unlink(name) == 0 }

    /// Removes the Tidepool objects this user's dead processes left in /dev/shm (a client
    /// killed between creating an object and the daemon unlinking it). Names carry their
    /// creator's pid; `pid` limits the sweep to one process, known to be gone. Returns how
    /// many were removed.
    @discardableResult
    public static func removeOrphans(ofProcess pid: Int32? = nil) -> Int {
        guard let directory = opendir("/dev/shm") else { return 0 }
        defer { closedir(directory) }
        let prefix = String(sharedMemoryNamePrefix.dropFirst())  // "tidepool-"
        var removed = 0
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard name.hasPrefix(prefix), let owner = Int32(name.dropFirst(prefix.count).prefix(while: { $0 != "-" })) else { continue }
            if let pid { guard owner == pid else { continue } } else { guard kill(owner, 0) != 0 && errno == ESRCH else { continue } }
            var info = stat()
            guard lstat("/dev/shm/\(name)", &info) == 0, info.st_uid == geteuid() else { continue }
            if shm_unlink("/\(name)") == 0 { removed += 1 }
        }
        return removed
    }

    /// True once the owner truncated the object under a mapping and a fault was absorbed:
    /// whatever was read or written since is meaningless.
    public var isPoisoned: Bool { guardSlot >= 0 && tpsys_guard_poisoned(guardSlot) != 0 }

    /// Whether [offset, offset + count) lies inside the region, overflow-checked.
    public func contains(offset: Int, count: Int) -> Bool {
        guard offset >= 0, count >= 0 else { return false }
        let (end, overflow) = offset.addingReportingOverflow(count)
        return !overflow && end <= size
    }
}

extension UInt64 {
    var hexadecimal: String { String(self, radix: 16) }
}
