package dev.memwall.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

/** The Kotlin optimizer and accumulation against the Python runner's own results (tests/golden). */
class OptimizerTest {
    @Test
    fun everyOptimizerCaseMatchesThePythonRunnerStepByStep() {
        val doc = Golden.json("optimizer.json")
        val tolerance = doc.obj("tolerance")
        val cases = doc.objects("cases")
        assertTrue("expected SGD and AdamW cases", cases.map { it.obj("optimizer").string("kind") }.toSet() == setOf("sgd", "adamw"))
        for (case in cases) {
            val name = case.string("name")
            val params = Golden.named(case.obj("params"))
            val optimizer = Optimizer(OptimizerConfig.fromJson(case.obj("optimizer")), params)
            case.objects("steps").forEachIndexed { i, step ->
                optimizer.step(Golden.named(step.obj("grads")))
                Golden.assertClose("$name step ${i + 1} params", Golden.named(step.obj("params")), params, tolerance)
                Golden.assertClose("$name step ${i + 1} state", Golden.named(step.obj("state")), optimizer.state, tolerance)
            }
            assertEquals(case.objects("steps").size.toLong(), optimizer.steps)
        }
    }

    @Test
    fun microBatchAccumulationMatchesTheHostRunner() {
        val doc = Golden.json("accumulation.json")
        val tolerance = doc.obj("tolerance")
        val params = Golden.named(doc.obj("params"))
        val accumulator = Accumulator(params.mapValues { it.value.size })
        val calls = doc.objects("calls")
        assertEquals(doc.int("micro_batches"), calls.size)
        var loss = 0.0
        for (call in calls) {
            accumulator.add(Golden.named(call.obj("grads")))
            loss += call.double("loss")
        }
        val mean = accumulator.mean()
        Golden.assertClose("accumulated", Golden.named(doc.obj("accumulated_grads")), mean, tolerance)
        Optimizer(OptimizerConfig.fromJson(doc.obj("optimizer")), params).step(mean)
        Golden.assertClose("params after", Golden.named(doc.obj("params_after")), params, tolerance)
        assertEquals(doc.double("loss"), loss / calls.size, 1e-12)
    }

    @Test
    fun optimizerStateFromAnotherOptimizerIsRefused() {
        val params = mapOf("w" to FloatArray(2))
        val adamw = Optimizer(OptimizerConfig("adamw", 1e-3), params)
        val message = runCatching { adamw.loadState(3, mapOf("momentum/w" to FloatArray(2))) }.exceptionOrNull()?.message
        assertTrue(message, message!!.contains("another optimizer"))
    }
}
