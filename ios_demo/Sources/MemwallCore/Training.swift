import Foundation

/// A tensor's values as a training call takes them (row-major, the manifest's shape and dtype).
public enum TensorData: Equatable, Sendable {
    case float32([Float])
    case int64([Int64])

    public var count: Int {
        switch self {
        case let .float32(values): return values.count
        case let .int64(values): return values.count
        }
    }
}

/// One training call's data: the manifest's inputs in order, and the labels.
public struct Batch: Sendable {
    public var inputs: [TensorData]
    public var labels: TensorData

    public init(inputs: [TensorData], labels: TensorData) {
        self.inputs = inputs
        self.labels = labels
    }
}

/// A bundle loaded into a runtime. One optimizer step = `manifest.training.microBatches` training calls with the
/// update wherever the manifest puts it (`optimizer_runs_in`): the ExecuTorch backend's native core runs the
/// app-side optimizer or the program's fused update, the ONNX Runtime backend its optimizer model.
public protocol TrainingBackend: AnyObject {
    var bundle: TrainingBundle { get }
    var threads: Int { get }
    /// The runtime that trains (report.v1 `run.runtime`, a key of the manifest's `memory.by_runtime`).
    var runtime: String { get }
    /// One optimizer step; returns the mean of the micro-batches' losses.
    func trainStep(_ microBatches: [Batch]) throws -> Double
    /// Logits of one batch (batch x classes, row-major) with the live trained parameters.
    func predict(_ inputs: [TensorData]) throws -> [Float]
    /// Trained parameters by name, in manifest order.
    func parameters() throws -> [(name: String, values: [Float])]
}

/// A labelled example of the user's own data (the app's drawn digits): one value list per manifest input.
public struct Sample: Codable, Equatable, Sendable {
    public var inputs: [[Float]]
    public var label: Int

    public init(inputs: [[Float]], label: Int) {
        self.inputs = inputs
        self.label = label
    }
}

extension Manifest {
    /// Check a sample against the manifest's inputs (one example: the shape without the batch dimension).
    public func check(_ sample: Sample) throws {
        guard sample.inputs.count == inputs.count else {
            throw MemwallError(.data, "a sample has \(sample.inputs.count) inputs, the bundle takes \(inputs.count)")
        }
        for (values, spec) in zip(sample.inputs, inputs) where values.count * callBatchSize != spec.numel {
            throw MemwallError(.data, "a sample's \(spec.name) has \(values.count) values, the bundle takes "
                + "\(spec.numel / callBatchSize) (shape \(spec.shape.dropFirst())); re-export for this input size")
        }
        guard sample.label >= 0, sample.label < classes.count else {
            throw MemwallError(.data, "label \(sample.label) is not one of the bundle's \(classes.count) classes")
        }
    }

    /// One training call's batch of `samples` (exactly callBatchSize of them).
    public func batch(_ samples: ArraySlice<Sample>) -> Batch {
        let inputs = self.inputs.indices.map { i in TensorData.float32(samples.flatMap { $0.inputs[i] }) }
        let labels: TensorData = labels.dtype == "int64"
            ? .int64(samples.map { Int64($0.label) })
            : .float32(samples.flatMap { s in classes.indices.map { Float($0 == s.label ? 1 : 0) } })
        return Batch(inputs: inputs, labels: labels)
    }
}

/// Progress of a run, for the app's display.
public struct TrainingProgress: Sendable {
    public var step: Int
    public var steps: Int
    public var loss: Double
    public var memoryBytes: Int64
}

/// What a finished run measured.
public struct TrainingResult: Sendable {
    public var steps: Int
    public var losses: [Double]
    public var stepTimesMs: [Double]
    public var accuracyBefore: Double?
    public var accuracyAfter: Double?
    public var memory: Report.Memory
    public var threads: Int
    public var runtime: String?

    public init(steps: Int, losses: [Double], stepTimesMs: [Double], accuracyBefore: Double?, accuracyAfter: Double?,
                memory: Report.Memory, threads: Int, runtime: String? = nil) {
        (self.steps, self.losses, self.stepTimesMs) = (steps, losses, stepTimesMs)
        (self.accuracyBefore, self.accuracyAfter, self.memory, self.threads, self.runtime) =
            (accuracyBefore, accuracyAfter, memory, threads, runtime)
    }
}

