package dev.memwall.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import java.nio.file.Files

/**
 * The per-call training path (accumulation + the app's optimizer + checkpoints) fed with the gradients the Python
 * runner recorded in tests/golden/accumulation.json: its calls' gradients are what the runtime returns here.
 */
class TrainingTest {
    private val golden = Golden.json("accumulation.json")
    private val tolerance = golden.obj("tolerance")

    /** The golden case as a bundle manifest: its two parameters, its optimizer, its micro-batch count. */
    private val manifest: Manifest = run {
        val raw = LinkedHashMap(Manifest.parse(Golden.file("manifest-executorch.json").readBytes()).raw.map)
        val params = golden.obj("params")
        raw["trainable"] = params.map.keys.map { name ->
            val shape = params.obj(name).longs("shape")
            mapOf("name" to name, "shape" to shape, "dtype" to "float32", "numel" to shape.fold(1L) { a, b -> a * b })
        }
        raw["optimizer"] = golden.obj("optimizer").map
        raw["training"] = mapOf("batch_size" to 4L, "micro_batches" to golden.long("micro_batches"))
        Manifest.parse(Json.write(raw).toByteArray())
    }

    private inner class RecordedRuntime : PerCallBackend(manifest) {
        val params = Golden.named(golden.obj("params"))
        private val calls = golden.objects("calls").iterator()
        var changes = 0
        override val support = BackendSupport("recorded", "executorch", setOf("app"))
        override fun trainCall(batch: Batch, info: StepInfo): CallResult =
            calls.next().let { CallResult(it.double("loss").toFloat(), Golden.named(it.obj("grads"))) }
        override fun runtimeOptimizerStep(info: StepInfo) = throw AssertionError("the app's optimizer runs these bundles")
        override fun trainableParameters() = params
        override fun parametersChanged() { changes++ }
        override fun predict(input: FloatArray) = FloatArray(0)
        override fun close() {}
    }

    private fun batches() = List(manifest.microBatches) { Batch(FloatArray(0), LongArray(0)) }

    @Test
    fun oneStepAccumulatesTheCallsAndAppliesTheManifestOptimizer() {
        val runtime = RecordedRuntime()
        val loss = runtime.trainStep(batches(), StepInfo(1, manifest.optimizer.lr, manifest.microBatches))
        assertEquals(golden.double("loss"), loss, 1e-6)  // float32 losses averaged in double
        Golden.assertClose("params after", Golden.named(golden.obj("params_after")), runtime.params, tolerance)
        assertEquals(1, runtime.changes)
    }

    @Test
    fun aCheckpointRestoresParametersStateAndPosition() {
        val dir = Files.createTempDirectory("train").toFile()
        val first = RecordedRuntime()
        first.trainStep(batches(), StepInfo(1, manifest.optimizer.lr, manifest.microBatches))
        first.saveCheckpoint(File(dir, Checkpoint.FILE_NAME), dataPosition = 3)
        val second = RecordedRuntime()
        assertEquals(3L, second.loadCheckpoint(File(dir, Checkpoint.FILE_NAME)))
        Golden.assertClose("restored", first.params, second.params, tolerance)
        val saved = Checkpoint.load(File(dir, Checkpoint.FILE_NAME))
        assertEquals(manifest.sha256, saved.manifestSha256)
        assertTrue(saved.tensors.keys.any { it.startsWith("optimizer/momentum/") })
    }

    @Test
    fun aWrongNumberOfMicroBatchesIsRefused() {
        val error = runCatching { RecordedRuntime().trainStep(batches().drop(1), StepInfo(1, 0.1, 3)) }.exceptionOrNull()
        assertTrue(error?.message, error is IllegalArgumentException && error.message!!.contains("micro-batches"))
    }
}
