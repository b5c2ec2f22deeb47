import Foundation

/// A bundle's manifest.json (exporters/schemas/manifest.v1.schema.json): what the app reads of it.
public struct Manifest: Decodable, Sendable {
    public static let supportedSchemaVersions = [1]

    public struct FileEntry: Decodable, Sendable {
        public let path: String
        public let sha256: String
        public let bytes: Int64
    }

    public struct TensorSpec: Decodable, Sendable {
        public let name: String
        public let shape: [Int]
        public let dtype: String
        public var numel: Int { shape.reduce(1, *) }
    }

    public struct Trainable: Decodable, Sendable {
        public let name: String
        public let shape: [Int]
        public let dtype: String
        public let numel: Int
    }

    public struct Training: Decodable, Sendable {
        public let batchSize: Int
        public let microBatches: Int
    }

    public struct Method: Decodable, Sendable {
        public let name: String
        public let inputs: [String]
        public let outputs: [String]
    }

    public struct Technique: Decodable, Sendable {
        public let name: String
        public let config: JSONValue
    }

    public struct Model: Decodable, Sendable {
        public let spec: String
    }

    public let schemaVersion: Int
    public let name: String
    public let backend: String
    public let files: [String: FileEntry]
    public let inputs: [TensorSpec]
    public let labels: TensorSpec
    public let outputs: [TensorSpec]
    public let classes: [String]
    public let loss: String
    public let trainable: [Trainable]
    public let optimizer: OptimizerConfig
    public let training: Training
    public let methods: [String: Method]
    public let memory: [String: JSONValue]
    public let model: Model
    public let techniques: [Technique]
    public let backendOptions: [String: JSONValue]

    /// Where the optimizer update runs (`backend_options.optimizer_runs_in`): the app's code between training
    /// calls, inside the program (fused-update bundles), or ONNX Runtime's optimizer model.
    public enum OptimizerPlacement: String, Sendable {
        case app, program, onnxruntime
    }

    public var optimizerPlacement: OptimizerPlacement {
        backendOptions["optimizer_runs_in"]?.string.flatMap(OptimizerPlacement.init(rawValue:)) ?? .app
    }

    public var predictedPeakBytes: Int64 { memory["predicted_peak_bytes"]?.int64 ?? 0 }

    /// The memwall native runtime (runtime/, through its C API): a key of `memory.by_runtime`.
    public static let nativeRuntime = "memwall_native"

    /// The predicted peak for a run in `runtime` (a key of `memory.by_runtime`): the top-level (host runner's) one
    /// where the manifest has none for it, as exporters.bundle's `prediction_for` reads it.
    public func predictedPeakBytes(for runtime: String?) -> Int64 {
        runtime.flatMap { memory["by_runtime"]?[$0]?["predicted_peak_bytes"]?.int64 } ?? predictedPeakBytes
    }

    /// The examples of one training call (the inputs' batch dimension); `training.batchSize` is one optimizer
    /// step's, over `training.microBatches` calls.
    public var callBatchSize: Int { inputs.first?.shape.first ?? training.batchSize }

    /// Parse and check manifest bytes; `source` names them in errors.
    public static func parse(_ data: Data, source: String) throws -> Manifest {
        struct Version: Decodable { let schemaVersion: Int? }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let version: Version
        do {
            version = try decoder.decode(Version.self, from: data)
        } catch {
            throw MemwallError(.bundle, "\(source) is not a JSON object; the bundle is corrupt, re-export it")
        }
        guard let schema = version.schemaVersion, supportedSchemaVersions.contains(schema) else {
            let found = version.schemaVersion.map(String.init) ?? "none"
            throw MemwallError(.bundle, "\(source): unsupported schema_version \(found); this app reads "
                + "\(supportedSchemaVersions). Re-export the bundle with a matching memwall, or update the app.")
        }
        let manifest: Manifest
        do {
            manifest = try decoder.decode(Manifest.self, from: data)
        } catch let DecodingError.keyNotFound(key, context) {
            throw MemwallError(.bundle, "\(source): missing field \(path(context.codingPath + [key])); re-export the bundle")
        } catch let DecodingError.typeMismatch(_, context) {
            throw MemwallError(.bundle, "\(source): wrong type at \(path(context.codingPath)); re-export the bundle")
        } catch {
            throw MemwallError(.bundle, "\(source): invalid manifest (\(error)); re-export the bundle")
        }
        try manifest.check(source: source)
        return manifest
    }

