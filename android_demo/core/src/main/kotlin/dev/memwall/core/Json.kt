package dev.memwall.core

/**
 * The JSON the core reads and writes (manifests, golden vectors, reports), without a library: the same code runs
 * on the JVM in CI and on Android, where org.json's number handling differs between OS versions.
 *
 * Values are Map<String, Any?> (insertion-ordered), List<Any?>, String, Long (integers), Double, Boolean, null.
 */
object Json {
    class ParseError(message: String) : IllegalArgumentException(message)

    fun parse(text: String): Any? {
        val reader = Reader(text)
        val value = reader.value()
        reader.skipSpace()
        if (reader.pos != text.length) throw reader.error("trailing characters")
        return value
    }

    fun write(value: Any?): String = StringBuilder().also { append(it, value) }.toString()

    private fun append(out: StringBuilder, value: Any?) {
        when (value) {
            null -> out.append("null")
            is String -> appendString(out, value)
            is Boolean, is Int, is Long -> out.append(value.toString())
            is Float -> appendDouble(out, value.toDouble())
            is Double -> appendDouble(out, value)
            is Map<*, *> -> {
                out.append('{')
                var first = true
                for ((k, v) in value) {
                    if (!first) out.append(',')
                    first = false
                    appendString(out, k as String)
                    out.append(':')
                    append(out, v)
                }
                out.append('}')
            }
            is Iterable<*> -> {
                out.append('[')
                value.forEachIndexed { i, v -> if (i > 0) out.append(','); append(out, v) }
                out.append(']')
            }
            else -> throw IllegalArgumentException("cannot write ${value::class.simpleName} as JSON")
        }
    }

    // JSON has no NaN/Infinity; the report schema says a non-finite loss is written as null.
    private fun appendDouble(out: StringBuilder, d: Double) {
        if (d.isNaN() || d.isInfinite()) out.append("null") else out.append(d.toString())
    }

    private fun appendString(out: StringBuilder, s: String) {
        out.append('"')
        for (c in s) {
            when {
                c == '"' -> out.append("\\\"")
                c == '\\' -> out.append("\\\\")
                c == '\n' -> out.append("\\n")
                c == '\r' -> out.append("\\r")
                c == '\t' -> out.append("\\t")
                c < ' ' -> out.append(String.format("\\u%04x", c.code))
                else -> out.append(c)
            }
        }
        out.append('"')
    }

    private class Reader(val text: String) {
        var pos = 0

        fun error(what: String) = ParseError("invalid JSON at character $pos: $what")

        fun skipSpace() {
            while (pos < text.length && text[pos] in " \t\r\n") pos++
        }

        fun value(): Any? {
            skipSpace()
            if (pos >= text.length) throw error("unexpected end")
            return when (val c = text[pos]) {
                '{' -> obj()
                '[' -> array()
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c.isDigit()) number() else throw error("unexpected '$c'")
            }
        }

        private fun literal(word: String, value: Any?): Any? {
            if (!text.startsWith(word, pos)) throw error("expected $word")
            pos += word.length
            return value
        }

        private fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            pos++
            skipSpace()
            if (text.getOrNull(pos) == '}') { pos++; return out }
            while (true) {
                skipSpace()
                if (text.getOrNull(pos) != '"') throw error("expected a key")
                val key = string()
                skipSpace()
                if (text.getOrNull(pos) != ':') throw error("expected ':'")
                pos++
                out[key] = value()
                skipSpace()
                when (text.getOrNull(pos)) {
                    ',' -> pos++
                    '}' -> { pos++; return out }
                    else -> throw error("expected ',' or '}'")
                }
            }
        }

        private fun array(): List<Any?> {
            val out = ArrayList<Any?>()
            pos++
            skipSpace()
            if (text.getOrNull(pos) == ']') { pos++; return out }
            while (true) {
                out.add(value())
                skipSpace()
                when (text.getOrNull(pos)) {
                    ',' -> pos++
                    ']' -> { pos++; return out }
                    else -> throw error("expected ',' or ']'")
                }
            }
        }

        private fun string(): String {
            val out = StringBuilder()
            pos++
            while (true) {
                if (pos >= text.length) throw error("unterminated string")
                val c = text[pos++]
                when {
                    c == '"' -> return out.toString()
                    c == '\\' -> {
                        if (pos >= text.length) throw error("unterminated escape")
                        when (val e = text[pos++]) {
                            '"', '\\', '/' -> out.append(e)
                            'b' -> out.append('\b')
                            'f' -> out.append('\u000c')
                            'n' -> out.append('\n')
                            'r' -> out.append('\r')
                            't' -> out.append('\t')
                            'u' -> {
                                if (pos + 4 > text.length) throw error("short \\u escape")
                                out.append(text.substring(pos, pos + 4).toIntOrNull(16)?.toChar() ?: throw error("bad \\u escape"))
                                pos += 4
                            }
                            else -> throw error("bad escape '\\$e'")
                        }
                    }
                    c < ' ' -> throw error("control character in string")
                    else -> out.append(c)
                }
            }
        }

        private fun number(): Any {
            val start = pos
            if (text[pos] == '-') pos++
            while (pos < text.length && (text[pos].isDigit() || text[pos] in ".eE+-")) pos++
            val raw = text.substring(start, pos)
            val integral = raw.none { it in ".eE" }
            return (if (integral) raw.toLongOrNull() ?: raw.toDoubleOrNull() else raw.toDoubleOrNull())
                ?: throw error("bad number '$raw'")
        }
    }
}

/** Typed access to parsed JSON objects, failing with the field's path rather than a ClassCastException. */
class JsonObject(val map: Map<String, Any?>, private val path: String) {
    private fun fail(key: String, want: String): Nothing =
        throw Json.ParseError("$path.$key must be $want (got ${map[key]?.let { it::class.simpleName } ?: "nothing"})")

    fun has(key: String) = map.containsKey(key) && map[key] != null
    fun string(key: String): String = map[key] as? String ?: fail(key, "a string")
    fun long(key: String): Long = map[key] as? Long ?: fail(key, "an integer")
    fun int(key: String): Int = long(key).let { if (it in Int.MIN_VALUE..Int.MAX_VALUE) it.toInt() else fail(key, "a 32-bit integer") }
    fun double(key: String): Double = (map[key] as? Number)?.toDouble() ?: fail(key, "a number")
    fun bool(key: String): Boolean = map[key] as? Boolean ?: fail(key, "true or false")
    fun obj(key: String): JsonObject = (map[key] as? Map<*, *>)?.let { of(it, "$path.$key") } ?: fail(key, "an object")
    fun list(key: String): List<Any?> = map[key] as? List<*> ?: fail(key, "an array")
    fun objects(key: String): List<JsonObject> = list(key).mapIndexed { i, v ->
        (v as? Map<*, *>)?.let { of(it, "$path.$key[$i]") } ?: fail("$key[$i]", "an object")
    }
    fun strings(key: String): List<String> = list(key).map { it as? String ?: fail(key, "an array of strings") }
    fun longs(key: String): List<Long> = list(key).map { it as? Long ?: fail(key, "an array of integers") }
    fun doubles(key: String): List<Double> = list(key).map { (it as? Number)?.toDouble() ?: fail(key, "an array of numbers") }

    companion object {
        @Suppress("UNCHECKED_CAST")
        fun of(map: Map<*, *>, path: String) = JsonObject(map as Map<String, Any?>, path)

        fun parse(text: String, what: String): JsonObject =
            (Json.parse(text) as? Map<*, *>)?.let { of(it, what) } ?: throw Json.ParseError("$what is not a JSON object")
    }
}
