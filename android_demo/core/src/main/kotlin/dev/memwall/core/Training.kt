package dev.memwall.core

import java.io.File

/** One call's data: a micro-batch of inputs (flattened, the manifest's input shape) and its labels. */
class Batch(val input: FloatArray, val labels: LongArray)

/** What one call of the train method gives back. */
class CallResult(
    val loss: Float,
    /** Gradients by trainable name when the app applies the optimizer; empty when the backend does. */
    val gradients: Map<String, FloatArray>,
)

/** Where a call sits in training: the program-side optimizers (fused update, ONNX Runtime) need these. */
class StepInfo(
    /** 1-based optimizer step this call belongs to. */
    val step: Long,
    val learningRate: Double,
    /** Calls per optimizer step: ONNX Runtime bundles take 1 / this as their loss_scale input. */
    val microBatches: Int,
)

/**
 * A runtime that trains a bundle: ExecuTorch (stock TrainingModule or the C++ core through JNI), ONNX Runtime.
 * The core's [Trainer] drives it; the runtimes live in the app module (and the JNI host test), never here.
 */
interface TrainingBackend : AutoCloseable {
    val support: BackendSupport

    /** One optimizer step over [batches] (manifest.training.micro_batches of them); the mean of their losses. */
    fun trainStep(batches: List<Batch>, info: StepInfo): Double

    /** Logits of one batch (the manifest's input shape), flattened [batch, classes]. */
    fun predict(input: FloatArray): FloatArray

    /** Saves parameters, optimizer state and progress in the bundle's checkpoint format. */
    fun saveCheckpoint(file: File, dataPosition: Long)

    /** Restores [saveCheckpoint]'s file (or the host runner's); returns the data position to continue from. */
    fun loadCheckpoint(file: File): Long
}

/**
 * A backend whose runtime runs the train method once per micro-batch. Where the manifest puts the optimizer in the
 * app (optimizer_runs_in = "app"), the runtime hands back gradients and this class accumulates them and applies the
 * manifest's optimizer to [trainableParameters]; otherwise the runtime's own optimizer runs ([runtimeOptimizerStep]).
 */
abstract class PerCallBackend(val manifest: Manifest) : TrainingBackend {
    /** One call of the train method; gradients by trainable name when the app applies the optimizer. */
    protected abstract fun trainCall(batch: Batch, info: StepInfo): CallResult

    /** The optimizer step of a runtime that owns it (fused program: nothing left to do; ONNX Runtime: its optimizer). */
    protected abstract fun runtimeOptimizerStep(info: StepInfo)

    /** Arrays the runtime trains from, updated in place by the app's optimizer (only for optimizer_runs_in = "app"). */
    protected abstract fun trainableParameters(): Map<String, FloatArray>

    /** The app's optimizer changed [trainableParameters]: the runtime uses them from the next call. */
    protected abstract fun parametersChanged()

    private val appOptimizer: Pair<Optimizer, Accumulator>? by lazy {
        if (manifest.optimizerRunsIn != "app") return@lazy null
        val params = trainableParameters()
        Optimizer(manifest.optimizer, params) to Accumulator(params.mapValues { it.value.size })
    }

    override fun trainStep(batches: List<Batch>, info: StepInfo): Double {
        require(batches.size == manifest.microBatches) { "a step takes ${manifest.microBatches} micro-batches, got ${batches.size}" }
        var lossSum = 0.0
        val app = appOptimizer
        for (batch in batches) {
            val result = trainCall(batch, info)
            lossSum += result.loss
            app?.second?.add(result.gradients)
        }
        if (app != null) {
            app.first.step(app.second.mean())
            parametersChanged()
        } else {
            runtimeOptimizerStep(info)
        }
        return lossSum / batches.size
    }

    override fun saveCheckpoint(file: File, dataPosition: Long) =
        Checkpoint.of(manifest, (appOptimizer ?: throw keptByRuntime()).first, dataPosition).save(file)

    override fun loadCheckpoint(file: File): Long {
        val checkpoint = Checkpoint.load(file)
        checkpoint.restoreInto(manifest, (appOptimizer ?: throw keptByRuntime()).first)
        parametersChanged()
        return checkpoint.dataPosition
    }

    private fun keptByRuntime() = BundleError("this backend keeps no checkpoint of ${manifest.name} (its optimizer runs in '${manifest.optimizerRunsIn}')")
}

/**
 * Micro-batch accumulation exactly as the host runner's train_step: the gradients of each call summed in call order,
 * divided by the number of calls in float32 (tests/golden/accumulation.json).
 */
class Accumulator(shapes: Map<String, Int>) {
    private val sums: Map<String, FloatArray> = shapes.mapValues { FloatArray(it.value) }
    private var calls = 0

    fun add(gradients: Map<String, FloatArray>) {
        for ((name, sum) in sums) {
            val g = gradients[name] ?: throw IllegalStateException("the backend returned no gradient for $name")
            require(g.size == sum.size) { "gradient of $name has ${g.size} values, expected ${sum.size}" }
            if (calls == 0) g.copyInto(sum) else for (i in sum.indices) sum[i] += g[i]
        }
        calls++
    }

    /** The mean gradients of the calls since the last [mean]; the next [add] starts a new step. */
    fun mean(): Map<String, FloatArray> {
        check(calls > 0) { "no gradients accumulated" }
        val k = calls.toFloat()
        for (sum in sums.values) for (i in sum.indices) sum[i] = sum[i] / k
        calls = 0
        return sums
    }
}

/** The training loop: steps over the user's samples, step times and losses recorded, accuracy before and after. */
class Trainer(val manifest: Manifest, val backend: TrainingBackend, private val samples: List<Pair<FloatArray, Int>>) {
    init {
        require(samples.isNotEmpty()) { "no samples to train on" }
    }

    var steps = 0L
        private set

    /** Batches consumed so far: a resumed run continues the same stream (a checkpoint's data_position). */
    var dataPosition = 0L

    /** One optimizer step on the next micro-batches of the samples (cycled in order); returns the step's loss. */
    fun step(): Double {
        val batches = List(manifest.microBatches) { nextBatch() }
        val loss = backend.trainStep(batches, StepInfo(steps + 1, manifest.optimizer.lr, manifest.microBatches))
        steps++
        return loss
    }

    private fun nextBatch(): Batch {
        val per = manifest.input.numel.toInt() / manifest.callBatch
        val input = FloatArray(per * manifest.callBatch)
        val labels = LongArray(manifest.callBatch)
        for (i in 0 until manifest.callBatch) {
            val (x, y) = samples[((dataPosition * manifest.callBatch + i) % samples.size).toInt()]
            x.copyInto(input, i * per)
            labels[i] = y.toLong()
        }
        dataPosition++
        return Batch(input, labels)
    }

    /** Fraction of [test] whose predicted class is the label; batches padded by repeating the last sample. */
    fun accuracy(test: List<Pair<FloatArray, Int>>): Double {
        if (test.isEmpty()) return 0.0
        val per = manifest.input.numel.toInt() / manifest.callBatch
        val classes = manifest.classes.size
        var correct = 0
        for (chunk in test.chunked(manifest.callBatch)) {
            val input = FloatArray(per * manifest.callBatch)
            for (i in 0 until manifest.callBatch) chunk[minOf(i, chunk.size - 1)].first.copyInto(input, i * per)
            val logits = backend.predict(input)
            chunk.forEachIndexed { i, (_, label) ->
                var best = 0
                for (c in 1 until classes) if (logits[i * classes + c] > logits[i * classes + best]) best = c
                if (best == label) correct++
            }
        }
        return correct.toDouble() / test.size
    }
}
