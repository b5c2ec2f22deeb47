package dev.memwall.core

/**
 * Drawn samples to the bundle's input: a grayscale canvas (ink 1.0 on 0.0, as the digits data the demo bundles
 * are trained on: sklearn digits / 16) area-averaged down to H x W and repeated over C channels, channel-major.
 */
object Images {
    fun resample(ink: FloatArray, width: Int, height: Int, channels: Int, outHeight: Int, outWidth: Int): FloatArray {
        require(ink.size == width * height) { "canvas has ${ink.size} values, expected $width x $height" }
        val plane = FloatArray(outHeight * outWidth)
        for (oy in 0 until outHeight) {
            val y0 = oy * height / outHeight
            val y1 = maxOf(y0 + 1, (oy + 1) * height / outHeight)
            for (ox in 0 until outWidth) {
                val x0 = ox * width / outWidth
                val x1 = maxOf(x0 + 1, (ox + 1) * width / outWidth)
                var sum = 0f
                for (y in y0 until y1) for (x in x0 until x1) sum += ink[y * width + x]
                plane[oy * outWidth + ox] = sum / ((y1 - y0) * (x1 - x0))
            }
        }
        return FloatArray(channels * plane.size) { plane[it % plane.size] }
    }

    /** One sample's shape (C, H, W) from the manifest's input shape [batch, C, H, W]. */
    fun sampleShape(input: TensorSpec): Triple<Int, Int, Int> {
        require(input.shape.size == 4) { "the app draws images: input ${input.name} must be [batch, C, H, W], is ${input.shape}" }
        return Triple(input.shape[1].toInt(), input.shape[2].toInt(), input.shape[3].toInt())
    }
}
