package dev.memwall.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import ai.onnxruntime.OrtTrainingSession
import dev.memwall.core.BackendSupport
import dev.memwall.core.Batch
import dev.memwall.core.Bundle
import dev.memwall.core.BundleError
import dev.memwall.core.CallResult
import dev.memwall.core.Manifest
import dev.memwall.core.PerCallBackend
import dev.memwall.core.Reports
import dev.memwall.core.StepInfo
import dev.memwall.core.TrainingBackend
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Tensor
import org.pytorch.executorch.training.TrainingModule
import java.nio.FloatBuffer
import java.nio.LongBuffer

/** Picks the runtime for a bundle, or refuses it with the reason and the export flag that would make it work. */
object Backends {
    // Runtimes the manifest predicts no memory for (memory.by_runtime has only the host's and the memwall native
    // one's): their reports carry the top-level prediction, as the lab reads a run.runtime it has no entry for.
    const val EXECUTORCH_MODULE = "executorch_training_module"
    const val ONNX_RUNTIME = "onnxruntime_training"

    /** The runtime [open] trains a bundle in: the report's run.runtime, a key of the manifest's memory.by_runtime. */
    fun runtimeFor(m: Manifest): String = when {
        m.backend == "onnxruntime" -> ONNX_RUNTIME
        NativeBackend.available -> Reports.NATIVE_RUNTIME
        else -> EXECUTORCH_MODULE
    }

    fun open(bundle: Bundle): TrainingBackend = when (runtimeFor(bundle.manifest)) {
        ONNX_RUNTIME -> OnnxRuntimeBackend(bundle)
        Reports.NATIVE_RUNTIME -> NativeBackend(bundle)
        else -> ExecuTorchFusedBackend(bundle)
    }
}

/**
 * ExecuTorch's stock Android TrainingModule, for fused-update bundles: the program applies the optimizer itself
 * (its train method takes lr and step inputs), so nothing outside the runtime touches the weights. Bundles whose
 * optimizer runs in the app need the C++ core ([NativeBackend]): TrainingModule's public API cannot write updated
 * parameters back into the runtime, and its SGD keeps state a checkpoint cannot reach.
 */
class ExecuTorchFusedBackend(private val bundle: Bundle) : PerCallBackend(bundle.manifest) {
    override val support = BackendSupport("ExecuTorch TrainingModule", "executorch", setOf("program"))
    private val module: TrainingModule
    private val train = manifest.methods.getValue("train")
    private val predictMethod = manifest.methods.getValue("predict")
    private val inputShape = manifest.input.shape.toLongArray()
    private val labelShape = manifest.labels.shape.toLongArray()

    /** The train method's latest parameter outputs by name: predict takes them as inputs. */
    private val live = HashMap<String, Tensor>()

    init {
        bundle.requireRunnable(support)
        module = TrainingModule.load(bundle.file("program").absolutePath)
    }

    override fun trainCall(batch: Batch, info: StepInfo): CallResult {
        val outputs = run(batch.input, batch.labels, info.step, info.learningRate)
        return CallResult(outputs[0].toTensor().dataAsFloatArray[0], emptyMap())
    }

    private fun run(input: FloatArray, labels: LongArray, step: Long, lr: Double): Array<EValue> {
        val args = train.inputs.map { name ->
            when (name) {
                train.inputs[0] -> EValue.from(Tensor.fromBlob(input, inputShape))
                train.inputs[1] -> EValue.from(Tensor.fromBlob(labels, labelShape))
                "lr" -> EValue.from(Tensor.fromBlob(floatArrayOf(lr.toFloat()), LongArray(0)))
                "step" -> EValue.from(Tensor.fromBlob(longArrayOf(step), LongArray(0)))
                else -> throw BundleError("train input '$name' is not one the app provides; re-export with this memwall")
            }
        }
        val outputs = module.executeForwardBackward(train.name, *args.toTypedArray())
        train.outputs.forEachIndexed { i, name -> if (manifest.trainable.any { it.name == name }) live[name] = outputs[i].toTensor() }
        return outputs
    }

