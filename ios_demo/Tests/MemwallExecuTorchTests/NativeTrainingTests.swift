import Foundation
import MemwallCore
import MemwallExecuTorch
import XCTest

/// The moonshot: the Swift core drives the real ExecuTorch runtime through the native core's C API — the code
/// path an iPhone runs — and trains real bundles. tests/test_ios.py exports them, trains them with the Python
/// host runner on the same samples, and passes the directory in MEMWALL_TEST_NATIVE_CASES: one directory per
/// case with `bundle/` and `case.json` (samples, steps, the Python runner's losses, accuracies and parameters).
/// Each case writes `swift.json` (what Swift measured) and `report.json` (its report.v1) beside it, and posts the
/// report to the lab at MEMWALL_TEST_LAB_URL when there is one.
final class NativeTrainingTests: XCTestCase {
    static let anonymous = "00000000-0000-4000-8000-00000000d01d"

    struct Case: Decodable {
        let steps: Int
        let samples: [Sample]
        let evaluation: [Sample]
        let losses: [Double]
        let accuracyBefore: Double
        let accuracyAfter: Double
        let parameters: [String: [Double]]
    }

    struct Measured: Encodable {
        let losses: [Double]
        let largestLossDifference: Double
        let largestParameterDifference: Double
        let stepTimesMs: [Double]
        let peakDeltaBytes: Int64
    }

    func testSwiftTrainsLikeThePythonRunner() throws {
        guard let root = ProcessInfo.processInfo.environment["MEMWALL_TEST_NATIVE_CASES"] else {
            throw XCTSkip("tests/test_ios.py passes the exported bundles (MEMWALL_TEST_NATIVE_CASES)")
        }
        // With a lab (MEMWALL_TEST_LAB_URL), each run's report is posted to it as the app posts it.
        let lab = ProcessInfo.processInfo.environment["MEMWALL_TEST_LAB_URL"].flatMap(URL.init(string:)).map(LabClient.init)
        let registration = try lab?.register(name: "swift-native-\(UUID().uuidString.prefix(8))")
        let cases = try FileManager.default.contentsOfDirectory(atPath: root).sorted()
        XCTAssertFalse(cases.isEmpty)
        for name in cases {
            let directory = URL(fileURLWithPath: root).appendingPathComponent(name)
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            let golden = try decoder.decode(Case.self, from: try Data(contentsOf: directory.appendingPathComponent("case.json")))
            // The app's own flow (MemwallCore.Personalization): baseline, journal, training, queued report.
            let app = directory.appendingPathComponent("app")
            let personalization = Personalization(device: .current(deviceId: registration?.deviceId ?? Self.anonymous),
                                                  journal: RunJournal(url: app.appendingPathComponent("journal.json")),
                                                  queue: ReportQueue(directory: app.appendingPathComponent("reports")))
            var seen = 0
            let outcome = try personalization.run(
                bundleAt: directory.appendingPathComponent("bundle"), steps: golden.steps,
                data: { _ in (golden.samples, golden.evaluation) },
                makeBackend: { try ExecuTorchBackend(bundle: $0) }
            ) { progress in
                seen += 1
                XCTAssertEqual(progress.step, seen)
            }
            let (bundle, result) = (outcome.bundle, outcome.result)
            let backend = try XCTUnwrap(outcome.backend as? ExecuTorchBackend)
            XCTAssertFalse(FileManager.default.fileExists(atPath: personalization.journal.url.path), "a finished run clears its journal")
            XCTAssertEqual(personalization.queue.pending().count, 1)
            XCTAssertEqual(seen, golden.steps)
            XCTAssertEqual(backend.steps, golden.steps)
            XCTAssertEqual(result.accuracyBefore, golden.accuracyBefore, name)
            XCTAssertEqual(result.accuracyAfter, golden.accuracyAfter, name)
            var largestLoss = 0.0
            for (step, (swift, python)) in zip(result.losses, golden.losses).enumerated() {
                largestLoss = max(largestLoss, abs(swift - python))
                XCTAssertEqual(swift, python, accuracy: 1e-6 + 1e-5 * abs(python), "\(name) step \(step + 1) loss")
            }
            var largestParameter = 0.0
            let parameters = try backend.parameters()
            XCTAssertEqual(Set(parameters.map(\.name)), Set(golden.parameters.keys), name)
            for (parameter, values) in parameters {
                let expected = golden.parameters[parameter]!
                XCTAssertEqual(values.count, expected.count, parameter)
                for (swift, python) in zip(values, expected) {
                    largestParameter = max(largestParameter, abs(Double(swift) - python))
                    XCTAssertEqual(Double(swift), python, accuracy: 1e-6 + 1e-5 * abs(python), "\(name) \(parameter)")
                }
            }
            // A checkpoint of the native core reads back in the Swift core (one format on both sides).
            let checkpointURL = directory.appendingPathComponent("checkpoint.safetensors")
            try backend.saveCheckpoint(to: checkpointURL, dataPosition: golden.steps * bundle.manifest.training.microBatches)
            let checkpoint = try Checkpoint.load(from: checkpointURL, manifestSHA256: bundle.manifestSHA256)
            XCTAssertEqual(checkpoint.steps, golden.steps)
            for (parameter, values) in parameters {
                XCTAssertEqual(checkpoint.tensors[parameter]?.values, values, "\(name) checkpoint \(parameter)")
            }
            // And the other way: the Swift writer's file resumes the native core.
            let swiftWritten = directory.appendingPathComponent("checkpoint-swift.safetensors")
            try checkpoint.save(to: swiftWritten)
            XCTAssertEqual(try Data(contentsOf: swiftWritten), try Data(contentsOf: checkpointURL), "same bytes")
            XCTAssertEqual(try backend.loadCheckpoint(from: swiftWritten), golden.steps * bundle.manifest.training.microBatches)
            XCTAssertEqual(backend.steps, golden.steps)

            try outcome.report.encoded().write(to: directory.appendingPathComponent("report.json"))
            if let lab, let registration {
                XCTAssertEqual(personalization.queue.flush(to: lab, token: registration.token), ReportQueue.FlushResult(delivered: 1))
            }
            let measured = Measured(losses: result.losses, largestLossDifference: largestLoss,
                                    largestParameterDifference: largestParameter, stepTimesMs: result.stepTimesMs,
                                    peakDeltaBytes: result.memory.peakDeltaBytes ?? 0)
            let encoder = JSONEncoder()
            encoder.keyEncodingStrategy = .convertToSnakeCase
            try encoder.encode(measured).write(to: directory.appendingPathComponent("swift.json"))
        }
    }
}
