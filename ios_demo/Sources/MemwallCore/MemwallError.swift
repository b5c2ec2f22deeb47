/// Every failure the core reports: one line that names the problem and the fix, as the Python tools do.
public struct MemwallError: Error, CustomStringConvertible, Equatable {
    public enum Kind: String, Sendable {
        case bundle, checkpoint, data, runtime, lab, io, unsupported
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}
