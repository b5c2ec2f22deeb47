import Foundation

/// The manifest's `optimizer`, with PyTorch semantics.
public struct OptimizerConfig: Codable, Equatable, Sendable {
    public var kind: String
    public var lr: Double
    public var momentum: Double = 0
    public var dampening: Double = 0
    public var weightDecay: Double = 0
    public var nesterov: Bool = false
    public var betas: [Double] = [0.9, 0.999]
    public var eps: Double = 1e-8

    public init(kind: String, lr: Double, momentum: Double = 0, dampening: Double = 0, weightDecay: Double = 0,
                nesterov: Bool = false, betas: [Double] = [0.9, 0.999], eps: Double = 1e-8) {
        (self.kind, self.lr, self.momentum, self.dampening) = (kind, lr, momentum, dampening)
        (self.weightDecay, self.nesterov, self.betas, self.eps) = (weightDecay, nesterov, betas, eps)
    }
}

/// `torch.optim.SGD` / `AdamW` update rules on float32 parameters, written as sdk_tools/runner/optim.py writes
/// them (same operations, same order), for runtimes whose training call returns gradients and leaves the update
/// to the app (`optimizer_runs_in: app`). State names are `<kind>/<parameter>`, as a checkpoint's `optimizer/...`.
///
/// Each operation is written the way torch's CPU kernels evaluate it, so the results are torch's to the bit on
/// tests/golden/optimizer.json (every case, 3 steps; OptimizerTests): Python float scalars become float32,
/// `add(alpha=)` and `lerp` are fused multiply-adds (`addingProduct`), `addcmul` is `self + (value * t1) * t2`
/// and `addcdiv` is `self + (value * t1) / t2` (writing the latter as `value * (t1 / t2)` was 1 ulp off on
/// adamw_custom). Those vectors are short tensors, which torch runs through its scalar loop; longer ones go
/// through its vector loop, whose AdamW division may round differently (within the golden tolerance).
public struct Optimizer {
    public let config: OptimizerConfig
    public private(set) var steps = 0
    public var state: [String: [Float]] = [:]

    public init(config: OptimizerConfig, shapes: [String: Int]) {
        self.config = config
        for (name, numel) in shapes {
            if config.kind == "adamw" {
                state["exp_avg/\(name)"] = [Float](repeating: 0, count: numel)
                state["exp_avg_sq/\(name)"] = [Float](repeating: 0, count: numel)
            } else if config.momentum > 0 {
                state["momentum/\(name)"] = [Float](repeating: 0, count: numel)
            }
        }
    }

    /// One update of every parameter in `params` (in place) with its gradient.
    public mutating func step(params: inout [String: [Float]], grads: [String: [Float]]) throws {
        steps += 1
        for name in params.keys.sorted() {
            guard let grad = grads[name], grad.count == params[name]!.count else {
                throw MemwallError(.runtime, "no gradient of the right size for \(name): the runtime and the manifest disagree")
            }
            if config.kind == "adamw" {
                adamw(name, &params[name]!, grad)
            } else {
                sgd(name, &params[name]!, grad)
            }
        }
    }

    /// Restore what a checkpoint saved; refuses state of another optimizer.
    public mutating func load(steps: Int, state saved: [String: [Float]]) throws {
        for (key, value) in state {
            guard let restored = saved[key], restored.count == value.count else {
                throw MemwallError(.checkpoint, "checkpoint lacks optimizer state \(key): it was saved with another optimizer")
            }
            state[key] = restored
        }
        self.steps = steps
    }

    private mutating func sgd(_ name: String, _ p: inout [Float], _ grad: [Float]) {
        let c = config
        var dp = grad
        if c.weightDecay != 0 {
            let wd = Float(c.weightDecay)
            for i in dp.indices { dp[i] = grad[i].addingProduct(wd, p[i]) }
        }
        if c.momentum != 0 {
            let key = "momentum/\(name)"
            var buf = state[key]!
            let momentum = Float(c.momentum), keep = Float(1 - c.dampening)
            if steps == 1 {
                buf = dp
            } else {
                for i in buf.indices { buf[i] = (buf[i] * momentum).addingProduct(keep, dp[i]) }
            }
            if c.nesterov {
                for i in dp.indices { dp[i] = dp[i].addingProduct(momentum, buf[i]) }
            } else {
                dp = buf
            }
            state[key] = buf
        }
        let alpha = Float(-c.lr)
        for i in p.indices { p[i] = p[i].addingProduct(alpha, dp[i]) }
    }

    private mutating func adamw(_ name: String, _ p: inout [Float], _ grad: [Float]) {
        let c = config
        let beta1 = c.betas[0], beta2 = c.betas[1]
        var expAvg = state["exp_avg/\(name)"]!, expAvgSq = state["exp_avg_sq/\(name)"]!
        let decay = Float(1 - c.lr * c.weightDecay)
        let weight = Float(1 - beta1), b2 = Float(beta2), oneMinusB2 = Float(1 - beta2)
        let biasCorrection1 = 1 - pow(beta1, Double(steps))
        let biasCorrection2Sqrt = Float((1 - pow(beta2, Double(steps))).squareRoot())
        let stepSize = Float(-c.lr / biasCorrection1), eps = Float(c.eps)
        for i in p.indices {
            p[i] = p[i] * decay
            // torch.lerp: a + w * (b - a) for |w| < 0.5, else b - (b - a) * (1 - w)
            let diff = grad[i] - expAvg[i]
            expAvg[i] = weight < 0.5 ? expAvg[i].addingProduct(weight, diff) : grad[i].addingProduct(-diff, 1 - weight)
            expAvgSq[i] = (expAvgSq[i] * b2).addingProduct(oneMinusB2 * grad[i], grad[i])
            let denom = expAvgSq[i].squareRoot() / biasCorrection2Sqrt + eps
            p[i] = p[i] + stepSize * expAvg[i] / denom
        }
        state["exp_avg/\(name)"] = expAvg
        state["exp_avg_sq/\(name)"] = expAvgSq
    }
}

/// Micro-batch accumulation as the host runner does it: each call's gradients summed in call order, divided by
/// the number of calls (float32); the step's loss is the float64 mean of the calls' losses.
public struct Accumulator {
    public private(set) var sums: [String: [Float]] = [:]
    public private(set) var losses: [Double] = []

    public init() {}

    public mutating func add(loss: Double, grads: [String: [Float]]) {
        losses.append(loss)
        for (name, g) in grads {
            if var sum = sums[name] {
                for i in sum.indices { sum[i] += g[i] }
                sums[name] = sum
            } else {
                sums[name] = g
            }
        }
    }

    /// (mean loss, averaged gradients); the accumulator is empty afterwards.
    public mutating func finish() -> (loss: Double, grads: [String: [Float]]) {
        let count = Float(losses.count)
        let grads = sums.mapValues { $0.map { $0 / count } }
        let loss = losses.reduce(0, +) / Double(losses.count)
        self = Accumulator()
        return (loss, grads)
    }
}
