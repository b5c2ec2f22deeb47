package dev.memwall.demo

import dev.memwall.core.Bundle
import dev.memwall.core.HostTools
import dev.memwall.core.Json
import dev.memwall.core.JsonObject
import dev.memwall.core.MemoryRecord
import dev.memwall.core.MemorySampler
import dev.memwall.core.Reports
import dev.memwall.core.RunRecord
import dev.memwall.core.Trainer
import java.io.File

/**
 * The app's native path on the host: Kotlin (core Trainer) -> JNI (memwall_jni.cpp) -> the C++ core -> ExecuTorch,
 * training a real bundle. Run by tests/test_android.py with -Djava.library.path pointing at the host build.
 *
 *   JniHostTraining BUNDLE SAMPLES.json STEPS CHECKPOINT DEVICE_ID  -> JSON: losses, accuracies, checks, report
 */
object JniHostTraining {
    @JvmStatic
    fun main(args: Array<String>) {
        check(NativeBackend.available) { "libmemwall_jni not on java.library.path" }
        val bundle = Bundle.open(File(args[0]))
        val m = bundle.manifest
        val data = JsonObject.parse(File(args[1]).readText(), "samples")
        fun samples(key: String) = data.objects(key).map { s -> s.doubles("x").map { it.toFloat() }.toFloatArray() to s.int("y") }
        val train = samples("train")
        val test = samples("test")
        val steps = args[2].toInt()
        val checkpoint = File(args[3])
        val record = RunRecord(batchSize = m.batchSize, microBatches = m.microBatches, threads = 1, runtime = Reports.NATIVE_RUNTIME)
        val sampler = MemorySampler(intervalMs = 20)
        val result = LinkedHashMap<String, Any?>()
        NativeBackend(bundle).use { backend ->
            val trainer = Trainer(m, backend, train)
            record.accuracyBefore = trainer.accuracy(test)
            repeat(steps) {
                val start = System.nanoTime()
                record.lossCurve.add(trainer.step())
                record.stepTimesMs.add((System.nanoTime() - start) / 1e6)
            }
            record.accuracyAfter = trainer.accuracy(test)
            backend.saveCheckpoint(checkpoint, trainer.dataPosition)
            val x0 = test[0].first
            val probe = FloatArray(x0.size * m.callBatch) { x0[it % x0.size] }
            val logits = backend.predict(probe)
            NativeBackend(bundle).use { resumed ->
                result["resumed_data_position"] = resumed.loadCheckpoint(checkpoint)
                result["resumed_predicts_the_same"] = logits.contentEquals(resumed.predict(probe))
            }
            result["data_position"] = trainer.dataPosition
        }
        sampler.close()
        val memory = MemoryRecord(sampler.baselineBytes, sampler.peakBytes(), sampler.samples())
        result["report"] = Reports.build(HostTools.hostDevice(args[4]), Reports.bundleSection(m, Reports.NATIVE_RUNTIME), record.toJson(), memory.toJson(), "ok")
        println(Json.write(result))
    }
}
