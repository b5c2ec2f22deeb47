package dev.memwall.core

import java.io.File

/** Resident memory of this process from /proc/self/status: current (VmRSS) and peak (VmHWM), in bytes. */
data class MemoryStatus(val rssBytes: Long, val hwmBytes: Long) {
    companion object {
        fun parse(status: String): MemoryStatus {
            fun field(name: String): Long = status.lineSequence().firstOrNull { it.startsWith("$name:") }
                ?.substringAfter(':')?.trim()?.split(Regex("\\s+"))?.let { parts ->
                    val kb = parts[0].toLong()
                    require(parts.getOrNull(1) == "kB") { "$name is not in kB" }
                    kb * 1024
                } ?: throw IllegalStateException("/proc/self/status has no $name")
            return MemoryStatus(field("VmRSS"), field("VmHWM"))
        }

        fun read(): MemoryStatus = parse(File("/proc/self/status").readText())
    }
}

class MemorySample(val tMs: Double, val rssBytes: Long)

/**
 * Samples VmRSS on a background thread every [intervalMs] while training runs, and takes the peak from VmHWM
 * (the kernel's own high-water mark, so a spike between two samples still counts). Samples are kept to
 * [maxSamples] (the report schema's limit) by dropping every other one and doubling the interval.
 */
class MemorySampler(
    private var intervalMs: Long = 100,
    private val maxSamples: Int = 20000,
    private val read: () -> MemoryStatus = MemoryStatus::read,
    private val onSample: (MemorySample) -> Unit = {},
) : AutoCloseable {
    val baselineBytes: Long = read().rssBytes
    private val startNs = System.nanoTime()
    private val samples = ArrayList<MemorySample>()
    @Volatile private var running = true
    private val thread = Thread({
        while (running) {
            sample()
            try {
                Thread.sleep(intervalMs)
            } catch (_: InterruptedException) {
                break
            }
        }
    }, "memwall-memory").apply { isDaemon = true; start() }

    fun sample(): MemorySample {
        val s = MemorySample((System.nanoTime() - startNs) / 1e6, read().rssBytes)
        synchronized(samples) {
            samples.add(s)
            if (samples.size >= maxSamples) {
                val kept = samples.filterIndexed { i, _ -> i % 2 == 0 }
                samples.clear()
                samples.addAll(kept)
                intervalMs *= 2
            }
        }
        onSample(s)
        return s
    }

    fun samples(): List<MemorySample> = synchronized(samples) { samples.toList() }

    fun peakBytes(): Long = read().hwmBytes

    override fun close() {
        running = false
        thread.interrupt()
        thread.join(1000)
        sample()
    }
}