/// The training loop: samples cycled in order into micro-batches, one backend step per optimizer step, memory
/// sampled throughout, accuracy before and after on held-out samples.
public final class Trainer {
    public let backend: TrainingBackend
    public var manifest: Manifest { backend.bundle.manifest }

    public init(backend: TrainingBackend) {
        self.backend = backend
    }

    /// Fraction of `samples` whose arg-max logit is their label (nil without samples). The last partial batch is
    /// padded with the first samples, whose predictions are not counted.
    public func accuracy(_ samples: [Sample]) throws -> Double? {
        guard !samples.isEmpty else { return nil }
        let size = manifest.callBatchSize, classes = manifest.classes.count
        var correct = 0
        var start = 0
        while start < samples.count {
            var chunk = Array(samples[start ..< min(start + size, samples.count)])
            let real = chunk.count
            while chunk.count < size { chunk.append(samples[(chunk.count - real) % samples.count]) }
            let logits = try backend.predict(manifest.batch(chunk[...]).inputs)
            for i in 0 ..< real {
                let row = logits[i * classes ..< (i + 1) * classes]
                if row.indices.max(by: { row[$0] < row[$1] })! - i * classes == chunk[i].label { correct += 1 }
            }
            start += size
        }
        return Double(correct) / Double(samples.count)
    }

    /// Train `steps` optimizer steps on `samples`, cycled in order. `position` is the batches (training calls)
    /// consumed before, as a checkpoint's data_position counts them, so a resumed run continues the same stream.
    public func run(steps: Int, samples: [Sample], evaluation: [Sample] = [], position: Int = 0,
                    sampler: MemorySampler, progress: ((TrainingProgress) -> Void)? = nil) throws -> TrainingResult {
        guard !samples.isEmpty else { throw MemwallError(.data, "no training samples: draw and label some first") }
        for sample in samples + evaluation { try manifest.check(sample) }
        sampler.begin()
        var memory: Report.Memory?
        defer { if memory == nil { _ = sampler.end() } }
        let before = try accuracy(evaluation)
        let perCall = manifest.callBatchSize
        var cursor = position * perCall
        var losses: [Double] = [], times: [Double] = []
        for step in stride(from: 1, through: steps, by: 1) {
            var calls: [Batch] = []
            for _ in 0 ..< manifest.training.microBatches {
                let chunk = (0 ..< perCall).map { samples[(cursor + $0) % samples.count] }
                calls.append(manifest.batch(chunk[...]))
                cursor += perCall
            }
            let start = DispatchTime.now().uptimeNanoseconds
            let loss = try backend.trainStep(calls)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            losses.append(loss)
            progress?(TrainingProgress(step: step, steps: steps, loss: loss, memoryBytes: sampler.latest))
        }
        let after = try accuracy(evaluation)
        memory = sampler.end()
        return TrainingResult(steps: losses.count, losses: losses, stepTimesMs: times, accuracyBefore: before,
                              accuracyAfter: after, memory: memory!, threads: backend.threads,
                              runtime: backend.runtime)
    }
}

extension Report {
    /// A completed run's report.
    public init(device: Device, bundle: TrainingBundle, reportId: String = UUID().uuidString.lowercased(), startedAt: Date,
                result: TrainingResult) {
        let m = bundle.manifest
        self.init(
            device: device, bundle: BundleSection(bundle, runtime: result.runtime),
            run: Run(reportId: reportId, startedAt: rfc3339(startedAt), steps: result.steps, batchSize: m.training.batchSize,
                     microBatches: m.training.microBatches, stepTimesMs: result.stepTimesMs,
                     lossCurve: result.losses.map { $0.isFinite ? $0 : nil }, accuracyBefore: result.accuracyBefore,
                     accuracyAfter: result.accuracyAfter, threads: result.threads, runtime: result.runtime),
            memory: result.memory, status: "ok", error: nil
        )
    }
}
