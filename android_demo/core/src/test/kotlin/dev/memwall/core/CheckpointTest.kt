package dev.memwall.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import java.nio.file.Files

class CheckpointTest {
    private val golden = Golden.json("checkpoint.json")

    @Test
    fun readsTheCheckpointThePythonRunnerWrote() {
        val checkpoint = Checkpoint.load(Golden.file("checkpoint.safetensors"))
        val meta = golden.obj("metadata")
        assertEquals(meta.string("steps").toLong(), checkpoint.steps)
        assertEquals(meta.string("data_position").toLong(), checkpoint.dataPosition)
        assertEquals(sha256Hex(Golden.file("checkpoint-manifest.json")), checkpoint.manifestSha256)
        val tensors = golden.obj("tensors")
        assertEquals(tensors.map.keys, checkpoint.tensors.keys)
        for (name in tensors.map.keys) {
            val t = tensors.obj(name)
            assertEquals(t.longs("shape"), checkpoint.tensors.getValue(name).shape)
            // Bit-exact: the JSON numbers are the float32 values themselves.
            assertArrayEquals(t.doubles("values").map { it.toFloat() }.toFloatArray(), checkpoint.tensors.getValue(name).values, 0f)
        }
    }

    @Test
    fun writesTheSameBytesAsThePythonRunner() {
        val original = Golden.file("checkpoint.safetensors").readBytes()
        val dir = Files.createTempDirectory("ckpt").toFile()
        val out = File(dir, Checkpoint.FILE_NAME)
        Checkpoint.load(Golden.file("checkpoint.safetensors")).save(out)
        assertArrayEquals(original, out.readBytes())
        assertEquals(listOf(Checkpoint.FILE_NAME), dir.list()!!.toList())  // no temp file left behind
    }

    @Test
    fun aTruncatedCheckpointIsRefusedWithTheFix() {
        val bytes = Golden.file("checkpoint.safetensors").readBytes()
        for (cut in listOf(4, 20, bytes.size - 3)) {
            val message = runCatching { Checkpoint.parse(bytes.copyOf(cut), "x") }.exceptionOrNull()
            assertTrue("cut at $cut: $message", message is BundleError && message.message!!.contains("delete it and train again"))
        }
    }
}
