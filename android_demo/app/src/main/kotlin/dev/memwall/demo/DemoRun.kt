package dev.memwall.demo

import android.app.ActivityManager
import android.content.Context
import android.os.Build
import android.os.Debug
import dev.memwall.core.Bundle
import dev.memwall.core.Checkpoint
import dev.memwall.core.DeviceInfo
import dev.memwall.core.Json
import dev.memwall.core.LabClient
import dev.memwall.core.MemoryRecord
import dev.memwall.core.MemorySample
import dev.memwall.core.MemorySampler
import dev.memwall.core.MemoryStatus
import dev.memwall.core.ReportQueue
import dev.memwall.core.Reports
import dev.memwall.core.RunError
import dev.memwall.core.RunJournal
import dev.memwall.core.RunRecord
import dev.memwall.core.Trainer
import dev.memwall.core.atomicWrite
import java.io.File
import java.util.UUID

/** The app's persistent state: lab registration, the report queue, the journal of the running training. */
class DemoState(private val context: Context) {
    private val prefs = context.getSharedPreferences("memwall", Context.MODE_PRIVATE)
    val queue = ReportQueue(File(context.filesDir, "report-queue"))
    val journal = RunJournal(File(context.filesDir, "journal"))

    var labUrl: String?
        get() = prefs.getString("lab_url", null)
        set(value) = prefs.edit().putString("lab_url", value).apply()
    val token: String? get() = prefs.getString("token", null)

    /** The lab's id for this phone once registered; a local id before (such reports stay on the phone). */
    val deviceId: String
        get() = prefs.getString("device_id", null) ?: UUID.randomUUID().toString().also {
            prefs.edit().putString("device_id", it).apply()
        }

    fun register(url: String) {
        val registration = LabClient(url).registerDevice("${Build.MANUFACTURER} ${Build.MODEL}")
        prefs.edit().putString("lab_url", url).putString("device_id", registration.deviceId)
            .putString("token", registration.token).apply()
    }

    val memoryLimitBytes: Long
        get() = (context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager).largeMemoryClass.toLong() shl 20

    fun device(): DeviceInfo {
        val info = ActivityManager.MemoryInfo()
        (context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager).getMemoryInfo(info)
        return DeviceInfo(
            deviceId = deviceId,
            model = Build.MODEL,
            manufacturer = Build.MANUFACTURER,
            os = "android",
            osVersion = Build.VERSION.RELEASE,
            ramBytes = info.totalMem,
            abi = Build.SUPPORTED_ABIS.firstOrNull() ?: "unknown",
            appMemoryLimitBytes = memoryLimitBytes,
            cpu = Build.HARDWARE,
        )
    }

    /** Keeps [report] under files/reports/ and queues it for the lab when this phone is registered with one. */
    fun submit(report: Map<String, Any?>) {
        @Suppress("UNCHECKED_CAST")
        val reportId = (report["run"] as Map<String, Any?>)["report_id"] as String
        atomicWrite(File(context.filesDir, "reports/$reportId.json"), Json.write(report).toByteArray())
        val url = labUrl
        val token = token
        if (url != null && token != null) queue.enqueue(url, token, report)
    }

    /** At start: a run that never finished (out-of-memory kill, crash) becomes a failed report, once. */
    fun recoverInterruptedRun(): String? {
        val report = journal.recover(memoryLimitBytes) ?: return null
        submit(report)
        journal.discard()
        return report["status"] as String
    }
}

interface RunListener {
    fun onProgress(step: Int, steps: Int, loss: Double)
    fun onMemory(sample: MemorySample, peakBytes: Long)
    fun onPhase(text: String)
}

/**
 * One personalization run, on a background thread: accuracy before, [steps] optimizer steps, accuracy after, a
 * checkpoint, and a report.v1 for the lab. The journal is written before the runtime loads the bundle, so an
 * out-of-memory kill at any point is reported at the next start.
 */
class DemoRun(
    private val state: DemoState,
    private val bundle: Bundle,
    private val train: List<Pair<FloatArray, Int>>,
    private val test: List<Pair<FloatArray, Int>>,
    private val steps: Int,
    private val listener: RunListener,
) {
    fun run(): Map<String, Any?> {
        val m = bundle.manifest
        val device = state.device()
        val runtime = Backends.runtimeFor(m)
        val bundleSection = Reports.bundleSection(m, runtime)
        val record = RunRecord(batchSize = m.batchSize, microBatches = m.microBatches, threads = 1, runtime = runtime)
        val sampler = MemorySampler(onSample = { s -> listener.onMemory(s, MemoryStatus.read().hwmBytes) })
        state.journal.begin(device, bundleSection, record, sampler.baselineBytes)
        var status = "ok"
        var error: RunError? = null
        try {
            Backends.open(bundle).use { backend ->
                val trainer = Trainer(m, backend, train)
                listener.onPhase("accuracy before")
                record.accuracyBefore = trainer.accuracy(test)
                for (i in 1..steps) {
                    val start = System.nanoTime()
                    val loss = trainer.step()
                    record.stepTimesMs.add((System.nanoTime() - start) / 1e6)
                    record.lossCurve.add(loss)
                    listener.onProgress(i, steps, loss)
                    if (i % JOURNAL_EVERY == 0) {
                        state.journal.checkpoint(device, bundleSection, record, sampler.baselineBytes, sampler.samples(), sampler.peakBytes())
                    }
                }
                listener.onPhase("accuracy after")
                record.accuracyAfter = trainer.accuracy(test)
                runCatching { backend.saveCheckpoint(File(bundle.directory, Checkpoint.FILE_NAME), trainer.dataPosition) }
            }
        } catch (e: Exception) {
            status = "error"
            error = RunError("exception", "${e::class.java.simpleName}: ${e.message}")
        } finally {
            sampler.close()
        }
        val memory = MemoryRecord(sampler.baselineBytes, sampler.peakBytes(), sampler.samples(), Debug.getNativeHeapAllocatedSize())
        val report = Reports.build(device, bundleSection, record.toJson(), memory.toJson(), status, error)
        state.submit(report)
        state.journal.finish()
        return report
    }

    companion object {
        private const val JOURNAL_EVERY = 10
    }
}