    override fun runtimeOptimizerStep(info: StepInfo) = Unit  // the program updated the weights in its own call

    override fun trainableParameters() = throw BundleError("the program owns the weights of ${manifest.name}")

    override fun parametersChanged() = Unit

    override fun predict(input: FloatArray): FloatArray {
        if (live.isEmpty()) {
            // step 0 runs forward and backward without updating anything: it yields the initial weights.
            run(input, LongArray(manifest.labels.numel.toInt()), 0, 0.0)
        }
        val args = predictMethod.inputs.mapIndexed { i, name ->
            if (i == 0) EValue.from(Tensor.fromBlob(input, inputShape)) else EValue.from(live.getValue(name))
        }
        return module.executeForwardBackward(predictMethod.name, *args.toTypedArray())[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.close()
}

/**
 * ONNX Runtime's on-device training session (onnxruntime-training-android 1.19.2): the bundle's training, eval and
 * optimizer models with its checkpoint. The manifest's session settings apply (CPU arena off where the exporter
 * measured it cheaper); micro-batches add up in the session's gradient buffers with loss_scale = 1/k, then one
 * optimizer step and a gradient reset.
 */
class OnnxRuntimeBackend(private val bundle: Bundle) : PerCallBackend(bundle.manifest) {
    override val support = BackendSupport("ONNX Runtime training", "onnxruntime", setOf("onnxruntime"))
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtTrainingSession
    private val train = manifest.methods.getValue("train")
    private val predictMethod = manifest.methods.getValue("predict")
    private val inputShape = manifest.input.shape.toLongArray()
    private val labelShape = manifest.labels.shape.toLongArray()

    init {
        bundle.requireRunnable(support)
        val options = OrtSession.SessionOptions()
        val backendOptions = manifest.raw.obj("backend_options")
        if (backendOptions.has("cpu_mem_arena")) options.setCPUArenaAllocator(backendOptions.bool("cpu_mem_arena"))
        if (backendOptions.has("session_config")) {
            val config = backendOptions.obj("session_config")
            for (key in config.map.keys) options.addConfigEntry(key, config.string(key))
        }
        session = env.createTrainingSession(
            bundle.file("checkpoint").absolutePath,
            bundle.file("training_model").absolutePath,
            bundle.file("eval_model").absolutePath,
            bundle.file("optimizer_model").absolutePath,
            options,
        )
        session.setLearningRate(manifest.optimizer.lr.toFloat())
    }

    override fun trainCall(batch: Batch, info: StepInfo): CallResult {
        val tensors = LinkedHashMap<String, OnnxTensor>()
        try {
            tensors[train.inputs[0]] = OnnxTensor.createTensor(env, FloatBuffer.wrap(batch.input), inputShape)
            tensors[train.inputs[1]] = OnnxTensor.createTensor(env, LongBuffer.wrap(batch.labels), labelShape)
            if ("loss_scale" in train.inputs) {
                tensors["loss_scale"] = OnnxTensor.createTensor(env, FloatBuffer.wrap(floatArrayOf(1f / info.microBatches)), LongArray(0))
            }
            session.trainStep(tensors).use { result ->
                @Suppress("UNCHECKED_CAST")
                val loss = (result.get(0) as OnnxTensor).floatBuffer.get(0)
                return CallResult(loss, emptyMap())
            }
        } finally {
            tensors.values.forEach(OnnxTensor::close)
        }
    }

    override fun runtimeOptimizerStep(info: StepInfo) {
        session.optimizerStep()
        session.lazyResetGrad()
    }

    override fun trainableParameters() = throw BundleError("ONNX Runtime owns the weights of ${manifest.name}")

    override fun parametersChanged() = Unit

    override fun predict(input: FloatArray): FloatArray =
        OnnxTensor.createTensor(env, FloatBuffer.wrap(input), inputShape).use { x ->
            session.evalStep(mapOf(predictMethod.inputs[0] to x)).use { result ->
                val buffer = (result.get(0) as OnnxTensor).floatBuffer
                FloatArray(buffer.remaining()).also { buffer.get(it) }
            }
        }

    override fun close() = session.close()
}
