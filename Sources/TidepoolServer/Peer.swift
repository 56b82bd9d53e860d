import CTidepoolSystem
import Logging
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// Who sent a request, as the kernel (not the message) says: the daemon's ZAP handler
/// (`PeerAuthenticator`) labels every connection when it is made, and libzmq attaches the
/// label to every message of that connection as its "User-Id" property.
public enum Peer: Equatable, Sendable, CustomStringConvertible {
    /// A process on this host, over ipc, with its SO_PEERCRED credentials.
    case local(uid: uid_t, gid: gid_t, pid: pid_t)
    /// A tcp peer: its address and, with CURVE, " key <Z85>", the public key it proved it
    /// holds (without CURVE, no proof of who it is).
    case remote(address: String)
    /// No label (a connection accepted without the handler); trusted with nothing.
    case unknown

    /// Parses a label written by `label(domain:address:)`.
    public init(userID: String?) {
        guard let userID else {
            self = .unknown
            return
        }
        if userID.hasPrefix("ipc:") {
            let fields = userID.dropFirst(4).split(separator: ":", omittingEmptySubsequences: false)
            if fields.count == 3, let uid = UInt32(fields[0]), let gid = UInt32(fields[1]), let pid = Int32(fields[2]), pid > 0 {
                self = .local(uid: uid, gid: gid, pid: pid)
                return
            }
        } else if userID.hasPrefix("tcp:") {
            self = .remote(address: String(userID.dropFirst(4)))
            return
        }
        self = .unknown
    }

    /// The label for a connection on an endpoint of ZAP `domain`. For ipc, libzmq gives the
    /// address as "<path>:<uid>:<gid>:<pid>" from SO_PEERCRED; the path may hold colons, so the
    /// credentials are the last three fields. Only a domain the daemon set decides the
    /// transport, never the address's shape (an IPv6 address can end in three numbers).
    static func label(domain: String, address: String) -> String {
        switch domain {
        case PeerAuthenticator.ipcDomain:
            let fields = address.split(separator: ":", omittingEmptySubsequences: false)
            guard fields.count >= 3 else { return "unknown" }
            return "ipc:" + fields.suffix(3).joined(separator: ":")
        case PeerAuthenticator.tcpDomain:
            return "tcp:\(address)"
        default:
            return "unknown"
        }
    }

    public var description: String {
        switch self {
        case .local(let uid, _, let pid): return "process \(pid) of uid \(uid) (ipc)"
        case .remote(let address): return "\(address) (tcp)"
        case .unknown: return "an unidentified peer"
        }
    }
}

/// The daemon's ZAP handler (ZeroMQ RFC 27): a thread that answers libzmq's authentication
/// requests for every new connection, and labels each connection it admits with the
/// endpoint's transport and, for ipc, the peer's kernel credentials (see `Peer`). Endpoints are
/// bound with ZMQ_ZAP_DOMAIN set to `ipcDomain` or `tcpDomain`, so the label never has to guess
/// the transport. Without CURVE it admits every connection; with it (`curve`), a tcp
/// connection is admitted only if it completed CURVE with a client key `curve` authorizes, and
/// every refusal is logged with the client's key and address (a flood of them held back and
/// counted: `LogLimiter`).
final class PeerAuthenticator: @unchecked Sendable {
    static let ipcDomain = "tidepool-ipc"
    static let tcpDomain = "tidepool-tcp"
    static let endpoint = "inproc://zeromq.zap.01"

    private let curve: CurveAuthorization?
    private let logger: Logger
    private let logLimiter = LogLimiter()
    private let socket: ZMQSocket
    /// With CURVE, the router's failed handshakes: libzmq refuses a client without CURVE (or
    /// with another server key) before it asks ZAP, so they are logged from here. Read by the
    /// handler's thread; set before `start`.
    private var handshakes: ZMQMonitor?
    private let stopFd: Int32
    private var thread = pthread_t()
    private var running = false

    /// Binds the handler's socket in `context`; it must exist before any endpoint accepts.
    init(context: ZMQContext, curve: CurveAuthorization?, logger: Logger) throws {
        self.curve = curve
        self.logger = logger
        socket = try ZMQSocket(context, type: .rep)
        try socket.set(.linger, Int32(0))
        try socket.bind(Self.endpoint)
        stopFd = tpsys_eventfd()
        guard stopFd >= 0 else {
            socket.close()
            throw ServerError("eventfd: \(String(cString: strerror(errno)))")
        }
    }

