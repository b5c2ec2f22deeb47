package dev.memwall.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

class ImagesTest {
    @Test
    fun areaAveragesTheCanvasToTheInputShapeOnEveryChannel() {
        // 4x4 canvas, left half inked: 2x2 output is [1, 0; 1, 0] on each of 3 channels.
        val canvas = FloatArray(16) { if (it % 4 < 2) 1f else 0f }
        val out = Images.resample(canvas, 4, 4, channels = 3, outHeight = 2, outWidth = 2)
        assertArrayEquals(floatArrayOf(1f, 0f, 1f, 0f, 1f, 0f, 1f, 0f, 1f, 0f, 1f, 0f), out, 0f)
        val quarter = Images.resample(floatArrayOf(1f, 0f, 0f, 0f), 2, 2, 1, 1, 1)
        assertEquals(0.25f, quarter[0], 0f)
    }

    @Test
    fun sampleShapeComesFromTheManifest() {
        val m = Manifest.parse(Golden.file("manifest-executorch.json").readBytes())
        assertEquals(Triple(1, 8, 8), Images.sampleShape(m.input))
    }
}
