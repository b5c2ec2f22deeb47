package dev.memwall.core

import java.text.SimpleDateFormat
import java.util.Date
import java.util.Locale
import java.util.TimeZone
import java.util.UUID

/** The report's device section (report.v1 "device"); [appMemoryLimitBytes] is Android's largeMemoryClass. */
data class DeviceInfo(
    val deviceId: String,
    val model: String,
    val manufacturer: String,
    val os: String,
    val osVersion: String,
    val ramBytes: Long,
    val abi: String,
    val appMemoryLimitBytes: Long? = null,
    val cpu: String? = null,
) {
    fun toJson(): Map<String, Any?> = LinkedHashMap<String, Any?>().apply {
        put("device_id", deviceId)
        put("model", label(model))
        put("manufacturer", label(manufacturer))
        put("os", label(os))
        put("os_version", label(osVersion))
        put("ram_bytes", ramBytes)
        appMemoryLimitBytes?.let { put("app_memory_limit_bytes", it) }
        put("abi", label(abi))
        cpu?.let { put("cpu", label(it)) }
    }

    // The schema's label rule: 1..200 characters.
    private fun label(s: String) = s.ifEmpty { "unknown" }.take(200)
}

/** What a run measured so far; a failed run's report carries whatever was collected before it stopped. */
class RunRecord(
    val reportId: String = UUID.randomUUID().toString(),
    val startedAt: String = isoNow(),
    val batchSize: Int,
    val microBatches: Int,
    val threads: Int,
    /** run.runtime: the runtime that trained, whose prediction the bundle section carries. */
    val runtime: String? = null,
) {
    val stepTimesMs = ArrayList<Double>()
    val lossCurve = ArrayList<Double>()
    var accuracyBefore: Double? = null
    var accuracyAfter: Double? = null

    fun toJson(): Map<String, Any?> = linkedMapOf(
        "report_id" to reportId,
        "started_at" to startedAt,
        "batch_size" to batchSize,
        "micro_batches" to microBatches,
        "threads" to threads,
        "steps" to stepTimesMs.size,
        "step_times_ms" to stepTimesMs,
        "loss_curve" to lossCurve,  // Json writes a non-finite loss as null, as the schema asks
        "accuracy_before" to accuracyBefore,
        "accuracy_after" to accuracyAfter,
    ).apply { runtime?.let { put("runtime", it) } }

    companion object {
        fun isoNow(): String = SimpleDateFormat("yyyy-MM-dd'T'HH:mm:ss.SSSXXX", Locale.ROOT)
            .apply { timeZone = TimeZone.getTimeZone("UTC") }.format(Date())
    }
}

/** Memory figures of a run (report.v1 "memory"): RSS on Android, peak = VmHWM. */
class MemoryRecord(
    val baselineBytes: Long,
    val peakRssBytes: Long,
    val samples: List<MemorySample>,
    val nativeHeapBytes: Long? = null,
) {
    fun toJson(): Map<String, Any?> = LinkedHashMap<String, Any?>().apply {
        put("peak_rss_bytes", peakRssBytes)
        put("baseline_bytes", baselineBytes)
        put("peak_delta_bytes", maxOf(0L, peakRssBytes - baselineBytes))
        nativeHeapBytes?.let { put("native_heap_bytes", it) }
        put("samples", samples.map { linkedMapOf("t_ms" to it.tMs, "rss_bytes" to it.rssBytes) })
    }
}

/** report.v1 documents (sdk_tools/lab/schemas/report.v1.schema.json), the lab's contract with the apps. */
object Reports {
    const val SCHEMA_VERSION = 1

    /** The memwall native runtime (runtime/, through JNI): a key of the manifest's memory.by_runtime. */
    const val NATIVE_RUNTIME = "memwall_native"

    /** The bundle section for a run in [runtime], as sdk_tools.lab.client.bundle_section builds it. */
    fun bundleSection(manifest: Manifest, runtime: String? = null): Map<String, Any?> {
        val m = manifest.raw
        val memory = m.obj("memory").map.filterValues { it is Long }
        val model = if (m.has("model")) m.obj("model") else null
        val techniques = if (m.has("techniques")) m.objects("techniques") else emptyList()
        return linkedMapOf(
            "manifest_sha256" to manifest.sha256,
            "name" to manifest.name,
            "backend" to manifest.backend,
            "model" to (model?.takeIf { it.has("spec") }?.string("spec")?.ifEmpty { null } ?: manifest.name),
            "plan" to techniques.associate { it.string("name") to it.map["config"] },
            "predicted_peak_bytes" to manifest.predictedPeakBytesFor(runtime),
            "predicted" to memory,
        )
    }

    fun build(
        device: DeviceInfo,
        bundle: Map<String, Any?>,
        run: Map<String, Any?>,
        memory: Map<String, Any?>?,
        status: String,
        error: RunError? = null,
    ): Map<String, Any?> {
        require(status in setOf("ok", "oom", "crash", "error")) { "unknown status $status" }
        require((status == "ok") == (error == null)) { "a failed run needs an error, an ok run has none" }
        return LinkedHashMap<String, Any?>().apply {
            put("schema_version", SCHEMA_VERSION)
            put("device", device.toJson())
            put("bundle", bundle)
            put("run", run)
            memory?.let { put("memory", it) }
            put("status", status)
            error?.let { put("error", it.toJson()) }
        }
    }
}

/** Why a run failed (report.v1 "error"). */
data class RunError(val kind: String, val message: String, val signal: Int? = null, val exitCode: Int? = null) {
    fun toJson(): Map<String, Any?> = LinkedHashMap<String, Any?>().apply {
        put("kind", kind)
        put("message", message.take(20000))
        signal?.let { put("signal", it) }
        exitCode?.let { put("exit_code", it) }
    }
}
