import Foundation
import MemwallCore
import XCTest

/// Manifests (real exports in tests/golden), bundle verification and checkpoints, as the Python side defines them.
final class BundleTests: XCTestCase {
    func testRealManifestsOfEveryBundleKindParse() throws {
        let cases: [(String, String, Manifest.OptimizerPlacement, Int)] = [
            ("manifest-executorch.json", "executorch", .app, 1),
            ("manifest-executorch-micro-batches.json", "executorch", .app, 2),
            ("manifest-executorch-fused-update.json", "executorch", .program, 1),
            ("manifest-onnxruntime.json", "onnxruntime", .onnxruntime, 1),
        ]
        for (name, backend, placement, microBatches) in cases {
            let manifest = try Manifest.parse(try Golden.data(name), source: name)
            XCTAssertEqual(manifest.backend, backend, name)
            XCTAssertEqual(manifest.optimizerPlacement, placement, name)
            XCTAssertEqual(manifest.training.microBatches, microBatches, name)
            XCTAssertEqual(manifest.classes.count, 10, name)
            XCTAssertEqual(manifest.trainable.map(\.numel).reduce(0, +), 17226, name)
            XCTAssertGreaterThan(manifest.predictedPeakBytes, 0, name)
            // Written before memory.by_runtime: every runtime's prediction is the top-level one.
            XCTAssertEqual(manifest.predictedPeakBytes(for: Manifest.nativeRuntime), manifest.predictedPeakBytes, name)
        }
    }

