import MemwallCore
import XCTest

/// The optimizer rules and micro-batch accumulation against tests/golden (sdk_tools.runner.optim run by Python).
final class OptimizerTests: XCTestCase {
    struct Step: Decodable {
        let grads: [String: Golden.Tensor]
        let params: [String: Golden.Tensor]
        let state: [String: Golden.Tensor]
    }

    struct Case: Decodable {
        let name: String
        let optimizer: OptimizerConfig
        let params: [String: Golden.Tensor]
        let steps: [Step]
    }

    struct Vectors: Decodable {
        let tolerance: Golden.Tolerance
        let cases: [Case]
    }

    func testEveryOptimizerMatchesThePythonRunner() throws {
        let vectors = try Golden.decode(Vectors.self, "optimizer.json")
        XCTAssertEqual(vectors.cases.count, 6)
        for c in vectors.cases {
            var params = c.params.mapValues(\.floats)
            var optimizer = Optimizer(config: c.optimizer, shapes: params.mapValues(\.count))
            var largest = 0.0
            for (index, step) in c.steps.enumerated() {
                try optimizer.step(params: &params, grads: step.grads.mapValues(\.floats))
                XCTAssertEqual(Set(optimizer.state.keys), Set(step.state.keys), c.name)
                for (name, expected) in step.params {
                    largest = max(largest, Golden.compare(params[name]!, expected.values, vectors.tolerance, "\(c.name) step \(index + 1) \(name)"))
                }
                for (name, expected) in step.state {
                    largest = max(largest, Golden.compare(optimizer.state[name]!, expected.values, vectors.tolerance, "\(c.name) step \(index + 1) \(name)"))
                }
            }
            // The same float32 operations in the same order as torch's kernels: equal to the bit.
            XCTAssertEqual(largest, 0, "\(c.name) differs from the Python runner")
        }
    }

    func testOptimizerStateRoundTripsAndRefusesAnotherOptimizer() throws {
        var adamw = Optimizer(config: OptimizerConfig(kind: "adamw", lr: 1e-3), shapes: ["w": 2])
        var params: [String: [Float]] = ["w": [1, 2]]
        try adamw.step(params: &params, grads: ["w": [0.5, -0.5]])
        var restored = Optimizer(config: adamw.config, shapes: ["w": 2])
        try restored.load(steps: adamw.steps, state: adamw.state)
        XCTAssertEqual(restored.state, adamw.state)
        XCTAssertEqual(restored.steps, 1)
        var sgd = Optimizer(config: OptimizerConfig(kind: "sgd", lr: 0.1, momentum: 0.9), shapes: ["w": 2])
        XCTAssertThrowsError(try sgd.load(steps: 1, state: adamw.state)) { error in
            XCTAssertTrue("\(error)".contains("another optimizer"), "\(error)")
        }
    }

    struct Call: Decodable {
        let loss: Double
        let grads: [String: Golden.Tensor]
    }

    struct Accumulation: Decodable {
        let tolerance: Golden.Tolerance
        let microBatches: Int
        let optimizer: OptimizerConfig
        let params: [String: Golden.Tensor]
        let calls: [Call]
        let accumulatedGrads: [String: Golden.Tensor]
        let loss: Double
        let paramsAfter: [String: Golden.Tensor]
    }

    func testMicroBatchAccumulationMatchesThePythonRunner() throws {
        let golden = try Golden.decode(Accumulation.self, "accumulation.json")
        var accumulator = Accumulator()
        for call in golden.calls { accumulator.add(loss: call.loss, grads: call.grads.mapValues(\.floats)) }
        let (loss, grads) = accumulator.finish()
        XCTAssertEqual(loss, golden.loss, accuracy: 1e-15)
        XCTAssertEqual(golden.calls.count, golden.microBatches)
        for (name, expected) in golden.accumulatedGrads {
            _ = Golden.compare(grads[name]!, expected.values, golden.tolerance, "accumulated \(name)")
        }
        var params = golden.params.mapValues(\.floats)
        var optimizer = Optimizer(config: golden.optimizer, shapes: params.mapValues(\.count))
        try optimizer.step(params: &params, grads: grads)
        for (name, expected) in golden.paramsAfter {
            _ = Golden.compare(params[name]!, expected.values, golden.tolerance, "after \(name)")
        }
        XCTAssertTrue(accumulator.losses.isEmpty, "finish() empties the accumulator")
    }
}
