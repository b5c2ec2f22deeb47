#if canImport(UIKit)
import MemwallCore

/// The runtime a bundle's manifest asks for, where this build has it. The backends' sources
/// (Sources/MemwallExecuTorch, Sources/MemwallOnnxRuntime) are compiled into the app target (project.yml), where
/// the native core's module and the onnxruntime pod are visible.
enum Backends {
    static func make(_ bundle: TrainingBundle) throws -> TrainingBackend {
        switch bundle.manifest.backend {
        case "executorch":
            #if canImport(CMemwall)
            return try ExecuTorchBackend(bundle: bundle)
            #else
            throw MemwallError(.unsupported, "this build has no ExecuTorch runtime; build the app with the native core (README, iOS demo)")
            #endif
        default:
            #if canImport(onnxruntime_training_objc)
            return try OnnxRuntimeBackend(bundle: bundle)
            #else
            throw MemwallError(.unsupported, "this build has no ONNX Runtime; run `pod install` in ios_demo/App (README, iOS demo)")
            #endif
        }
    }
}
#endif