    func testAnUnknownSchemaVersionIsRefusedWithTheFix() throws {
        XCTAssertThrowsError(try Manifest.parse(try Golden.data("manifest-bad-schema-version.json"), source: "m.json")) { error in
            XCTAssertEqual((error as? MemwallError)?.kind, .bundle)
            XCTAssertTrue("\(error)".contains("unsupported schema_version 2"), "\(error)")
            XCTAssertTrue("\(error)".contains("Re-export"), "\(error)")
        }
        for (bad, expected) in [("[1, 2]", "not a JSON object"), ("{\"schema_version\": 1}", "missing field"),
                                ("not json", "not a JSON object")] {
            XCTAssertThrowsError(try Manifest.parse(Data(bad.utf8), source: "m.json")) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(bad): \(error)")
            }
        }
    }

    /// A bundle directory with the golden ExecuTorch manifest and a program file of our own bytes.
    private func makeBundle(program: Data) throws -> URL {
        let directory = try Golden.temporaryDirectory(self)
        var manifest = try JSONDecoder().decode([String: JSONValue].self, from: try Golden.data("manifest-executorch.json"))
        manifest["files"] = .object(["program": .object([
            "path": .string("model.pte"), "sha256": .string(SHA256.hex(program)), "bytes": .int(Int64(program.count)),
        ])])
        try JSONEncoder().encode(manifest).write(to: directory.appendingPathComponent("manifest.json"))
        try program.write(to: directory.appendingPathComponent("model.pte"))
        return directory
    }

    func testBundleFilesAreVerifiedBeforeUse() throws {
        let program = Data((0 ..< 100_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let directory = try makeBundle(program: program)
        let bundle = try TrainingBundle(directory: directory)
        XCTAssertEqual(bundle.manifest.name, "mlp-executorch")
        XCTAssertEqual(bundle.manifestSHA256, SHA256.hex(try Data(contentsOf: directory.appendingPathComponent("manifest.json"))))

        var replaced = program
        replaced[5] ^= 0xFF
        try replaced.write(to: directory.appendingPathComponent("model.pte"))
        XCTAssertThrowsError(try TrainingBundle(directory: directory)) { XCTAssertTrue("\($0)".contains("has sha256"), "\($0)") }
        try program.prefix(10).write(to: directory.appendingPathComponent("model.pte"))
        XCTAssertThrowsError(try TrainingBundle(directory: directory)) { XCTAssertTrue("\($0)".contains("truncated"), "\($0)") }
        try FileManager.default.removeItem(at: directory.appendingPathComponent("model.pte"))
        XCTAssertThrowsError(try TrainingBundle(directory: directory)) { XCTAssertTrue("\($0)".contains("missing"), "\($0)") }
        XCTAssertThrowsError(try TrainingBundle(directory: directory.appendingPathComponent("nothing"))) {
            XCTAssertTrue("\($0)".contains("not a memwall bundle"), "\($0)")
        }
    }

    func testARunThatFailsQueuesAnErrorReport() throws {
        let directory = try makeBundle(program: Data("not a program".utf8))
        let work = try Golden.temporaryDirectory(self)
        let personalization = Personalization(device: .current(deviceId: "00000000-0000-4000-8000-000000000001"),
                                              journal: RunJournal(url: work.appendingPathComponent("journal.json")),
                                              queue: ReportQueue(directory: work.appendingPathComponent("reports")))
        XCTAssertThrowsError(try personalization.run(
            bundleAt: directory, steps: 3, data: { _ in ([], []) },
            makeBackend: { _ in throw MemwallError(.unsupported, "this build has no ExecuTorch runtime") }
        ))
        let queued = try personalization.queue.pending().map { try Report.decode(try Data(contentsOf: $0)) }
        XCTAssertEqual(queued.map(\.status), ["error"])
        XCTAssertEqual(queued.first?.error?.kind, "unsupported")
        XCTAssertEqual(queued.first?.memory?.baselineBytes.map { $0 > 0 }, true)
        XCTAssertNil(try personalization.journal.recover(into: personalization.queue, memoryLimit: nil), "not a killed run")
    }

    func testSHA256OfKnownInputs() {
        XCTAssertEqual(SHA256.hex(Data()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Data(repeating: 0x61, count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    struct CheckpointGolden: Decodable {
        struct Entry: Decodable {
            let dtype: String
            let shape: [Int]
            let values: [Double]
        }

        let metadata: [String: String]
        let tensors: [String: Entry]
    }

    func testTheHostRunnersCheckpointReadsAndIsWrittenToTheByte() throws {
        let golden = try Golden.decode(CheckpointGolden.self, "checkpoint.json")
        let raw = try Golden.data("checkpoint.safetensors")
        let manifestSHA = SHA256.hex(try Golden.data("checkpoint-manifest.json"))
        XCTAssertEqual(manifestSHA, golden.metadata["manifest_sha256"])
        let url = Golden.directory.appendingPathComponent("checkpoint.safetensors")
        let checkpoint = try Checkpoint.load(from: url, manifestSHA256: manifestSHA)
        XCTAssertEqual(checkpoint.steps, Int(golden.metadata["steps"]!))
        XCTAssertEqual(checkpoint.dataPosition, Int(golden.metadata["data_position"]!))
        XCTAssertEqual(Set(checkpoint.tensors.keys), Set(golden.tensors.keys))
        for (name, entry) in golden.tensors {
            XCTAssertEqual(checkpoint.tensors[name]!.shape, entry.shape, name)
            XCTAssertEqual(checkpoint.tensors[name]!.values, entry.values.map { Float($0) }, name)
        }
        XCTAssertEqual(checkpoint.encoded(), raw, "Swift writes the Python runner's bytes")

        let directory = try Golden.temporaryDirectory(self)
        let saved = directory.appendingPathComponent("checkpoint.safetensors")
        try checkpoint.save(to: saved)
        XCTAssertEqual(try Checkpoint.load(from: saved, manifestSHA256: manifestSHA), checkpoint)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path), ["checkpoint.safetensors"],
                       "no temporary file left behind")
    }

    func testCheckpointsOfAnotherBundleOrCorruptAreRefused() throws {
        let url = Golden.directory.appendingPathComponent("checkpoint.safetensors")
        XCTAssertThrowsError(try Checkpoint.load(from: url, manifestSHA256: String(repeating: "0", count: 64))) {
            XCTAssertTrue("\($0)".contains("another bundle"), "\($0)")
        }
        let raw = try Golden.data("checkpoint.safetensors")
        for cut in [0, 4, 20, raw.count - 4] {
            XCTAssertThrowsError(try Checkpoint.decode(raw.prefix(cut), source: "c")) {
                XCTAssertEqual(($0 as? MemwallError)?.kind, .checkpoint, "\($0)")
            }
        }
    }
}
