package dev.memwall.core

import org.junit.Assert.assertEquals
import org.junit.Assert.fail
import java.io.File
import kotlin.math.abs

/** tests/golden (written by `python -m sdk_tools.conformance tests/golden`): what the Python reference really does. */
object Golden {
    val dir: File = File(System.getProperty("memwall.golden") ?: "../tests/golden").also {
        require(it.isDirectory) { "golden vectors not found at $it; pass -Dmemwall.golden=<repo>/tests/golden" }
    }

    fun file(name: String) = File(dir, name)

    fun json(name: String): JsonObject = JsonObject.parse(file(name).readText(), name)

    /** {name: {shape, values}} -> name -> float32 values. */
    fun named(o: JsonObject): LinkedHashMap<String, FloatArray> {
        val out = LinkedHashMap<String, FloatArray>()
        for (name in o.map.keys) out[name] = o.obj(name).doubles("values").map { it.toFloat() }.toFloatArray()
        return out
    }

    /** Within the golden tolerance (abs 1e-6 + rel 1e-5: rounding order only). */
    fun assertClose(what: String, expected: FloatArray, actual: FloatArray, tolerance: JsonObject) {
        assertEquals("$what: size", expected.size, actual.size)
        val absTol = tolerance.double("abs")
        val relTol = tolerance.double("rel")
        for (i in expected.indices) {
            val e = expected[i].toDouble()
            val a = actual[i].toDouble()
            if (abs(a - e) > absTol + relTol * abs(e)) fail("$what[$i]: expected $e, got $a")
        }
    }

    fun assertClose(what: String, expected: Map<String, FloatArray>, actual: Map<String, FloatArray>, tolerance: JsonObject) {
        assertEquals("$what: names", expected.keys, actual.keys)
        for ((name, e) in expected) assertClose("$what $name", e, actual.getValue(name), tolerance)
    }
}
