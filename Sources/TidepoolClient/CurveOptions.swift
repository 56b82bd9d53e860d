import CTidepool
import TidepoolCore
import TidepoolEndpoint
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// The keys a client speaks CurveZMQ with (docs/protocol.md, "CurveZMQ"): the daemon's
/// public key, and the client's own pair, whose public half the daemon must have in its
/// authorized-keys directory.
public struct CurveClientKeys: Sendable {
    public let serverKey: CurveKey
    public let client: CurveCertificate

    /// Where the keys come from when a caller gives none.
    public init(serverKey: CurveKey, client: CurveCertificate) {
        self.serverKey = serverKey
        self.client = client
    }

    public static let serverKeyVariable = "TIDEPOOL_CURVE_SERVER_KEY"
    public static let clientCertVariable = "TIDEPOOL_CURVE_CLIENT_CERT"

    /// The keys for a connection to `endpoint`. `serverKey` is the daemon's public key in
    /// Z85 (40 characters) or the path of its public certificate; `clientCert` the path of the
    /// client's secret certificate. nil takes the environment variable of the same role;
    /// an empty string means none (and ignores the variable). Only tcp endpoints speak CURVE
    /// (on ipc the kernel names the peer): for an ipc endpoint, keys given explicitly are an
    /// error and the variables are ignored. Both or neither must be given.
    public static func resolve(endpoint: String, serverKey: String?, clientCert: String?) throws -> CurveClientKeys? {
        let explicit = (serverKey?.isEmpty == false) || (clientCert?.isEmpty == false)
        guard endpoint.hasPrefix("tcp://") else {
            if explicit {
                throw PoolError.invalid("curve_server_key and curve_client_cert are for tcp:// endpoints; \(endpoint) is not "
                    + "one (ipc connections are authenticated by the kernel, and the daemon does not speak CURVE on them)")
            }
            return nil
        }
        let serverText = serverKey ?? Endpoint.environment(serverKeyVariable) ?? ""
        let certPath = clientCert ?? Endpoint.environment(clientCertVariable) ?? ""
        if serverText.isEmpty && certPath.isEmpty { return nil }
        func origin(_ given: String?, _ variable: String, _ name: String) -> String { given == nil ? "$\(variable)" : name }
        guard !serverText.isEmpty else {
            throw PoolError.invalid("\(origin(clientCert, clientCertVariable, "curve_client_cert")) is set but not "
                + "curve_server_key ($\(serverKeyVariable)): CURVE needs the daemon's public key too")
        }
        guard !certPath.isEmpty else {
            throw PoolError.invalid("\(origin(serverKey, serverKeyVariable, "curve_server_key")) is set but not "
                + "curve_client_cert ($\(clientCertVariable)): CURVE needs this client's secret certificate too "
                + "(make one with `tidepoold keygen NAME`)")
        }
        do {
            let server: CurveKey
            // A Z85 key, unless a file has that name (Z85 has "/" and "." among its characters).
            if access(serverText, F_OK) != 0, let key = CurveKey(z85: serverText) {
                server = key
            } else {
                server = try CurveCertificate.load(path: serverText, secret: false).publicKey
            }
            let client = try CurveCertificate.load(path: certPath, secret: true)
            return CurveClientKeys(serverKey: server, client: client)
        } catch let error as CurveError {
            throw PoolError.invalid("\(error)")
        }
    }

}
