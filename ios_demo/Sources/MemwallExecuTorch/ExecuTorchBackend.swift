// The ExecuTorch backend: the native C++ core (runtime/, C API runtime/include/memwall.h) runs the bundle's
// train and predict methods on the stock ExecuTorch runtime, with the manifest's micro-batches and optimizer
// (the app-side rules of sdk_tools/runner/optim.py, or the program's fused update). ExecuTorch publishes no iOS
// training API; none is needed, because a memwall train method is a plain program method.
import CMemwall
import Foundation
import MemwallCore

public final class ExecuTorchBackend: TrainingBackend {
    public let bundle: TrainingBundle
    private let handle: OpaquePointer
    private let session: OpaquePointer

    /// `threads` 0: what the manifest's backend_options.runtime asks for.
    public init(bundle: TrainingBundle, threads: Int32 = 0) throws {
        guard bundle.manifest.backend == "executorch" else {
            throw MemwallError(.unsupported, "bundle \(bundle.manifest.name) is for \(bundle.manifest.backend), not executorch")
        }
        self.bundle = bundle
        var opened: OpaquePointer?
        try Self.check(mw_bundle_open(bundle.directory.path, &opened), .bundle)
        handle = opened!
        var options = mw_session_options(threads: threads)
        var created: OpaquePointer?
        let status = mw_session_create(handle, &options, &created)
        if status != MW_OK { mw_bundle_free(handle) }
        try Self.check(status, .runtime)
        session = created!
    }

    deinit {
        mw_session_free(session)
        mw_bundle_free(handle)
    }

    public var threads: Int { Int(mw_session_threads(session)) }
    public var runtime: String { Manifest.nativeRuntime }

    public var steps: Int { Int(mw_session_steps(session)) }

    private static func check(_ status: mw_status, _ kind: MemwallError.Kind) throws {
        guard status == MW_OK else {
            throw MemwallError(kind, "\(String(cString: mw_status_name(status))): \(String(cString: mw_last_error()))")
        }
    }

    /// Raw buffers of `tensors` that stay valid until `body` returns.
    private func withBuffers<R>(_ tensors: [TensorData], _ body: ([UnsafeRawPointer?]) throws -> R) rethrows -> R {
        let buffers: [UnsafeMutableRawPointer] = tensors.map { tensor in
            switch tensor {
            case let .float32(values):
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: values.count * 4, alignment: 16)
                values.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                return buffer
            case let .int64(values):
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: values.count * 8, alignment: 16)
                values.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                return buffer
            }
        }
        defer { buffers.forEach { $0.deallocate() } }
        return try body(buffers.map { UnsafeRawPointer($0) })
    }

    public func trainStep(_ microBatches: [Batch]) throws -> Double {
        // Inputs of every micro-batch, then its labels, as one list of buffers.
        let tensors = microBatches.flatMap { $0.inputs + [$0.labels] }
        let perCall = (microBatches.first?.inputs.count ?? 0) + 1
        return try withBuffers(tensors) { pointers in
            let inputLists = (0 ..< microBatches.count).map { call -> UnsafeMutablePointer<UnsafeRawPointer?> in
                let list = UnsafeMutablePointer<UnsafeRawPointer?>.allocate(capacity: max(1, perCall - 1))
                for i in 0 ..< perCall - 1 { list[i] = pointers[call * perCall + i] }
                return list
            }
            defer { inputLists.forEach { $0.deallocate() } }
            let batches = (0 ..< microBatches.count).map { call in
                mw_batch(inputs: inputLists[call], input_count: perCall - 1, labels: pointers[call * perCall + perCall - 1])
            }
            var loss = 0.0
            try Self.check(batches.withUnsafeBufferPointer { mw_train_step(session, $0.baseAddress, $0.count, &loss) }, .runtime)
            return loss
        }
    }

    public func predict(_ inputs: [TensorData]) throws -> [Float] {
        let m = bundle.manifest
        var logits = [Float](repeating: 0, count: m.callBatchSize * m.classes.count)
        try withBuffers(inputs) { pointers in
            let status = pointers.withUnsafeBufferPointer { list in
                logits.withUnsafeMutableBufferPointer { mw_predict(session, list.baseAddress, list.count, $0.baseAddress, $0.count) }
            }
            try Self.check(status, .runtime)
        }
        return logits
    }

    public func parameters() throws -> [(name: String, values: [Float])] {
        try (0 ..< mw_parameter_count(session)).map { index in
            var info = mw_tensor_info()
            try Self.check(mw_parameter_info(session, index, &info), .runtime)
            var values = [Float](repeating: 0, count: Int(info.numel))
            try Self.check(values.withUnsafeMutableBufferPointer { mw_parameter_read(session, index, $0.baseAddress, $0.count) }, .runtime)
            return (String(cString: info.name), values)
        }
    }

    /// The native core's checkpoint (the same safetensors layout as MemwallCore.Checkpoint and the Python runner).
    public func saveCheckpoint(to url: URL, dataPosition: Int) throws {
        try Self.check(mw_checkpoint_save(session, url.path, Int64(dataPosition)), .checkpoint)
    }

    /// Restores parameters, optimizer state and steps; returns the batches (training calls) consumed before.
    public func loadCheckpoint(from url: URL) throws -> Int {
        var position: Int64 = 0
        try Self.check(mw_checkpoint_load(session, url.path, &position), .checkpoint)
        return Int(position)
    }
}
