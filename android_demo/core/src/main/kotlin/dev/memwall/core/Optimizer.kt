package dev.memwall.core

import kotlin.math.pow
import kotlin.math.sqrt

/** The manifest's optimizer, with PyTorch semantics (torch.optim.SGD / AdamW). */
data class OptimizerConfig(
    val kind: String,
    val lr: Double,
    val momentum: Double = 0.0,
    val dampening: Double = 0.0,
    val weightDecay: Double = 0.0,
    val nesterov: Boolean = false,
    val beta1: Double = 0.9,
    val beta2: Double = 0.999,
    val eps: Double = 1e-8,
) {
    companion object {
        fun fromJson(o: JsonObject): OptimizerConfig {
            val kind = o.string("kind")
            if (kind != "sgd" && kind != "adamw") throw BundleError("optimizer '$kind' is not sgd or adamw; re-export with --optimizer sgd|adamw")
            fun d(key: String, default: Double) = if (o.has(key)) o.double(key) else default
            val betas = if (o.has("betas")) o.doubles("betas") else listOf(0.9, 0.999)
            return OptimizerConfig(
                kind = kind,
                lr = o.double("lr"),
                momentum = d("momentum", 0.0),
                dampening = d("dampening", 0.0),
                weightDecay = d("weight_decay", 0.0),
                nesterov = o.has("nesterov") && o.bool("nesterov"),
                beta1 = betas[0],
                beta2 = betas[1],
                eps = d("eps", 1e-8),
            )
        }
    }
}

/**
 * sdk_tools/runner/optim.py's update rules, line for line, on float32 arrays updated in place.
 *
 * State is named as in checkpoints (`momentum/<param>`, `exp_avg/<param>`, `exp_avg_sq/<param>`); [steps] is the
 * 1-based count of steps taken. Scalars are computed in double and applied in float, as torch does for float32
 * tensors, so results match the golden vectors to rounding order (tests/golden/optimizer.json).
 */
class Optimizer(val config: OptimizerConfig, val params: Map<String, FloatArray>) {
    var steps = 0L
        private set
    val state: Map<String, FloatArray> = LinkedHashMap<String, FloatArray>().also { s ->
        for ((name, p) in params) {
            if (config.kind == "adamw") {
                s["exp_avg/$name"] = FloatArray(p.size)
                s["exp_avg_sq/$name"] = FloatArray(p.size)
            } else if (config.momentum > 0) {
                s["momentum/$name"] = FloatArray(p.size)
            }
        }
    }

    // One scratch buffer of the largest parameter's size, allocated once (optim.py's workspace).
    private val scratch = FloatArray(params.values.maxOfOrNull { it.size } ?: 0)

    fun step(grads: Map<String, FloatArray>) {
        steps++
        for ((name, p) in params) {
            val g = grads[name] ?: throw IllegalArgumentException("no gradient for $name")
            require(g.size == p.size) { "gradient of $name has ${g.size} values, the parameter ${p.size}" }
            if (config.kind == "adamw") adamw(name, p, g) else sgd(name, p, g)
        }
    }

    private fun sgd(name: String, p: FloatArray, grad: FloatArray) {
        val c = config
        var dp = grad
        if (c.weightDecay != 0.0) {
            val wd = c.weightDecay.toFloat()
            for (i in p.indices) scratch[i] = grad[i] + wd * p[i]
            dp = scratch
        }
        if (c.momentum != 0.0) {
            val buf = state.getValue("momentum/$name")
            if (steps == 1L) {
                dp.copyInto(buf, 0, 0, p.size)
            } else {
                val m = c.momentum.toFloat()
                val keep = (1 - c.dampening).toFloat()
                for (i in p.indices) buf[i] = buf[i] * m + keep * dp[i]
            }
            if (c.nesterov) {
                val m = c.momentum.toFloat()
                for (i in p.indices) scratch[i] = dp[i] + m * buf[i]
                dp = scratch
            } else {
                dp = buf
            }
        }
        val lr = c.lr.toFloat()
        for (i in p.indices) p[i] = p[i] + -lr * dp[i]
    }

    private fun adamw(name: String, p: FloatArray, grad: FloatArray) {
        val c = config
        val expAvg = state.getValue("exp_avg/$name")
        val expAvgSq = state.getValue("exp_avg_sq/$name")
        val decay = (1 - c.lr * c.weightDecay).toFloat()
        val w = (1 - c.beta1).toFloat()
        val b2 = c.beta2.toFloat()
        val oneMinusB2 = (1 - c.beta2).toFloat()
        val biasCorrection1 = 1 - c.beta1.pow(steps.toDouble())
        val biasCorrection2 = 1 - c.beta2.pow(steps.toDouble())
        val bc2Sqrt = sqrt(biasCorrection2).toFloat()
        val eps = c.eps.toFloat()
        val stepSize = (-c.lr / biasCorrection1).toFloat()
        for (i in p.indices) {
            p[i] = p[i] * decay
            // torch.lerp: start + w * (end - start) for w < 0.5, else end - (end - start) * (1 - w)
            val diff = grad[i] - expAvg[i]
            expAvg[i] = if (w < 0.5f) expAvg[i] + w * diff else grad[i] - diff * (1 - w)
            expAvgSq[i] = expAvgSq[i] * b2 + oneMinusB2 * grad[i] * grad[i]
            val denom = sqrt(expAvgSq[i]) / bc2Sqrt + eps
            p[i] = p[i] + stepSize * (expAvg[i] / denom)
        }
    }

    /** Restores state saved by [state] (a checkpoint's `optimizer/` tensors, without the prefix). */
    fun loadState(steps: Long, saved: Map<String, FloatArray>) {
        val missing = state.keys - saved.keys
        if (missing.isNotEmpty()) {
            throw BundleError("checkpoint lacks optimizer state ${missing.sorted().take(3)}: it was saved with another optimizer; start fresh")
        }
        for ((key, value) in state) {
            val s = saved.getValue(key)
            require(s.size == value.size) { "optimizer state $key has ${s.size} values, expected ${value.size}" }
            s.copyInto(value)
        }
        this.steps = steps
    }
}
