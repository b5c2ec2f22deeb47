package dev.memwall.core

import java.io.File
import java.security.MessageDigest

/** A bundle the app cannot use; the message names the problem and the fix, in one line. */
class BundleError(message: String) : Exception(message)

data class TensorSpec(val name: String, val shape: List<Long>, val dtype: String) {
    val numel: Long get() = shape.fold(1L) { a, b -> a * b }
}

data class BundleFile(val role: String, val path: String, val sha256: String, val bytes: Long)

data class Method(val name: String, val inputs: List<String>, val outputs: List<String>)

/** The manifest fields the app uses (exporters/schemas/manifest.v1.schema.json); the rest stays in [raw]. */
class Manifest(
    val name: String,
    val backend: String,
    val files: Map<String, BundleFile>,
    val input: TensorSpec,
    val labels: TensorSpec,
    val classes: List<String>,
    val trainable: List<TensorSpec>,
    val optimizer: OptimizerConfig,
    val batchSize: Int,
    val microBatches: Int,
    val methods: Map<String, Method>,
    /** Where the optimizer step runs: "app" (this code), "program" (fused into the .pte), "onnxruntime". */
    val optimizerRunsIn: String,
    val predictedPeakBytes: Long,
    val raw: JsonObject,
    /** sha256 of the manifest.json bytes: checkpoints and reports name their bundle by it. */
    val sha256: String,
) {
    /** Samples per call of the train method: the input's batch dimension (batch_size / micro_batches). */
    val callBatch: Int get() = input.shape[0].toInt()

    /**
     * The predicted peak for a run in [runtime] (a key of memory.by_runtime, e.g. [Reports.NATIVE_RUNTIME]): the
     * top-level (host runner's) one where the manifest has none for it, as exporters.bundle's prediction_for reads it.
     */
    fun predictedPeakBytesFor(runtime: String?): Long {
        val entry = (raw.obj("memory").map["by_runtime"] as? Map<*, *>)?.get(runtime) as? Map<*, *>
        return entry?.get("predicted_peak_bytes") as? Long ?: predictedPeakBytes
    }

    companion object {
        const val SCHEMA_VERSION = 1L
        val BACKENDS = setOf("executorch", "onnxruntime")

        fun parse(bytes: ByteArray): Manifest {
            val m = try {
                JsonObject.parse(String(bytes, Charsets.UTF_8), "manifest")
            } catch (e: Json.ParseError) {
                throw BundleError("manifest.json is not valid JSON (${e.message}); re-export the bundle")
            }
            // The version is checked before anything else: a newer manifest may have changed any other field.
            val version = m.map["schema_version"]
            if (version != SCHEMA_VERSION) {
                throw BundleError(
                    "manifest schema_version $version is not one this app reads ($SCHEMA_VERSION); " +
                        "update the app or re-export the bundle with a memwall that writes version $SCHEMA_VERSION",
                )
            }
            try {
                return fromJson(m, sha256Hex(bytes))
            } catch (e: Json.ParseError) {
                throw BundleError("manifest does not follow schema v1: ${e.message}; re-export the bundle")
            }
        }

        private fun tensor(o: JsonObject) = TensorSpec(o.string("name"), o.longs("shape"), o.string("dtype"))

        private fun fromJson(m: JsonObject, sha256: String): Manifest {
            val backend = m.string("backend")
            if (backend !in BACKENDS) throw BundleError("unknown backend '$backend' (known: ${BACKENDS.sorted()}); re-export the bundle")
            val filesObj = m.obj("files")
            val files = filesObj.map.keys.associateWith { role ->
                val f = filesObj.obj(role)
                BundleFile(role, f.string("path"), f.string("sha256"), f.long("bytes"))
            }
            val methodsObj = m.obj("methods")
            val methods = methodsObj.map.keys.associateWith { key ->
                val o = methodsObj.obj(key)
                Method(o.string("name"), o.strings("inputs"), o.strings("outputs"))
            }
            val inputs = m.objects("inputs")
            if (inputs.size != 1) throw BundleError("the app trains bundles with one input; this one has ${inputs.size}")
            val training = m.obj("training")
            val backendOptions = if (m.has("backend_options")) m.obj("backend_options") else null
            val runsIn = backendOptions?.takeIf { it.has("optimizer_runs_in") }?.string("optimizer_runs_in")
                ?: if (backend == "onnxruntime") "onnxruntime" else "app"
            for (role in listOf("train", "predict")) {
                if (role !in methods) throw BundleError("manifest has no '$role' method; re-export the bundle")
            }
            return Manifest(
                name = m.string("name"),
                backend = backend,
                files = files,
                input = tensor(inputs[0]),
                labels = tensor(m.obj("labels")),
                classes = m.strings("classes"),
                trainable = m.objects("trainable").map(::tensor),
                optimizer = OptimizerConfig.fromJson(m.obj("optimizer")),
                batchSize = training.int("batch_size"),
                microBatches = training.int("micro_batches"),
                methods = methods,
                optimizerRunsIn = runsIn,
                predictedPeakBytes = m.obj("memory").long("predicted_peak_bytes"),
                raw = m,
                sha256 = sha256,
            )
        }
    }
}

