import Foundation

/// Any JSON value, for the manifest's free-form objects (`techniques`, `memory`, `backend_options`) and the
/// report's `plan`. Always decoded with JSONDecoder: swift-corelibs' JSONSerialization misreads float64 values
/// on Linux (Swift 6.0.3, tests/golden/optimizer.json: 19 of 48 parameter values came back 1 ulp off, e.g.
/// -0.42388001084327714 read as -0.423880010843277); JSONDecoder reads all of them exactly.
public enum JSONValue: Codable, Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .int(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case let .bool(value): try container.encode(value)
        case let .int(value): try container.encode(value)
        case let .double(value): try container.encode(value)
        case let .string(value): try container.encode(value)
        case let .array(value): try container.encode(value)
        case let .object(value): try container.encode(value)
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case let .object(fields) = self { return fields[key] }
        return nil
    }

    public var int64: Int64? {
        switch self {
        case let .int(value): return value
        case let .double(value) where value == value.rounded(): return Int64(exactly: value)
        default: return nil
        }
    }

    public var string: String? {
        if case let .string(value) = self { return value }
        return nil
    }
}
