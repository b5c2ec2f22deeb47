import Foundation

/// One personalization run as the app performs it, platform-neutral so that Linux tests run the app's own flow:
/// memory baseline before the bundle loads, the run journal (a killed run is reported at the next start),
/// training, and the report queued for the lab — `ok` with what was measured, or `error` with the reason.
public struct Personalization: Sendable {
    public let device: Report.Device
    public let journal: RunJournal
    public let queue: ReportQueue

    public init(device: Report.Device, journal: RunJournal, queue: ReportQueue) {
        (self.device, self.journal, self.queue) = (device, journal, queue)
    }

    public struct Outcome {
        public let bundle: TrainingBundle
        public let backend: TrainingBackend
        public let result: TrainingResult
        public let report: Report
    }

    /// - Parameters:
    ///   - data: the training and held-out samples for the loaded bundle's inputs (e.g. the user's drawings).
    ///   - makeBackend: the runtime for the bundle (ExecuTorch or ONNX Runtime).
    ///   - onMemory: every memory sample, for a live display.
    public func run(bundleAt url: URL, steps: Int,
                    data: (Manifest) throws -> (training: [Sample], evaluation: [Sample]),
                    makeBackend: (TrainingBundle) throws -> TrainingBackend,
                    onMemory: (@Sendable (Int64) -> Void)? = nil,
                    progress: ((TrainingProgress) -> Void)? = nil) throws -> Outcome {
        let sampler = MemorySampler(onSample: onMemory)  // report.v1's baseline: before the bundle loads
        let started = Date()
        let bundle = try TrainingBundle(directory: url)
        let m = bundle.manifest
        var pending = Report(device: device, bundle: Report.BundleSection(bundle),
                             run: Report.Run(reportId: UUID().uuidString.lowercased(), startedAt: rfc3339(started),
                                             batchSize: m.training.batchSize, microBatches: m.training.microBatches),
                             memory: Report.Memory(baselineBytes: sampler.baseline), status: "crash")
        try journal.begin(pending)
        do {
            let (training, evaluation) = try data(m)
            let backend = try makeBackend(bundle)
            let result = try Trainer(backend: backend).run(steps: steps, samples: training, evaluation: evaluation,
                                                           sampler: sampler) { step in
                try? journal.progress(stepsDone: step.step, memoryBytes: step.memoryBytes)
                progress?(step)
            }
            let report = Report(device: device, bundle: bundle, reportId: pending.run.reportId, startedAt: started,
                                result: result)
            try queue.enqueue(report)
            journal.end()
            return Outcome(bundle: bundle, backend: backend, result: result, report: report)
        } catch {
            pending.status = "error"
            pending.error = Report.RunError(kind: (error as? MemwallError)?.kind.rawValue ?? "exception", message: "\(error)")
            _ = try? queue.enqueue(pending)  // the run failed already; a full disk must not hide why
            journal.end()
            throw error
        }
    }
}
