package dev.memwall.demo

import android.app.Activity
import android.app.AlertDialog
import android.content.Intent
import android.net.Uri
import android.os.Bundle as AndroidBundle
import android.provider.DocumentsContract
import android.text.InputType
import android.view.View
import android.view.ViewGroup
import android.widget.Button
import android.widget.EditText
import android.widget.HorizontalScrollView
import android.widget.LinearLayout
import android.widget.ProgressBar
import android.widget.ScrollView
import android.widget.TextView
import dev.memwall.core.Bundle
import dev.memwall.core.Images
import dev.memwall.core.MemorySample
import java.io.File
import java.util.concurrent.Executors

/**
 * The demo: load a bundle (adb push, folder picker or an asset), draw and label samples, personalize the model on
 * them with live memory, see accuracy before and after, and send the run's report to a lab.
 */
class MainActivity : Activity(), RunListener {
    private val worker = Executors.newSingleThreadExecutor()
    private lateinit var state: DemoState
    private lateinit var status: TextView
    private lateinit var memory: TextView
    private lateinit var progress: ProgressBar
    private lateinit var drawView: DrawView
    private lateinit var labels: LinearLayout
    private lateinit var samplesText: TextView
    private lateinit var stepsInput: EditText
    private lateinit var labInput: EditText
    private var bundle: Bundle? = null
    private val samples = ArrayList<Pair<FloatArray, Int>>()

    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        state = DemoState(this)
        setContentView(layout())
        background("checking the last run") {
            val recovered = state.recoverInterruptedRun()
            val flushed = state.queue.flush()
            listOfNotNull(
                recovered?.let { "the last training did not finish ($it): reported as a failed run" },
                "reports sent: ${flushed.sent}, waiting: ${flushed.kept}",
            ).joinToString("\n")
        }
    }

    private fun layout(): View {
        val column = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(24, 24, 24, 24) }
        status = TextView(this).apply { text = applicationInfo.loadLabel(packageManager) }
        column.addView(status)
        column.addView(row(button("Pushed bundles") { choosePushedBundle() }, button("Pick folder") { pickFolder() }))
        drawView = DrawView(this)
        column.addView(drawView)
        labels = LinearLayout(this)
        column.addView(HorizontalScrollView(this).apply { addView(labels) })
        samplesText = TextView(this)
        column.addView(row(button("Clear") { drawView.clear() }, samplesText))
        stepsInput = EditText(this).apply { setText("50"); inputType = InputType.TYPE_CLASS_NUMBER }
        column.addView(row(TextView(this).apply { text = "steps" }, stepsInput, button("Train") { train() }))
        progress = ProgressBar(this, null, android.R.attr.progressBarStyleHorizontal)
        column.addView(progress)
        memory = TextView(this)
        column.addView(memory)
        labInput = EditText(this).apply { hint = "http://LAB:8765"; setText(state.labUrl ?: "") }
        column.addView(row(labInput, button("Register") { register() }, button("Send") { send() }))
        return ScrollView(this).apply { addView(column) }
    }

    private fun row(vararg views: View) = LinearLayout(this).apply {
        views.forEach { addView(it, LinearLayout.LayoutParams(0, ViewGroup.LayoutParams.WRAP_CONTENT, 1f)) }
    }

    private fun button(text: String, action: () -> Unit) = Button(this).apply {
        this.text = text
        setOnClickListener { action() }
    }

    /** Runs [work] off the UI thread and shows its result (or its error, one line) in the status line. */
    private fun background(what: String, work: () -> String) {
        status.text = "$what..."
        worker.execute {
            val text = try {
                work()
            } catch (e: Exception) {
                "$what failed: ${e.message}"
            }
            runOnUiThread { status.text = text }
        }
    }

    /** Bundles pushed with `adb push BUNDLE /sdcard/Android/data/dev.memwall.demo/files/bundles/`, plus assets. */
    private fun choosePushedBundle() {
        val root = File(getExternalFilesDir(null), "bundles").apply { mkdirs() }
        copyAssetBundles(root)
        val dirs = root.listFiles { f -> File(f, Bundle.MANIFEST_NAME).isFile }?.sortedBy { it.name } ?: emptyList()
        if (dirs.isEmpty()) {
            status.text = "no bundles in $root: adb push a bundle directory there"
            return
        }
        AlertDialog.Builder(this).setItems(dirs.map { it.name }.toTypedArray()) { _, i -> open(dirs[i]) }.show()
    }

    private fun copyAssetBundles(root: File) {
        for (name in assets.list("bundles") ?: emptyArray()) {
            val dir = File(root, name)
            if (dir.exists()) continue
            for (file in assets.list("bundles/$name") ?: emptyArray()) {
                assets.open("bundles/$name/$file").use { input -> File(dir.apply { mkdirs() }, file).outputStream().use { input.copyTo(it) } }
            }
        }
    }

    private fun pickFolder() = startActivityForResult(Intent(Intent.ACTION_OPEN_DOCUMENT_TREE), PICK_FOLDER)

    @Deprecated("Activity result API of the platform, kept for API 23")
    override fun onActivityResult(requestCode: Int, resultCode: Int, data: Intent?) {
        val tree = data?.data
        if (requestCode != PICK_FOLDER || resultCode != RESULT_OK || tree == null) return
        background("copying the bundle") {
            val dir = copyTree(tree)
            openNow(dir)
        }
    }

    /** Copies the picked folder's files into app storage (the runtimes need file paths, mmap for ExecuTorch). */
    private fun copyTree(tree: Uri): File {
        val treeId = DocumentsContract.getTreeDocumentId(tree)
        val children = DocumentsContract.buildChildDocumentsUriUsingTree(tree, treeId)
        val dir = File(filesDir, "bundles/" + treeId.substringAfterLast('/').substringAfterLast(':'))
        dir.deleteRecursively()
        dir.mkdirs()
        val columns = arrayOf(DocumentsContract.Document.COLUMN_DOCUMENT_ID, DocumentsContract.Document.COLUMN_DISPLAY_NAME)
        contentResolver.query(children, columns, null, null, null)?.use { cursor ->
            while (cursor.moveToNext()) {
                val uri = DocumentsContract.buildDocumentUriUsingTree(tree, cursor.getString(0))
                contentResolver.openInputStream(uri)?.use { input -> File(dir, cursor.getString(1)).outputStream().use { input.copyTo(it) } }
            }
        }
        return dir
    }

    private fun open(dir: File) = background("checking ${dir.name}") { openNow(dir) }

    private fun openNow(dir: File): String {
        val opened = Bundle.open(dir)
        Backends.open(opened).close()  // refuses a bundle no runtime here can train, saying why, before any drawing
        runOnUiThread { showBundle(opened) }
        val m = opened.manifest
        return "${m.name}: ${m.backend}, input ${m.input.shape}, predicted peak ${m.predictedPeakBytes shr 20} MiB"
    }

    private fun showBundle(opened: Bundle) {
        bundle = opened
        samples.clear()
        labels.removeAllViews()
        opened.manifest.classes.forEachIndexed { index, name -> labels.addView(button(name) { addSample(index) }) }
        samplesText.text = "0 samples"
    }

    private fun addSample(label: Int) {
        val m = bundle?.manifest ?: return
        val (channels, height, width) = Images.sampleShape(m.input)
        val side = CANVAS_SIDE
        samples.add(Images.resample(drawView.ink(side), side, side, channels, height, width) to label)
        drawView.clear()
        samplesText.text = "${samples.size} samples"
    }

    private fun train() {
        val opened = bundle ?: run { status.text = "load a bundle first"; return }
        // Every fourth sample is held out to measure accuracy before and after.
        val test = samples.filterIndexed { i, _ -> i % 4 == 3 }
        val trainSet = samples.filterIndexed { i, _ -> i % 4 != 3 }
        if (trainSet.isEmpty() || test.isEmpty()) {
            status.text = "draw at least 4 labelled samples"
            return
        }
        val steps = stepsInput.text.toString().toIntOrNull()?.coerceIn(1, 100_000) ?: 50
        progress.max = steps
        background("training") {
            val report = DemoRun(state, opened, trainSet, test, steps, this).run()
            @Suppress("UNCHECKED_CAST")
            val run = report["run"] as Map<String, Any?>
            val flushed = state.queue.flush()
            "${report["status"]}: accuracy ${run["accuracy_before"]} -> ${run["accuracy_after"]}; reports sent ${flushed.sent}, waiting ${flushed.kept}"
        }
    }

    private fun register() {
        val url = labInput.text.toString().trim()
        background("registering with $url") {
            state.register(url)
            "registered as ${state.deviceId}"
        }
    }

    private fun send() = background("sending reports") {
        val flushed = state.queue.flush()
        "sent ${flushed.sent}, waiting ${flushed.kept}, rejected ${flushed.rejected}"
    }

    override fun onProgress(step: Int, steps: Int, loss: Double) = runOnUiThread {
        progress.progress = step
        status.text = "step $step/$steps, loss %.4f".format(loss)
    }

    override fun onMemory(sample: MemorySample, peakBytes: Long) = runOnUiThread {
        memory.text = "resident ${sample.rssBytes shr 20} MiB, peak ${peakBytes shr 20} MiB of ${state.memoryLimitBytes shr 20} MiB"
    }

    override fun onPhase(text: String) = runOnUiThread { status.text = text }

    override fun onDestroy() {
        worker.shutdown()
        super.onDestroy()
    }

    companion object {
        private const val PICK_FOLDER = 1
        private const val CANVAS_SIDE = 64
    }
}
