package dev.memwall.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

class NamedTensor(val shape: List<Long>, val values: FloatArray)

/**
 * A training checkpoint in the bundle's format (README "The bundle format"): one safetensors file with the trainable
 * parameters by runtime name, optimizer state as `optimizer/<state>/<name>`, and metadata. Byte for byte what
 * sdk_tools/runner/checkpoint.py writes, so either side resumes the other's (tests/golden/checkpoint.safetensors).
 */
class Checkpoint(
    val steps: Long,
    val dataPosition: Long,
    val tensors: Map<String, NamedTensor>,
    val manifestSha256: String,
) {
    fun save(file: File) = atomicWrite(file, toBytes())

    /** Puts this checkpoint's parameters and optimizer state into [optimizer] (for [manifest]'s bundle). */
    fun restoreInto(manifest: Manifest, optimizer: Optimizer) {
        if (manifestSha256 != manifest.sha256) {
            throw BundleError("checkpoint was saved for another bundle (manifest ${manifestSha256.take(12)}...); start fresh")
        }
        for ((name, p) in optimizer.params) {
            val t = tensors[name] ?: throw BundleError("checkpoint lacks parameter $name; start fresh")
            if (t.values.size != p.size) throw BundleError("checkpoint parameter $name has ${t.values.size} values, expected ${p.size}; start fresh")
            t.values.copyInto(p)
        }
        val state = tensors.filterKeys { it.startsWith(OPTIMIZER_PREFIX) }
        optimizer.loadState(steps, state.entries.associate { it.key.removePrefix(OPTIMIZER_PREFIX) to it.value.values })
    }

    fun toBytes(): ByteArray {
        val header = LinkedHashMap<String, Any?>()
        header["__metadata__"] = linkedMapOf(
            "format" to FORMAT,
            "version" to "1",
            "steps" to steps.toString(),
            "data_position" to dataPosition.toString(),
            "manifest_sha256" to manifestSha256,
        )
        var offset = 0L
        val names = tensors.keys.sorted()
        for (name in names) {
            val t = tensors.getValue(name)
            val size = t.values.size * 4L
            header[name] = linkedMapOf("dtype" to "F32", "shape" to t.shape, "data_offsets" to listOf(offset, offset + size))
            offset += size
        }
        var encoded = Json.write(header).toByteArray(Charsets.UTF_8)
        // The format aligns the data section to 8 bytes (padding with spaces, as the Python writer does).
        encoded += ByteArray((8 - encoded.size % 8) % 8) { ' '.code.toByte() }
        val out = ByteBuffer.allocate(8 + encoded.size + offset.toInt()).order(ByteOrder.LITTLE_ENDIAN)
        out.putLong(encoded.size.toLong())
        out.put(encoded)
        for (name in names) for (v in tensors.getValue(name).values) out.putFloat(v)
        return out.array()
    }

    companion object {
        const val FORMAT = "memwall.checkpoint"
        const val FILE_NAME = "checkpoint.safetensors"
        const val OPTIMIZER_PREFIX = "optimizer/"

        /** The trainable parameters and optimizer state of [optimizer], shaped as [manifest] says. */
        fun of(manifest: Manifest, optimizer: Optimizer, dataPosition: Long): Checkpoint {
            val shapes = manifest.trainable.associate { it.name to it.shape }
            val tensors = LinkedHashMap<String, NamedTensor>()
            for ((name, p) in optimizer.params) tensors[name] = NamedTensor(shapes.getValue(name), p)
            for ((key, s) in optimizer.state) tensors[OPTIMIZER_PREFIX + key] = NamedTensor(shapes.getValue(key.substringAfter('/')), s)
            return Checkpoint(optimizer.steps, dataPosition, tensors, manifest.sha256)
        }

        fun load(file: File): Checkpoint {
            if (!file.isFile) throw BundleError("no checkpoint at $file; train without resuming first")
            return parse(file.readBytes(), file.toString())
        }

        fun parse(bytes: ByteArray, what: String): Checkpoint {
            fun corrupt(why: String): Nothing = throw BundleError("checkpoint $what is corrupt ($why); delete it and train again")
            if (bytes.size < 8) corrupt("shorter than its header")
            val buf = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
            val headerLen = buf.getLong(0)
            if (headerLen < 2 || headerLen > bytes.size - 8) corrupt("header length $headerLen")
            val header = try {
                JsonObject.parse(String(bytes, 8, headerLen.toInt(), Charsets.UTF_8), "checkpoint header")
            } catch (e: Json.ParseError) {
                corrupt(e.message ?: "bad header")
            }
            val meta = if (header.has("__metadata__")) header.obj("__metadata__") else corrupt("no metadata")
            if (!meta.has("format") || meta.string("format") != FORMAT) throw BundleError("$what is not a memwall checkpoint")
            val dataStart = 8 + headerLen.toInt()
            val tensors = LinkedHashMap<String, NamedTensor>()
            for (name in header.map.keys) {
                if (name == "__metadata__") continue
                val t = header.obj(name)
                if (t.string("dtype") != "F32") corrupt("tensor $name is ${t.string("dtype")}, the app keeps float32")
                val shape = t.longs("shape")
                val (begin, end) = t.longs("data_offsets").let { if (it.size == 2) it[0] to it[1] else corrupt("offsets of $name") }
                val numel = shape.fold(1L) { a, b -> a * b }
                if (begin < 0 || end != begin + numel * 4 || dataStart + end > bytes.size) corrupt("offsets of $name")
                val values = FloatArray(numel.toInt())
                val view = ByteBuffer.wrap(bytes, dataStart + begin.toInt(), (end - begin).toInt()).order(ByteOrder.LITTLE_ENDIAN)
                view.asFloatBuffer().get(values)
                tensors[name] = NamedTensor(shape, values)
            }
            fun number(key: String) = (if (meta.has(key)) meta.string(key).toLongOrNull() else null) ?: corrupt("metadata $key")
            return Checkpoint(number("steps"), number("data_position"), tensors, if (meta.has("manifest_sha256")) meta.string("manifest_sha256") else corrupt("no manifest_sha256"))
        }
    }
}
