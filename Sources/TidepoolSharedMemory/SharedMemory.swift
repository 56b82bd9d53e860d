import CTidepoolSystem

#if canImport(Glibc)
import Glibc
#endif

/// POSIX shared memory for tensors: created private to the user (0600, O_EXCL, random
/// name, fully backed) by a client, which keeps the name until it frees the buffer, so that
/// a restarted daemon can map the same memory again; mapped by the daemon only for the
/// object's owner. The daemon removes the objects of client processes that exit.

public struct SharedMemoryError: Error, CustomStringConvertible {
    public enum Kind: Sendable {
        /// The object belongs to someone else, or is open to others.
        case permission
        /// The system refused (no space, no such object, a failed call).
        case system
        /// The name or size is not one this module accepts.
        case invalid
    }

    public let kind: Kind
    public let message: String
    public init(_ message: String, kind: Kind = .system) {
        self.message = message
        self.kind = kind
    }
    init(_ operation: String, errno code: Int32) { self.init("\(operation): \(String(cString: strerror(code)))") }
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

    /// Creates a new object of `size` bytes (mode 0600, O_EXCL, random name carrying this
    /// process's pid) and maps it. Its pages are allocated now (posix_fallocate), so a full
    /// /dev/shm is an error here rather than a SIGBUS at the first write. The name stays in
    /// /dev/shm until `unlink`.
    public static func create(size: Int) throws -> SharedRegion {
        guard size > 0 else { throw SharedMemoryError("shared memory size must be positive but is \(size)", kind: .invalid) }
        for _ in 0..<16 {
            let name = "\(sharedMemoryNamePrefix)\(getpid())-\(UInt64.random(in: 0...UInt64.max).hexadecimal)"
            let fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd < 0 {
                if errno == EEXIST { continue }
                throw SharedMemoryError("shm_open(\(name))", errno: errno)
            }
            defer { close(fd) }
            // posix_fallocate returns the error instead of setting errno.
            let code = ftruncate(fd, off_t(size)) == 0 ? posix_fallocate(fd, 0, off_t(size)) : errno
            guard code == 0 else {
                shm_unlink(name)
                let reason = code == ENOSPC ? "/dev/shm has no room for \(size) bytes" : String(cString: strerror(code))
                throw SharedMemoryError("cannot back shared memory \(name) of \(size) bytes: \(reason)")
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

    /// Maps another process's object for its owner: the object must be a Tidepool object
    /// owned by `owner` (the uid the kernel vouched for) and by this process's user (or this
    /// process must be root), private (no group/other permissions), and at least `size` bytes.
    /// The mapping is guarded against the owner truncating the object later (see
    /// tidepool_system.h).
    public static func open(name: String, size: Int, owner: uid_t) throws -> SharedRegion {
        guard name.hasPrefix(sharedMemoryNamePrefix), name.utf8.count <= maximumSharedMemoryNameLength,
              !name.dropFirst().contains("/"), !name.utf8.contains(0)
        else {
            throw SharedMemoryError(
                "name \"\(name.prefix(64))\" is not a Tidepool shared-memory name (\(sharedMemoryNamePrefix)..., "
                    + "at most \(maximumSharedMemoryNameLength) bytes, no further '/')", kind: .invalid)
        }
        guard size > 0 else { throw SharedMemoryError("size must be positive but is \(size)", kind: .invalid) }
        // O_NOFOLLOW: never follow a link planted in /dev/shm (anyone can write there).
        // O_NONBLOCK: a FIFO planted under the name must not stall the daemon in open(); only
        // a regular file is mapped (below).
        let fd = shm_open(name, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0)
        guard fd >= 0 else { throw SharedMemoryError("shm_open(\(name))", errno: errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SharedMemoryError("fstat(\(name))", errno: errno) }
        guard info.st_uid == owner else {
            throw SharedMemoryError("\(name) belongs to uid \(info.st_uid), but the process registering it runs as uid \(owner); "
                + "only an object's owner may register it", kind: .permission)
        }
        guard info.st_uid == geteuid() || geteuid() == 0 else {
            throw SharedMemoryError("\(name) belongs to uid \(info.st_uid), not to the daemon's user (\(geteuid()))", kind: .permission)
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw SharedMemoryError("\(name) is not a regular shared-memory object", kind: .permission)
        }
        guard info.st_mode & 0o077 == 0 else {
            throw SharedMemoryError("\(name) has mode \(String(info.st_mode & 0o777, radix: 8)); it must be private (0600)",
                                    kind: .permission)
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

    /// Removes the Tidepool objects that dead processes left in /dev/shm. Names carry their
    /// creator's pid. With `pid`, only that process's objects (it is known to be gone) of
    /// `owner`; without, the objects of `owner` whose creator no longer runs. Returns how
    /// many were removed.
    @discardableResult
    public static func removeOrphans(ofProcess pid: Int32? = nil, owner: uid_t = geteuid()) -> Int {
        guard let directory = opendir("/dev/shm") else { return 0 }
        defer { closedir(directory) }
        let prefix = String(sharedMemoryNamePrefix.dropFirst())  // "tidepool-"
        var removed = 0
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard name.hasPrefix(prefix), let creator = Int32(name.dropFirst(prefix.count).prefix(while: { $0 != "-" })),
                  creator > 0 else { continue }
            if let pid { guard creator == pid else { continue } } else { guard kill(creator, 0) != 0 && errno == ESRCH else { continue } }
            var info = stat()
            guard lstat("/dev/shm/\(name)", &info) == 0, info.st_uid == owner else { continue }
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