    private static func path(_ keys: [CodingKey]) -> String {
        "$" + keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
    }

    /// The checks JSON decoding does not make: values the training loop relies on.
    private func check(source: String) throws {
        guard ["executorch", "onnxruntime"].contains(backend) else {
            throw MemwallError(.unsupported, "\(source): backend \(backend) is not one this app runs (executorch, onnxruntime)")
        }
        guard training.batchSize >= 1, training.microBatches >= 1 else {
            throw MemwallError(.bundle, "\(source): training.batch_size and micro_batches must be >= 1; re-export the bundle")
        }
        guard ["sgd", "adamw"].contains(optimizer.kind) else {
            throw MemwallError(.unsupported, "\(source): optimizer \(optimizer.kind) is not sgd or adamw; re-export the bundle")
        }
        guard methods["train"] != nil, methods["predict"] != nil else {
            throw MemwallError(.bundle, "\(source): methods.train and methods.predict are required; re-export the bundle")
        }
        for (role, entry) in files where entry.path.hasPrefix("/") || entry.path.split(separator: "/").contains("..") {
            throw MemwallError(.bundle, "\(source): file \(role) path \(entry.path) leaves the bundle directory; re-export the bundle")
        }
        for t in trainable where t.numel != t.shape.reduce(1, *) {
            throw MemwallError(.bundle, "\(source): trainable \(t.name) numel \(t.numel) does not match its shape \(t.shape)")
        }
    }
}

/// A bundle directory whose manifest parsed and whose every file has the size and sha256 the manifest says.
public struct TrainingBundle: Sendable {
    public static let manifestName = "manifest.json"

    public let directory: URL
    public let manifest: Manifest
    public let manifestSHA256: String

    public init(directory: URL, verifyFiles: Bool = true) throws {
        let manifestURL = directory.appendingPathComponent(TrainingBundle.manifestName)
        guard let raw = FileManager.default.contents(atPath: manifestURL.path) else {
            throw MemwallError(.bundle, "\(directory.path) has no \(TrainingBundle.manifestName): not a memwall bundle (push one with 'memwall export')")
        }
        self.directory = directory
        manifest = try Manifest.parse(raw, source: manifestURL.path)
        manifestSHA256 = SHA256.hex(raw)
        if verifyFiles {
            for role in manifest.files.keys.sorted() { try verify(role: role) }
        }
    }

    public func url(role: String) -> URL? {
        manifest.files[role].map { directory.appendingPathComponent($0.path) }
    }

    private func verify(role: String) throws {
        let entry = manifest.files[role]!
        let url = directory.appendingPathComponent(entry.path)
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: url.path),
              let size = (attributes[.size] as? NSNumber)?.int64Value
        else {
            throw MemwallError(.bundle, "bundle file \(entry.path) (\(role)) is missing from \(directory.path); push the bundle again")
        }
        guard size == entry.bytes else {
            throw MemwallError(.bundle, "bundle file \(entry.path) (\(role)) is \(size) bytes, the manifest says \(entry.bytes): "
                + "it is truncated or was replaced; push the bundle again")
        }
        let actual = try SHA256.hex(fileAt: url)
        guard actual == entry.sha256 else {
            throw MemwallError(.bundle, "bundle file \(entry.path) (\(role)) has sha256 \(actual.prefix(12))..., the manifest says "
                + "\(entry.sha256.prefix(12))...: the file is corrupt or from another export; push the bundle again")
        }
    }
}
