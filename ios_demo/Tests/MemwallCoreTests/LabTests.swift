import Foundation
import MemwallCore
import XCTest

/// Against a real `memwall lab serve` that tests/test_ios.py starts (MEMWALL_TEST_LAB_URL); skipped without one.
/// MEMWALL_TEST_OFFLINE_URL is a port nothing listens on (the phone offline); the report ids that must be in the
/// lab exactly once are written to MEMWALL_TEST_OUT for the Python side to count.
final class LabTests: XCTestCase {
    private var lab: LabClient!
    private var offline: LabClient!
    private var out: URL!

    override func setUpWithError() throws {
        let env = ProcessInfo.processInfo.environment
        guard let url = env["MEMWALL_TEST_LAB_URL"], let offlineURL = env["MEMWALL_TEST_OFFLINE_URL"],
              let outPath = env["MEMWALL_TEST_OUT"]
        else { throw XCTSkip("no lab: tests/test_ios.py runs these against a real memwall lab serve") }
        lab = LabClient(baseURL: URL(string: url)!)
        offline = LabClient(baseURL: URL(string: offlineURL)!)
        offline.timeout = 2
        out = URL(fileURLWithPath: outPath)
    }

    /// A valid report of this device: the golden completed run with a fresh id.
    private func report(_ registration: LabClient.Registration, golden: String = "report-ok.json") throws -> Report {
        var report = try Report.decode(try Golden.data(golden))
        report.device = .current(deviceId: registration.deviceId)
        report.run.reportId = UUID().uuidString.lowercased()
        report.run.startedAt = rfc3339(Date())
        return report
    }

    func testReportsMadeOfflineArriveExactlyOnce() throws {
        let registration = try lab.register(name: "swift-test-\(UUID().uuidString.prefix(8))")
        let directory = try Golden.temporaryDirectory(self)
        let queue = ReportQueue(directory: directory)
        let ok = try report(registration)
        try queue.enqueue(ok)
        try queue.enqueue(ok)
        XCTAssertEqual(queue.pending().count, 1, "one file per report_id")

        // A run killed by jetsam while offline, found at the next start.
        let journal = RunJournal(url: directory.appendingPathComponent("journal/run.json"), interval: 0)
        try journal.begin(try report(registration, golden: "report-oom.json"))
        try journal.progress(stepsDone: 3, memoryBytes: 990)
        let killed = try XCTUnwrap(try journal.recover(into: queue, memoryLimit: 1000))
        XCTAssertEqual(queue.pending().count, 2)

        let offlineResult = queue.flush(to: offline, token: registration.token, attempts: 2)
        XCTAssertEqual(offlineResult, ReportQueue.FlushResult(delivered: 0, rejected: 0, remaining: 2))
        XCTAssertEqual(queue.pending().count, 2, "nothing leaves the queue while offline")

        XCTAssertEqual(queue.flush(to: lab, token: registration.token), ReportQueue.FlushResult(delivered: 2))
        XCTAssertTrue(queue.pending().isEmpty)
        XCTAssertEqual(queue.flush(to: lab, token: registration.token), ReportQueue.FlushResult())
        // The answer to a post was lost and the app posts again: the lab keeps the first.
        XCTAssertEqual(lab.post(report: try ok.encoded(), token: registration.token), .alreadyStored)
        let ids = [ok.run.reportId, killed.run.reportId].joined(separator: "\n")
        try Data((ids + "\n").utf8).write(to: out)
    }

    func testARefusedReportIsSetAsideWithItsReason() throws {
        let registration = try lab.register(name: "swift-test-\(UUID().uuidString.prefix(8))")
        let queue = ReportQueue(directory: try Golden.temporaryDirectory(self))
        var bad = try report(registration)
        bad.device.deviceId = "00000000-0000-4000-8000-000000000000"  // not the token's device: 403
        try queue.enqueue(bad)
        XCTAssertEqual(queue.flush(to: lab, token: registration.token), ReportQueue.FlushResult(rejected: 1))
        let reason = try String(contentsOf: queue.directory.appendingPathComponent("rejected/\(bad.run.reportId).json.reason"), encoding: .utf8)
        XCTAssertTrue(reason.contains("HTTP 403"), reason)
        #if !os(Linux)
        // swift-corelibs-foundation 6.0.3 (Linux) traps in FoundationNetworking on a 401 answer whose
        // WWW-Authenticate header is a bare "Bearer" (what the lab sends): this runs on Apple platforms only.
        XCTAssertEqual(lab.post(report: try bad.encoded(), token: "not-a-token"), .refused("HTTP 401: unknown bearer token"))
        #endif
    }
}
