package dev.memwall.core

import java.io.File

/**
 * Finds runs that never finished. Before training, [begin] writes what a failed report needs (device, bundle, run
 * so far); [checkpoint] refreshes it with the run's progress and last memory samples; [finish] removes it. A file
 * still there at the next start means the process died mid-run: an out-of-memory kill (low-memory killer or the
 * kernel, which no handler sees) or a native crash. [recover] turns it into a failed report, once.
 */
class RunJournal(private val directory: File) {
    private val file = File(directory, "active-run.json")

    fun begin(device: DeviceInfo, bundle: Map<String, Any?>, run: RunRecord, baselineBytes: Long) =
        write(device.toJson(), bundle, run.toJson(), baselineBytes, emptyList(), 0L)

    fun checkpoint(device: DeviceInfo, bundle: Map<String, Any?>, run: RunRecord, baselineBytes: Long, samples: List<MemorySample>, peakBytes: Long) =
        write(device.toJson(), bundle, run.toJson(), baselineBytes, samples.takeLast(MAX_SAMPLES), peakBytes)

    fun finish() {
        file.delete()
    }

    private fun write(device: Map<String, Any?>, bundle: Map<String, Any?>, run: Map<String, Any?>, baseline: Long, samples: List<MemorySample>, peak: Long) {
        val doc = linkedMapOf(
            "device" to device,
            "bundle" to bundle,
            "run" to run,
            "baseline_bytes" to baseline,
            "peak_rss_bytes" to peak,
            "samples" to samples.map { linkedMapOf("t_ms" to it.tMs, "rss_bytes" to it.rssBytes) },
        )
        atomicWrite(file, Json.write(doc).toByteArray())
    }

    /**
     * The failed report of a run that did not finish, or null. [appMemoryLimitBytes]: the per-app limit; a run whose
     * last resident size came within [OOM_FRACTION] of it is reported as "oom", any other death as "crash"
     * (API 23 has no exit-reason API; ActivityManager.getHistoricalProcessExitReasons needs API 30).
     */
    fun recover(appMemoryLimitBytes: Long?): Map<String, Any?>? {
        if (!file.isFile) return null
        val doc = try {
            JsonObject.parse(file.readText(), "interrupted run")
        } catch (_: Json.ParseError) {
            file.delete()  // written atomically, so only a foreign file gets here; nothing to report from it
            return null
        }
        val samples = doc.objects("samples").map { MemorySample(it.double("t_ms"), it.long("rss_bytes")) }
        val lastRss = samples.lastOrNull()?.rssBytes ?: 0L
        val oom = appMemoryLimitBytes != null && lastRss >= OOM_FRACTION * appMemoryLimitBytes
        val error = if (oom) {
            RunError("oom_kill", "the app was killed during training with ${lastRss / MIB} MiB resident of its ${appMemoryLimitBytes / MIB} MiB limit")
        } else {
            RunError("process_death", "the app stopped during training (native crash or kill) and was found at the next start; last resident size ${lastRss / MIB} MiB")
        }
        val baseline = doc.long("baseline_bytes")
        val peak = maxOf(doc.long("peak_rss_bytes"), samples.maxOfOrNull { it.rssBytes } ?: 0L, baseline)
        val device = doc.obj("device").map
        val report = LinkedHashMap<String, Any?>().apply {
            put("schema_version", Reports.SCHEMA_VERSION)
            put("device", device)
            put("bundle", doc.obj("bundle").map)
            put("run", doc.obj("run").map)
            put("memory", MemoryRecord(baseline, peak, samples).toJson())
            put("status", if (oom) "oom" else "crash")
            put("error", error.toJson())
        }
        return report
    }

    /** Call once the recovered report is safely queued, so it is reported exactly once. */
    fun discard() {
        file.delete()
    }

    companion object {
        const val OOM_FRACTION = 0.9
        private const val MAX_SAMPLES = 2000
        private const val MIB = 1024 * 1024
    }
}
