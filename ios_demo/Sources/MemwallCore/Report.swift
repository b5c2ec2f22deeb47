import Foundation

/// A lab report, version 1 (sdk_tools/lab/schemas/report.v1.schema.json): what a run on this device measured.
public struct Report: Codable, Equatable, Sendable {
    public struct Device: Codable, Equatable, Sendable {
        public var deviceId: String
        public var model: String
        public var manufacturer: String
        public var os: String
        public var osVersion: String
        public var ramBytes: Int64
        public var appMemoryLimitBytes: Int64?
        public var abi: String
        public var cpu: String?
    }

    public struct BundleSection: Codable, Equatable, Sendable {
        public var manifestSha256: String
        public var name: String
        public var backend: String
        public var model: String
        public var plan: JSONValue
        public var predictedPeakBytes: Int64
        public var predicted: [String: Int64]?
    }

    public struct Run: Codable, Equatable, Sendable {
        public var reportId: String
        public var startedAt: String
        public var steps: Int?
        public var batchSize: Int?
        public var microBatches: Int?
        public var stepTimesMs: [Double]?
        /// Loss per step; nil where it was not finite.
        public var lossCurve: [Double?]?
        public var accuracyBefore: Double?
        public var accuracyAfter: Double?
        public var threads: Int?
        /// The runtime that trained, whose prediction `bundle.predictedPeakBytes` is.
        public var runtime: String?

        public init(reportId: String, startedAt: String, steps: Int? = nil, batchSize: Int? = nil,
                    microBatches: Int? = nil, stepTimesMs: [Double]? = nil, lossCurve: [Double?]? = nil,
                    accuracyBefore: Double? = nil, accuracyAfter: Double? = nil, threads: Int? = nil,
                    runtime: String? = nil) {
            (self.reportId, self.startedAt, self.steps, self.batchSize, self.microBatches) =
                (reportId, startedAt, steps, batchSize, microBatches)
            (self.stepTimesMs, self.lossCurve, self.accuracyBefore, self.accuracyAfter, self.threads, self.runtime) =
                (stepTimesMs, lossCurve, accuracyBefore, accuracyAfter, threads, runtime)
        }
    }

    public struct Sample: Codable, Equatable, Sendable {
        public var tMs: Double
        public var rssBytes: Int64

        public init(tMs: Double, rssBytes: Int64) {
            (self.tMs, self.rssBytes) = (tMs, rssBytes)
        }
    }

    public struct Memory: Codable, Equatable, Sendable {
        public var peakRssBytes: Int64?
        public var baselineBytes: Int64?
        public var peakDeltaBytes: Int64?
        public var iosPhysFootprintBytes: Int64?
        public var nativeHeapBytes: Int64?
        public var samples: [Sample]?

        public init(peakRssBytes: Int64? = nil, baselineBytes: Int64? = nil, peakDeltaBytes: Int64? = nil,
                    iosPhysFootprintBytes: Int64? = nil, nativeHeapBytes: Int64? = nil, samples: [Sample]? = nil) {
            (self.peakRssBytes, self.baselineBytes, self.peakDeltaBytes) = (peakRssBytes, baselineBytes, peakDeltaBytes)
            (self.iosPhysFootprintBytes, self.nativeHeapBytes, self.samples) = (iosPhysFootprintBytes, nativeHeapBytes, samples)
        }
    }

    public struct RunError: Codable, Equatable, Sendable {
        public var kind: String
        public var message: String
        public var signal: Int?
        public var exitCode: Int?

        public init(kind: String, message: String, signal: Int? = nil, exitCode: Int? = nil) {
            (self.kind, self.message, self.signal, self.exitCode) = (kind, message, signal, exitCode)
        }
    }

    public var schemaVersion = 1
    public var device: Device
    public var bundle: BundleSection
    public var run: Run
    public var memory: Memory?
    public var status: String
    public var error: RunError?

    public init(device: Device, bundle: BundleSection, run: Run, memory: Memory?, status: String, error: RunError? = nil) {
        (self.device, self.bundle, self.run, self.memory, self.status, self.error) = (device, bundle, run, memory, status, error)
    }

    public static func decode(_ data: Data) throws -> Report {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(Report.self, from: data)
    }

    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(self)
    }
}

extension Report.BundleSection {
    /// The report's `bundle` section for a verified bundle trained in `runtime`, as
    /// sdk_tools.lab.client.bundle_section builds it.
    public init(_ bundle: TrainingBundle, runtime: String? = nil) {
        let m = bundle.manifest
        // The manifest lists techniques as [{name, config}]; the lab's plan is {name: config}.
        let plan = Dictionary(m.techniques.map { ($0.name, $0.config) }, uniquingKeysWith: { _, last in last })
        let predicted = m.memory.compactMapValues { value -> Int64? in
            if case let .int(bytes) = value { return bytes }
            return nil
        }
        self.init(
            manifestSha256: bundle.manifestSHA256, name: m.name, backend: m.backend,
            model: m.model.spec.isEmpty ? m.name : m.model.spec, plan: .object(plan),
            predictedPeakBytes: m.predictedPeakBytes(for: runtime), predicted: predicted
        )
    }
}

/// RFC 3339 with milliseconds, as the Python side writes `started_at`.
public func rfc3339(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: date)
}
