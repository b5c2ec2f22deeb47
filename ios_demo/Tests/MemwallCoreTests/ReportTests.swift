import Foundation
import MemwallCore
import XCTest

/// report.v1 documents: the golden ones round-trip, a run's report is built from what it measured, a killed
/// run is found at the next start, memory is sampled.
final class ReportTests: XCTestCase {
    /// JSON without its null members: absent and null mean the same in report.v1.
    private func withoutNulls(_ value: JSONValue) -> JSONValue {
        switch value {
        case let .object(fields): return .object(fields.filter { $0.value != .null }.mapValues(withoutNulls))
        case let .array(items): return .array(items.map(withoutNulls))
        default: return value
        }
    }

    func testGoldenReportsRoundTrip() throws {
        for name in ["report-ok.json", "report-oom.json"] {
            let raw = try Golden.data(name)
            let report = try Report.decode(raw)
            let original = try JSONDecoder().decode(JSONValue.self, from: raw)
            let again = try JSONDecoder().decode(JSONValue.self, from: try report.encoded())
            XCTAssertEqual(withoutNulls(again), withoutNulls(original), name)
        }
    }

    static func manifestBundle(_ test: XCTestCase) throws -> TrainingBundle {
        let directory = try Golden.temporaryDirectory(test)
        try Golden.data("manifest-executorch-micro-batches.json").write(to: directory.appendingPathComponent("manifest.json"))
        return try TrainingBundle(directory: directory, verifyFiles: false)
    }

    func testARunsReportCarriesWhatItMeasured() throws {
        let bundle = try Self.manifestBundle(self)
        let memory = Report.Memory(peakRssBytes: 300, baselineBytes: 100, peakDeltaBytes: 200,
                                   samples: [Report.Sample(tMs: 0, rssBytes: 100)])
        let result = TrainingResult(steps: 2, losses: [2.5, .nan], stepTimesMs: [3.5, 4], accuracyBefore: 0.1,
                                    accuracyAfter: 0.9, memory: memory, threads: 2)
        let report = Report(device: .current(deviceId: "00000000-0000-4000-8000-000000000001"), bundle: bundle,
                            startedAt: Date(timeIntervalSince1970: 0), result: result)
        XCTAssertEqual(report.run.lossCurve, [2.5, nil], "a non-finite loss is null")
        XCTAssertEqual(report.run.microBatches, 2)
        XCTAssertEqual(report.run.startedAt, "1970-01-01T00:00:00.000Z")
        XCTAssertEqual(report.bundle.manifestSha256, bundle.manifestSHA256)
        XCTAssertEqual(report.bundle.plan, JSONValue.object([:]), "no techniques: an empty plan, as the Python client sends")
        XCTAssertEqual(report.bundle.predicted?["planned_arena_bytes"], bundle.manifest.memory["planned_arena_bytes"]?.int64)
        XCTAssertEqual(report.status, "ok")
        let json = String(decoding: try report.encoded(), as: UTF8.self)
        XCTAssertTrue(json.contains("\"manifest_sha256\""), json)
        XCTAssertTrue(json.contains("\"t_ms\""), json)
    }

    func testAKilledRunIsReportedAtTheNextStart() throws {
        let directory = try Golden.temporaryDirectory(self)
        let queue = ReportQueue(directory: directory.appendingPathComponent("queue"))
        let journal = RunJournal(url: directory.appendingPathComponent("run.json"), interval: 0)
        let started = try Report.decode(try Golden.data("report-oom.json"))
        for (limit, status, kind) in [(Int64?.none, "crash", "crash"), (Int64(1000), "oom", "jetsam")] {
            try journal.begin(started)
            try journal.progress(stepsDone: 7, memoryBytes: 950)
            // The process dies here: nothing calls journal.end(). The next start:
            let found = try journal.recover(into: queue, memoryLimit: limit)
            XCTAssertEqual(found?.status, status)
            XCTAssertEqual(found?.error?.kind, kind)
            XCTAssertEqual(found?.run.steps, 7)
            XCTAssertEqual(queue.pending().count, 1, "queued once (by its report_id)")
            XCTAssertNil(try journal.recover(into: queue, memoryLimit: limit), "found once")
        }
        try journal.begin(started)
        journal.end()
        XCTAssertNil(try journal.recover(into: queue, memoryLimit: nil), "a run that ended is not a failed run")
    }

    func testTheJournalIsWrittenAtMostOncePerInterval() throws {
        let directory = try Golden.temporaryDirectory(self)
        let queue = ReportQueue(directory: directory.appendingPathComponent("queue"))
        let journal = RunJournal(url: directory.appendingPathComponent("run.json"), interval: 60)
        try journal.begin(try Report.decode(try Golden.data("report-oom.json")))
        try journal.progress(stepsDone: 1, memoryBytes: 10)
        try journal.progress(stepsDone: 2, memoryBytes: 20)
        XCTAssertEqual(try journal.recover(into: queue, memoryLimit: nil)?.run.steps, 1)
    }

    func testMemorySamplerSeesAnAllocation() throws {
        let sampler = MemorySampler(interval: 0.01)
        sampler.begin()
        let size = 64 << 20
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        memset(buffer, 1, size)
        Thread.sleep(forTimeInterval: 0.05)
        let memory = sampler.end()
        buffer.deallocate()
        XCTAssertGreaterThan(memory.baselineBytes!, 0)
        XCTAssertGreaterThanOrEqual(memory.peakDeltaBytes!, Int64(size) * 9 / 10, "\(memory.peakDeltaBytes!)")
        XCTAssertGreaterThan(memory.samples!.count, 1)
    }
}
