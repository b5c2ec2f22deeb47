package dev.memwall.core

import java.io.File
import kotlin.system.exitProcess

/**
 * The core's real code driven from tests/test_android.py, against a real `memwall lab serve` and the Python runner:
 *
 *   lab-register URL NAME                   -> {"device_id", "token"}
 *   lab-enqueue QUEUE URL TOKEN REPORT.json  (a report made offline)
 *   lab-flush QUEUE                         -> {"sent", "kept", "rejected"}
 *   bundle-section MANIFEST.json [RUNTIME]  -> the report's bundle section for a run in RUNTIME
 *   checkpoint-continue MANIFEST IN OUT GRADS.json  -> resume IN (written by Python), step, save OUT
 *   run-until-killed JOURNAL DEVICE_ID MANIFEST  a "training" that grows memory until the test SIGKILLs it
 *   recover JOURNAL QUEUE URL TOKEN LIMIT     -> the failed run's status, queued for the lab once ("none" after)
 */
object HostTools {
    @JvmStatic
    fun main(args: Array<String>) {
        try {
            println(run(args.toList()))
        } catch (e: Exception) {
            System.err.println("${e::class.simpleName}: ${e.message}")
            exitProcess(2)
        }
    }

    private fun run(a: List<String>): String = when (a.firstOrNull()) {
        "lab-register" -> LabClient(a[1]).registerDevice(a[2]).let { Json.write(mapOf("device_id" to it.deviceId, "token" to it.token)) }
        "lab-enqueue" -> ReportQueue(File(a[1])).enqueue(a[2], a[3], JsonObject.parse(File(a[4]).readText(), a[4]).map).name
        "lab-flush" -> ReportQueue(File(a[1])).flush().let { Json.write(mapOf("sent" to it.sent, "kept" to it.kept, "rejected" to it.rejected)) }
        "bundle-section" -> Json.write(Reports.bundleSection(Manifest.parse(File(a[1]).readBytes()), a.getOrNull(2)))
        "checkpoint-continue" -> continueCheckpoint(Manifest.parse(File(a[1]).readBytes()), File(a[2]), File(a[3]), File(a[4]))
        "run-until-killed" -> runUntilKilled(File(a[1]), a[2], Manifest.parse(File(a[3]).readBytes()))
        "recover" -> recover(RunJournal(File(a[1])), ReportQueue(File(a[2])), a[3], a[4], a[5].toLong())
        else -> throw IllegalArgumentException("usage: see HostTools.kt")
    }

    /** Loads a checkpoint into an optimizer for [manifest]'s trainable parameters, applies the given steps, saves. */
    private fun continueCheckpoint(manifest: Manifest, input: File, output: File, gradsFile: File): String {
        val checkpoint = Checkpoint.load(input)
        val optimizer = Optimizer(manifest.optimizer, manifest.trainable.associate { it.name to FloatArray(it.numel.toInt()) })
        checkpoint.restoreInto(manifest, optimizer)
        val steps = Json.parse(gradsFile.readText()) as List<*>
        for (step in steps) optimizer.step(Golden.named(JsonObject.of(step as Map<*, *>, "grads")))
        Checkpoint.of(manifest, optimizer, checkpoint.dataPosition + steps.size).save(output)
        return output.toString()
    }

    /** This machine as the report's device (the app uses android.os.Build instead). */
    fun hostDevice(deviceId: String): DeviceInfo {
        val ram = File("/proc/meminfo").readLines().first { it.startsWith("MemTotal:") }.split(Regex("\\s+"))[1].toLong() * 1024
        return DeviceInfo(deviceId, "host", "unknown", "linux", System.getProperty("os.version"), ram, System.getProperty("os.arch"))
    }

    /** Journals a run and touches 8 MiB more per step; never returns: the test kills it as the low-memory killer would. */
    private fun runUntilKilled(journalDir: File, deviceId: String, manifest: Manifest): String {
        val device = hostDevice(deviceId)
        val bundle = Reports.bundleSection(manifest)
        val run = RunRecord(batchSize = manifest.batchSize, microBatches = manifest.microBatches, threads = 1)
        val journal = RunJournal(journalDir)
        val held = ArrayList<ByteArray>()
        MemorySampler(intervalMs = 10).use { sampler ->
            journal.begin(device, bundle, run, sampler.baselineBytes)
            var step = 0
            while (true) {
                if (held.size < 32) held.add(ByteArray(8 shl 20) { 1 })
                run.stepTimesMs.add(10.0)
                run.lossCurve.add(2.3 / ++step)
                journal.checkpoint(device, bundle, run, sampler.baselineBytes, sampler.samples(), sampler.peakBytes())
                if (step == 3) println("started")
                System.out.flush()
                Thread.sleep(20)
            }
        }
    }

    private fun recover(journal: RunJournal, queue: ReportQueue, url: String, token: String, limit: Long): String {
        val report = journal.recover(limit) ?: return "none"
        queue.enqueue(url, token, report)
        journal.discard()
        return report["status"] as String
    }
}
