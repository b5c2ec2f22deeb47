package dev.memwall.demo

import dev.memwall.core.BackendSupport
import dev.memwall.core.Batch
import dev.memwall.core.Bundle
import dev.memwall.core.StepInfo
import dev.memwall.core.TrainingBackend
import java.io.File

/**
 * The C++ training core (runtime/, include/memwall.h) through JNI (app/src/main/cpp/memwall_jni.cpp): every
 * ExecuTorch bundle kind — the manifest's optimizer (SGD or AdamW, PyTorch rules) and micro-batches run in C++,
 * checkpoints in the bundle's safetensors format. The same JNI code is tested on the host (tests/test_android.py).
 */
class NativeBackend(bundle: Bundle) : TrainingBackend {
    override val support = BackendSupport("ExecuTorch (C++ core)", "executorch", setOf("app", "program"))
    private val manifest = bundle.manifest
    private var handle: Long

    init {
        bundle.requireRunnable(support)
        handle = NativeCore.open(bundle.directory.absolutePath)
    }

    override fun trainStep(batches: List<Batch>, info: StepInfo): Double {
        require(batches.size == manifest.microBatches) { "a step takes ${manifest.microBatches} micro-batches, got ${batches.size}" }
        val per = batches[0].input.size
        val inputs = FloatArray(per * batches.size)
        val labels = LongArray(batches[0].labels.size * batches.size)
        batches.forEachIndexed { i, b ->
            b.input.copyInto(inputs, i * per)
            b.labels.copyInto(labels, i * b.labels.size)
        }
        return NativeCore.trainStep(handle, inputs, labels, batches.size)
    }

    override fun predict(input: FloatArray): FloatArray =
        FloatArray(manifest.callBatch * manifest.classes.size).also { NativeCore.predict(handle, input, it) }

    override fun saveCheckpoint(file: File, dataPosition: Long) = NativeCore.saveCheckpoint(handle, file.absolutePath, dataPosition)

    override fun loadCheckpoint(file: File): Long = NativeCore.loadCheckpoint(handle, file.absolutePath)

    override fun close() {
        NativeCore.close(handle)
        handle = 0
    }

    companion object {
        /** True when libmemwall_jni.so is in the APK (built by Gradle's externalNativeBuild with the NDK). */
        val available: Boolean by lazy { runCatching { System.loadLibrary("memwall_jni") }.isSuccess }
    }
}

/**
 * JNI entry points of libmemwall_jni.so (app/src/main/cpp/memwall_jni.cpp over runtime/include/memwall.h).
 * Every failure arrives as an IllegalStateException carrying mw_last_error(): one line naming problem and fix.
 */
object NativeCore {
    /** Verifies and loads the bundle at [directory]; a handle for the other calls. */
    @JvmStatic external fun open(directory: String): Long

    /** One optimizer step over [count] micro-batches laid end to end; the mean loss. */
    @JvmStatic external fun trainStep(handle: Long, inputs: FloatArray, labels: LongArray, count: Int): Double

    @JvmStatic external fun predict(handle: Long, input: FloatArray, logits: FloatArray)

    @JvmStatic external fun saveCheckpoint(handle: Long, path: String, dataPosition: Long)

    /** Returns the checkpoint's data position. */
    @JvmStatic external fun loadCheckpoint(handle: Long, path: String): Long

    @JvmStatic external fun close(handle: Long)
}