    /// Logs the failed handshakes of `router` (call before `start`, and `router.stopMonitor()`
    /// before closing it).
    func watchHandshakes(of router: ZMQSocket, context: ZMQContext) throws {
        handshakes = try ZMQMonitor(context, watching: router, name: "inproc://tidepool-handshakes",
                                    events: [.handshakeFailedProtocol, .handshakeFailedNoDetail])
    }

    func start() throws {
        let retained = Unmanaged.passRetained(self)
        let code = pthread_create(&thread, nil, { raw in
            let me = Unmanaged<PeerAuthenticator>.fromOpaque(raw!).takeRetainedValue()
            me.serve()
            return nil
        }, retained.toOpaque())
        guard code == 0 else {
            retained.release()
            throw ServerError("cannot start the ZAP thread: \(String(cString: strerror(code)))")
        }
        running = true
    }

    /// Stops the thread and closes the socket; the context can then terminate.
    func stop() {
        if running {
            tpsys_eventfd_signal(stopFd)
            pthread_join(thread, nil)
            running = false
        } else {
            socket.close()
            handshakes?.socket.close()
        }
        close(stopFd)
    }

    /// The ZAP reply's status, reason and user id for one connection.
    private func decide(domain: String, address: String, mechanism: String, credentials: [UInt8])
        -> (status: String, reason: String, label: String)
    {
        let label = Peer.label(domain: domain, address: address)
        guard domain == Self.tcpDomain, let curve else { return ("200", "OK", label) }
        // The tcp endpoints were bound as CURVE servers, so libzmq asks only after a CURVE
        // handshake; anything else is refused all the same.
        guard mechanism == "CURVE", let key = CurveKey(bytes: credentials) else {
            curve.countRefusal()
            logLimiter.log(logger, .warning, "refused a tcp connection: not CURVE",
                           metadata: ["address": "\(address)", "mechanism": "\(mechanism)"])
            return ("400", "CURVE required", "")
        }
        guard curve.isAuthorized(key) else {
            curve.countRefusal()
            logLimiter.log(logger, .warning, "refused a tcp connection: its CURVE key is not authorized", metadata: [
                "address": "\(address)", "client_key": "\(key.z85)", "authorized_keys": "\(curve.directory)",
            ])
            return ("400", "client key not authorized", "")
        }
        logger.debug("admitted a tcp connection", metadata: ["address": "\(address)", "client_key": "\(key.z85)"])
        // The key is part of who the peer is: a routing id taken over by another key's
        // connection is another client (`ClientRegistry.existing`), even from the same address.
        return ("200", "OK", "\(label) key \(key.z85)")
    }

    private func serve() {
        defer {
            socket.close()
            handshakes?.socket.close()
        }
        let targets: [PollTarget] = [.socket(socket), .fd(stopFd)] + (handshakes.map { [.socket($0.socket)] } ?? [])
        while true {
            guard let ready = try? poll(targets, timeoutMs: -1) else { return }
            if ready[1] { return }
            if ready.count > 2 && ready[2] {
                // tcp only: ipc peers speak no CURVE, and probes of the socket file (another
                // daemon checking whether this one serves) end during the handshake.
                while let (event, value, endpoint) = handshakes?.next() {
                    guard endpoint.hasPrefix("tcp://") else { continue }
                    if event == .handshakeFailedProtocol {
                        curve?.countRefusal()
                        logLimiter.log(logger, .warning,
                                       "refused a connection that failed the handshake: a tcp client without CURVE, or with another server key",
                                       metadata: ["endpoint": "\(endpoint)", "protocol_error": "0x\(String(value, radix: 16))"])
                    } else {
                        // Which side gave up first is a race: a client without CURVE may leave
                        // as soon as it reads this side's greeting.
                        logLimiter.log(logger, .warning, "a tcp connection ended during the handshake (a client without CURVE, or a probe)",
                                       metadata: ["endpoint": "\(endpoint)", "errno": "\(value)"])
                    }
                }
            }
            guard ready[0], let frames = try? socket.receive(dontWait: true) else { continue }
            // version, request id, domain, address, routing id, mechanism, credentials...
            let text = frames.map { String(decoding: $0.bytes, as: UTF8.self) }
            guard text.count >= 6, text[0] == "1.0" else {
                // A malformed request can only come from inside this process; answer so the
                // REP socket stays usable, with a refusal.
                try? socket.send(["1.0", text.count > 1 ? text[1] : "", "500", "malformed ZAP request", "", ""].map { ZMQFrame(Array($0.utf8)) })
                continue
            }
            let (status, reason, label) = decide(domain: text[2], address: text[3], mechanism: text[5],
                                                 credentials: frames.count > 6 ? frames[6].array : [])
            try? socket.send(["1.0", text[1], status, reason, label, ""].map { ZMQFrame(Array($0.utf8)) })
        }
    }
}
