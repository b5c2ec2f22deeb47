package dev.memwall.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import java.net.ServerSocket
import java.nio.file.Files

class ReportTest {
    /** The golden reports rebuilt from their parts with the core's builders: same document. */
    @Test
    fun buildsTheGoldenReportsFromTheirParts() {
        for (status in listOf("ok", "oom")) {
            val golden = Golden.json("report-$status.json")
            val d = golden.obj("device")
            val device = DeviceInfo(
                d.string("device_id"), d.string("model"), d.string("manufacturer"), d.string("os"), d.string("os_version"),
                d.long("ram_bytes"), d.string("abi"), d.long("app_memory_limit_bytes"),
            )
            val m = golden.obj("memory")
            val samples = m.objects("samples").map { MemorySample(it.double("t_ms"), it.long("rss_bytes")) }
            val memory = if (status == "ok") {
                MemoryRecord(m.long("baseline_bytes"), m.long("peak_rss_bytes"), samples, m.long("native_heap_bytes")).toJson()
            } else {
                linkedMapOf("baseline_bytes" to m.long("baseline_bytes"), "samples" to samples.map { linkedMapOf("t_ms" to it.tMs, "rss_bytes" to it.rssBytes) })
            }
            val error = if (golden.has("error")) golden.obj("error").let { RunError(it.string("kind"), it.string("message"), it.int("signal")) } else null
            val report = Reports.build(device, golden.obj("bundle").map, golden.obj("run").map, memory, golden.string("status"), error)
            // The golden ok report spells "no error" as null; the builder leaves the key out (the schema allows both).
            assertEquals(golden.map.filterValues { it != null }, Json.parse(Json.write(report)))
        }
    }

    @Test
    fun runRecordWritesTheRunSectionWithNullForNonFiniteLoss() {
        val run = RunRecord(batchSize = 4, microBatches = 2, threads = 1)
        run.stepTimesMs.addAll(listOf(12.5, 11.0))
        run.lossCurve.addAll(listOf(2.3, Double.NaN))
        val parsed = JsonObject.parse(Json.write(run.toJson()), "run")
        assertEquals(2L, parsed.long("steps"))
        assertEquals(listOf(2.3, null), parsed.list("loss_curve"))
        assertTrue(parsed.string("started_at").matches(Regex("\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}(Z|[+-]\\d\\d:\\d\\d)")))
    }

    @Test
    fun memoryComesFromProcSelfStatus() {
        val parsed = MemoryStatus.parse("Name:\tjava\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
        assertEquals(MemoryStatus(1024 * 1024, 2048 * 1024), parsed)
        val live = MemoryStatus.read()
        assertTrue(live.rssBytes > 0 && live.hwmBytes >= live.rssBytes)
        MemorySampler(intervalMs = 5).use { sampler ->
            // The sampling thread's own samples; on a loaded machine it may take a while to be scheduled.
            val deadline = System.nanoTime() + 10_000_000_000L
            while (sampler.samples().size < 2 && System.nanoTime() < deadline) Thread.sleep(10)
            val samples = sampler.samples()
            assertTrue("${samples.size} samples", samples.size >= 2)
            // VmHWM is the kernel's high-water mark: never below a resident size sampled before it.
            assertTrue(sampler.peakBytes() >= samples.maxOf { it.rssBytes })
        }
    }

    @Test
    fun anInterruptedRunIsReportedOnceAsFailed() {
        val dir = Files.createTempDirectory("journal").toFile()
        val device = DeviceInfo("00000000-0000-4000-8000-00000000d01d", "Pixel", "Google", "android", "14", 8L shl 30, "arm64-v8a", 512L shl 20)
        val bundle = Reports.bundleSection(Manifest.parse(Golden.file("manifest-executorch.json").readBytes()))
        val run = RunRecord(batchSize = 4, microBatches = 1, threads = 1).apply { stepTimesMs.add(10.0); lossCurve.add(2.2) }
        RunJournal(dir).begin(device, bundle, run, 100L shl 20)
        RunJournal(dir).checkpoint(device, bundle, run, 100L shl 20, listOf(MemorySample(0.0, 100L shl 20), MemorySample(50.0, 490L shl 20)), 490L shl 20)
        // The process died here. Next start:
        val journal = RunJournal(dir)
        val report = journal.recover(appMemoryLimitBytes = 512L shl 20)!!
        assertEquals("oom", report["status"])
        assertEquals("oom_kill", (report["error"] as Map<*, *>)["kind"])
        assertEquals(run.reportId, (report["run"] as Map<*, *>)["report_id"])
        assertEquals(390L shl 20, (report["memory"] as Map<*, *>)["peak_delta_bytes"])
        journal.discard()
        assertNull(RunJournal(dir).recover(512L shl 20))
        RunJournal(dir).begin(device, bundle, run, 100L shl 20)
        assertEquals("crash", RunJournal(dir).recover(512L shl 20)!!["status"])
        RunJournal(dir).finish()
        assertNull(RunJournal(dir).recover(512L shl 20))
    }

    @Test
    fun aReportMadeOfflineStaysQueued() {
        val port = ServerSocket(0).use { it.localPort }  // nothing listens here now
        val queue = ReportQueue(Files.createTempDirectory("queue").toFile())
        val report = Golden.json("report-ok.json").map
        queue.enqueue("http://127.0.0.1:$port", "token", report)
        val result = queue.flush()
        assertEquals(0, result.sent)
        assertEquals(1, result.kept)
        assertEquals(listOf("8b9d2434-e465-4150-bd9c-66b3ad3c2d6d.json"), queue.pending().map(File::getName))
    }
}