/** What a training backend can run; [Bundle.requireRunnable] turns a mismatch into a reason and a fix. */
data class BackendSupport(
    val name: String,
    val backend: String,
    /** The optimizer placements this backend trains (see [Manifest.optimizerRunsIn]). */
    val optimizerRunsIn: Set<String>,
)

/** A bundle directory whose every file was checked against the manifest (size and sha256) before use. */
class Bundle private constructor(val directory: File, val manifest: Manifest) {
    fun file(role: String): File {
        val f = manifest.files[role] ?: throw BundleError("bundle ${manifest.name} has no '$role' file; re-export it")
        return File(directory, f.path)
    }

    /** Refuses a bundle [support] cannot train, naming the reason and the export flag that would make it work. */
    fun requireRunnable(support: BackendSupport) {
        val m = manifest
        if (m.backend != support.backend) {
            throw BundleError("${support.name} trains ${support.backend} bundles; ${m.name} is ${m.backend}: re-export with --backend ${support.backend}")
        }
        if (m.optimizerRunsIn !in support.optimizerRunsIn) {
            val fix = when {
                "program" in support.optimizerRunsIn -> "re-export with --fused-update so the program applies the optimizer itself"
                else -> "use a backend that runs optimizer_runs_in=${m.optimizerRunsIn}"
            }
            throw BundleError("${support.name} cannot apply the optimizer of ${m.name} (it runs in '${m.optimizerRunsIn}'): $fix")
        }
        if (m.input.dtype != "float32") throw BundleError("input dtype ${m.input.dtype} is not float32; the app draws float images")
        if (m.labels.dtype != "int64") {
            throw BundleError("labels are ${m.labels.dtype}; the app labels drawings with class indices: re-export with --loss cross_entropy")
        }
        if (m.trainable.any { it.dtype != "float32" }) throw BundleError("trainable parameters must be float32 for the app's optimizer; re-export without them")
    }

    companion object {
        const val MANIFEST_NAME = "manifest.json"

        fun open(directory: File): Bundle {
            val manifestFile = File(directory, MANIFEST_NAME)
            if (!manifestFile.isFile) throw BundleError("no $MANIFEST_NAME in $directory; push a bundle directory made by memwall export")
            val manifest = Manifest.parse(manifestFile.readBytes())
            val root = directory.canonicalFile
            for (f in manifest.files.values) {
                val file = File(directory, f.path).canonicalFile
                if (!file.path.startsWith(root.path + File.separator)) {
                    throw BundleError("file '${f.path}' of ${manifest.name} points outside the bundle; re-export it")
                }
                if (!file.isFile) throw BundleError("bundle ${manifest.name} lacks ${f.path}; copy the whole bundle directory")
                if (file.length() != f.bytes) {
                    throw BundleError("${f.path} has ${file.length()} bytes, the manifest says ${f.bytes}: the copy is incomplete; copy the bundle again")
                }
                if (sha256Hex(file) != f.sha256) throw BundleError("${f.path} does not match its sha256 in the manifest; copy the bundle again")
            }
            return Bundle(directory, manifest)
        }
    }
}

fun sha256Hex(bytes: ByteArray): String = MessageDigest.getInstance("SHA-256").digest(bytes).toHex()

fun sha256Hex(file: File): String {
    val digest = MessageDigest.getInstance("SHA-256")
    file.inputStream().use { input ->
        val buffer = ByteArray(1 shl 16)
        while (true) {
            val n = input.read(buffer)
            if (n < 0) break
            digest.update(buffer, 0, n)
        }
    }
    return digest.digest().toHex()
}

private fun ByteArray.toHex() = joinToString("") { "%02x".format(it) }
