// The ONNX Runtime backend: a memwall onnxruntime bundle (training/eval/optimizer models + checkpoint) trained
// with onnxruntime-training-objc 1.19.2 (the last published training pod; App/Podfile). The pod exists for
// Apple platforms only, so without it (Linux, `swift build` here) this file compiles to `isAvailable = false`.
import Foundation
import MemwallCore

#if canImport(onnxruntime_training_objc)
import onnxruntime_training_objc

public final class OnnxRuntimeBackend: TrainingBackend {
    public static let isAvailable = true
    public let bundle: TrainingBundle
    public let threads = 1
    /// ONNX Runtime's own training runtime: the manifest predicts no memory for it (memory.by_runtime has the host
    /// runner's and the memwall native runtime's), so its reports carry the top-level prediction, as the lab reads it.
    public let runtime = "onnxruntime_training"
    private let env: ORTEnv
    private let session: ORTTrainingSession
    private let checkpoint: ORTCheckpoint

    public init(bundle: TrainingBundle) throws {
        guard bundle.manifest.backend == "onnxruntime" else {
            throw MemwallError(.unsupported, "bundle \(bundle.manifest.name) is for \(bundle.manifest.backend), not onnxruntime")
        }
        func path(_ role: String) throws -> String {
            guard let url = bundle.url(role: role) else {
                throw MemwallError(.bundle, "the bundle has no \(role) file; re-export it with --backend onnxruntime")
            }
            return url.path
        }
        self.bundle = bundle
        env = try ORTEnv(loggingLevel: .warning)
        checkpoint = try ORTCheckpoint(path: try path("checkpoint"))
        // The manifest's cpu_mem_arena: false has no switch in the Objective-C API (the C API's
        // DisableCpuMemArena is not exposed), so a run here keeps ORT's CPU arena: on a full fine-tune that was
        // about +100 MB over the prediction on the host (305 vs 201 MB), which the lab's report will show.
        let options = try ORTSessionOptions()
        session = try ORTTrainingSession(env: env, sessionOptions: options, checkPoint: checkpoint,
                                         trainModelPath: try path("training_model"), evalModelPath: try path("eval_model"),
                                         optimizerModelPath: try path("optimizer_model"))
    }

    private func value(_ data: TensorData, shape: [Int]) throws -> ORTValue {
        let nsShape = shape.map { NSNumber(value: $0) }
        switch data {
        case let .float32(values):
            return try ORTValue(tensorData: NSMutableData(data: values.withUnsafeBytes { Data($0) }), elementType: .float, shape: nsShape)
        case let .int64(values):
            return try ORTValue(tensorData: NSMutableData(data: values.withUnsafeBytes { Data($0) }), elementType: .int64, shape: nsShape)
        }
    }

    /// micro_batches train_step calls (gradients add up in ORT; the loss_scale input 1/k makes their sum the mean),
    /// then the optimizer model, then lazyResetGrad.
    public func trainStep(_ microBatches: [Batch]) throws -> Double {
        let m = bundle.manifest
        let scale = try value(.float32([1 / Float(m.training.microBatches)]), shape: [])
        var total = 0.0
        for batch in microBatches {
            var feeds = try zip(batch.inputs, m.inputs).map { try value($0, shape: $1.shape) }
            feeds.append(try value(batch.labels, shape: m.labels.shape))
            feeds.append(scale)
            let outputs = try session.trainStep(withInputValues: feeds)
            let loss = try outputs[0].tensorData() as Data
            total += Double(loss.withUnsafeBytes { $0.load(as: Float.self) })
        }
        try session.optimizerStep()
        try session.lazyResetGrad()
        return total / Double(microBatches.count)
    }

    public func predict(_ inputs: [TensorData]) throws -> [Float] {
        let feeds = try zip(inputs, bundle.manifest.inputs).map { try value($0, shape: $1.shape) }
        let outputs = try session.evalStep(withInputValues: feeds)
        let data = try outputs[0].tensorData() as Data
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// ORT hands the trainable parameters out as one contiguous buffer in its own order, not by name.
    public func parameters() throws -> [(name: String, values: [Float])] {
        let data = try session.toBuffer(withTrainable: true).tensorData() as Data
        return [("trainable", data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) })]
    }
}
#else
/// Without the onnxruntime-training-objc pod this build cannot train ONNX Runtime bundles.
public enum OnnxRuntimeBackend {
    public static let isAvailable = false
}
#endif
