package dev.memwall.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import java.nio.file.Files

class ManifestTest {
    private val executorchApp = BackendSupport("ExecuTorch (C++ core via JNI)", "executorch", setOf("app"))
    private val executorchStock = BackendSupport("ExecuTorch TrainingModule", "executorch", setOf("program"))
    private val onnxruntime = BackendSupport("ONNX Runtime training", "onnxruntime", setOf("onnxruntime"))

    private fun manifest(name: String) = Manifest.parse(Golden.file("manifest-$name.json").readBytes())

    private fun refusal(block: () -> Unit): String =
        (runCatching(block).exceptionOrNull() as? BundleError)?.message ?: throw AssertionError("not refused")

    @Test
    fun parsesEveryBundleKindTheExporterWrites() {
        val plain = manifest("executorch")
        assertEquals("executorch", plain.backend)
        assertEquals(listOf(4L, 1L, 8L, 8L), plain.input.shape)
        assertEquals(6, plain.trainable.size)
        assertEquals("app", plain.optimizerRunsIn)
        assertEquals(2, manifest("executorch-micro-batches").microBatches)
        assertEquals("program", manifest("executorch-fused-update").optimizerRunsIn)
        assertEquals("adamw", manifest("onnxruntime").optimizer.kind)
        assertEquals("onnxruntime", manifest("onnxruntime").optimizerRunsIn)
        assertEquals(sha256Hex(Golden.file("manifest-executorch.json")), plain.sha256)
    }

    @Test
    fun refusesASchemaVersionItDoesNotKnow() {
        val message = refusal { Manifest.parse(Golden.file("manifest-bad-schema-version.json").readBytes()) }
        assertTrue(message, message.contains("schema_version 2") && message.contains("update the app"))
    }

    @Test
    fun refusesNonsenseWithOneLine() {
        assertTrue(refusal { Manifest.parse("{not json".toByteArray()) }.contains("not valid JSON"))
        val message = refusal { Manifest.parse("""{"schema_version": 1, "backend": "executorch"}""".toByteArray()) }
        assertTrue(message, message.contains("does not follow schema v1") && !message.contains("\n"))
    }

    @Test
    fun eachBackendRefusesWhatItCannotTrainAndNamesTheFix() {
        val stock = executorchStock
        val bundleOf = { name: String -> bundle(manifest(name).raw.map) }
        bundleOf("executorch-fused-update").requireRunnable(stock)
        bundleOf("executorch").requireRunnable(executorchApp)
        bundleOf("executorch-micro-batches").requireRunnable(executorchApp)
        bundleOf("onnxruntime").requireRunnable(onnxruntime)
        assertTrue(refusal { bundleOf("executorch").requireRunnable(stock) }.contains("--fused-update"))
        assertTrue(refusal { bundleOf("onnxruntime").requireRunnable(executorchApp) }.contains("--backend executorch"))
        assertTrue(refusal { bundleOf("executorch").requireRunnable(onnxruntime) }.contains("--backend onnxruntime"))
    }

    @Test
    fun openingABundleChecksEveryFile() {
        val raw = manifest("executorch").raw.map
        val dir = bundleDir(raw, "model.pte", "weights".toByteArray())
        assertEquals("mlp-executorch", Bundle.open(dir).manifest.name)
        File(dir, "model.pte").writeBytes("weightz".toByteArray())
        assertTrue(refusal { Bundle.open(dir) }.contains("does not match its sha256"))
        File(dir, "model.pte").writeBytes("weight".toByteArray())
        assertTrue(refusal { Bundle.open(dir) }.contains("incomplete"))
        val escaping = bundleDir(raw, "../outside.pte", "weights".toByteArray())
        assertTrue(refusal { Bundle.open(escaping) }.contains("outside the bundle"))
        assertTrue(refusal { Bundle.open(Files.createTempDirectory("empty").toFile()) }.contains("no manifest.json"))
    }

    /** A bundle directory holding [raw] with its files replaced by one program file of [content]. */
    private fun bundleDir(raw: Map<String, Any?>, path: String, content: ByteArray): File {
        val dir = Files.createTempDirectory("bundle").toFile()
        val sub = File(dir, "b").apply { mkdirs() }
        File(sub, path).apply { parentFile.mkdirs() }.writeBytes(content)
        val manifest = LinkedHashMap(raw)
        manifest["files"] = mapOf("program" to mapOf("path" to path, "sha256" to sha256Hex(content), "bytes" to content.size.toLong()))
        File(sub, Bundle.MANIFEST_NAME).writeText(Json.write(manifest))
        return sub
    }

    private fun bundle(raw: Map<String, Any?>): Bundle = Bundle.open(bundleDir(raw, "model.bin", ByteArray(16)))
}
