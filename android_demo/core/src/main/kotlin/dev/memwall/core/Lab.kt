package dev.memwall.core

import java.io.File
import java.io.IOException
import java.net.HttpURLConnection
import java.net.URL
import kotlin.random.Random

/** A lab answer that retrying will not change (4xx other than 408/429): the report is set aside, not re-sent. */
class LabRejected(val status: Int, message: String) : Exception(message)

/** The device lab's HTTP API (/api/v1, docs/lab.md): device registration and report posting. */
class LabClient(
    baseUrl: String,
    private val timeoutMs: Int = 10_000,
    private val retries: Int = 3,
    private val backoffMs: Long = 500,
    private val maxBackoffMs: Long = 8_000,
) {
    val url = baseUrl.trimEnd('/')

    class Registration(val deviceId: String, val token: String)

    class Ack(val id: Long, val reportId: String, val created: Boolean)

    fun registerDevice(name: String): Registration {
        val body = request("POST", "/api/v1/devices", Json.write(mapOf("name" to name)), null)
        val o = JsonObject.parse(body, "registration answer")
        return Registration(o.string("device_id"), o.string("token"))
    }

    /**
     * Posts [reportJson], retrying network failures, 5xx and 429 with the same body. Safe because the lab stores a
     * report once per run.report_id: a retry of a post whose answer was lost comes back with created=false.
     */
    fun postReport(token: String, reportJson: String): Ack {
        var attempt = 0
        while (true) {
            try {
                val o = JsonObject.parse(request("POST", "/api/v1/reports", reportJson, token), "report answer")
                return Ack(o.long("id"), o.string("report_id"), o.bool("created"))
            } catch (e: IOException) {
                if (attempt >= retries) throw IOException("${e.message} (gave up after ${attempt + 1} attempts)", e)
            }
            // Full jitter keeps many phones retrying after a lab restart from arriving in lockstep.
            Thread.sleep(Random.nextLong(0, minOf(maxBackoffMs, backoffMs shl attempt) + 1))
            attempt++
        }
    }

    /** One HTTP exchange; IOException for what a retry may fix (network, 5xx, 408, 429), [LabRejected] otherwise. */
    private fun request(method: String, path: String, body: String?, token: String?): String {
        val connection = URL(url + path).openConnection() as HttpURLConnection
        try {
            connection.requestMethod = method
            connection.connectTimeout = timeoutMs
            connection.readTimeout = timeoutMs
            connection.setRequestProperty("Accept", "application/json")
            token?.let { connection.setRequestProperty("Authorization", "Bearer $it") }
            if (body != null) {
                val bytes = body.toByteArray(Charsets.UTF_8)
                connection.doOutput = true
                connection.setRequestProperty("Content-Type", "application/json")
                connection.setFixedLengthStreamingMode(bytes.size)
                connection.outputStream.use { it.write(bytes) }
            }
            val status = connection.responseCode
            val stream = if (status >= 400) connection.errorStream else connection.inputStream
            val text = stream?.use { String(it.readBytes(), Charsets.UTF_8) } ?: ""
            if (status in 200..299) return text
            val message = runCatching { JsonObject.parse(text, "error").string("message") }.getOrDefault(text.take(300))
            val what = "$method $url$path -> $status: $message"
            if (status >= 500 || status == 408 || status == 429) throw IOException(what)
            throw LabRejected(status, what)
        } finally {
            connection.disconnect()
        }
    }
}

/**
 * Reports waiting for the lab, one file each in [directory], named by report id. A report made offline (or whose
 * post failed) stays until the lab acknowledges it, then its file is deleted: with the lab's once-per-report_id
 * storage, each report arrives exactly once however often [flush] runs or crashes midway.
 */
class ReportQueue(val directory: File) {
    class FlushResult(val sent: Int, val kept: Int, val rejected: Int)

    init {
        directory.mkdirs()
    }

    /** Stores [report] for [lab]; the post happens in [flush]. */
    fun enqueue(lab: String, token: String, report: Map<String, Any?>): File {
        @Suppress("UNCHECKED_CAST")
        val reportId = (report["run"] as Map<String, Any?>)["report_id"] as String
        require(reportId.matches(Regex("[0-9a-fA-F-]{36}"))) { "report_id $reportId is not a UUID" }
        val file = File(directory, "$reportId.json")
        atomicWrite(file, Json.write(linkedMapOf("lab" to lab, "token" to token, "report" to report)).toByteArray())
        return file
    }

    fun pending(): List<File> = directory.listFiles { f -> f.isFile && f.name.endsWith(".json") }
        ?.sortedBy { it.lastModified() } ?: emptyList()

    /** Posts every queued report; stops at the first network failure (the lab is down: try again later). */
    fun flush(client: (String) -> LabClient = { LabClient(it, retries = 1) }): FlushResult {
        var sent = 0
        var rejected = 0
        val files = pending()
        for ((index, file) in files.withIndex()) {
            val entry = JsonObject.parse(file.readText(), file.name)
            try {
                client(entry.string("lab")).postReport(entry.string("token"), Json.write(entry.obj("report").map))
                file.delete()
                sent++
            } catch (e: LabRejected) {
                // Kept for a person to read, never re-sent: the lab said this report is wrong, not that it is down.
                val dead = File(directory, "rejected").apply { mkdirs() }
                atomicWrite(File(dead, file.name + ".error.txt"), (e.message ?: "rejected").toByteArray())
                file.renameTo(File(dead, file.name))
                rejected++
            } catch (_: IOException) {
                return FlushResult(sent, files.size - index, rejected)
            }
        }
        return FlushResult(sent, 0, rejected)
    }
}
