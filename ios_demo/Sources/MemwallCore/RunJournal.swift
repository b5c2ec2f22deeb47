import Foundation

extension Report.Device {
    /// This device as the report describes it. iOS: the hardware model (utsname, e.g. iPhone15,2), the app's
    /// memory limit; Linux: the host (uname, /proc/meminfo), as sdk_tools.lab.client.host_device_info.
    public static func current(deviceId: String) -> Report.Device {
        var names = utsname()
        uname(&names)
        func text<T>(_ field: T) -> String {
            withUnsafeBytes(of: field) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        let machine = text(names.machine)
        #if os(iOS)
        let (os, manufacturer, model) = ("ios", "Apple", machine)
        let version = ProcessInfo.processInfo.operatingSystemVersion
        let osVersion = "\(version.majorVersion).\(version.minorVersion).\(version.patchVersion)"
        #else
        let (os, manufacturer, model) = (text(names.sysname).lowercased(), "unknown", text(names.nodename))
        let osVersion = text(names.release)
        #endif
        return Report.Device(deviceId: deviceId, model: model.isEmpty ? "unknown" : model, manufacturer: manufacturer,
                             os: os, osVersion: osVersion, ramBytes: Int64(ProcessInfo.processInfo.physicalMemory),
                             appMemoryLimitBytes: ProcessMemory.appLimit(), abi: machine, cpu: nil)
    }
}

/// Finds runs that never finished. A run writes its journal when it starts and after every step (the report so
/// far and the last memory figure), and removes it when it ends; an app killed by jetsam (the memory limit) or
/// a crash cannot remove it, so the next start finds it and queues a failed-run report: `oom`/`jetsam` when the
/// last figure was within 10% of the app's memory limit, `crash` otherwise.
public struct RunJournal: Sendable {
    public let url: URL
    /// Progress is written at most this often: each write is an fsync'd rename, and steps of small bundles take
    /// about a millisecond (the moonshot's MLP: 0.3-1 ms) — the journal must not cost more than the training.
    public let interval: TimeInterval
    private let lastWrite = LastWrite()

    public init(url: URL, interval: TimeInterval = 0.25) {
        self.url = url
        self.interval = interval
    }

    struct Entry: Codable {
        var report: Report
        var lastMemoryBytes: Int64
        var stepsDone: Int
    }

    /// Record a run that starts now (its report so far: device, bundle, run id and start time).
    public func begin(_ report: Report) throws {
        try write(Entry(report: report, lastMemoryBytes: report.memory?.baselineBytes ?? 0, stepsDone: 0))
    }

    /// After each step: how far the run got and the memory it used.
    public func progress(stepsDone: Int, memoryBytes: Int64) throws {
        guard lastWrite.due(after: interval), var entry = read() else { return }
        entry.stepsDone = stepsDone
        entry.lastMemoryBytes = memoryBytes
        entry.report.memory = Report.Memory(peakRssBytes: max(memoryBytes, entry.report.memory?.peakRssBytes ?? 0),
                                            baselineBytes: entry.report.memory?.baselineBytes)
        try write(entry)
    }

    /// The run ended (ok or with an error it reported itself).
    public func end() {
        try? FileManager.default.removeItem(at: url)
    }

    /// At app start: the report of a run that was killed, queued, and the journal cleared; nil if none.
    @discardableResult
    public func recover(into queue: ReportQueue, memoryLimit: Int64?) throws -> Report? {
        guard var entry = read() else {
            end()
            return nil
        }
        let jetsam = memoryLimit.map { entry.lastMemoryBytes * 10 >= $0 * 9 } ?? false
        entry.report.status = jetsam ? "oom" : "crash"
        entry.report.run.steps = entry.stepsDone
        entry.report.error = Report.RunError(
            kind: jetsam ? "jetsam" : "crash",
            message: "the app was stopped after \(entry.stepsDone) steps without finishing the run "
                + "(last memory figure \(entry.lastMemoryBytes) bytes"
                + (memoryLimit.map { ", app limit \($0) bytes)" } ?? ")"),
            signal: nil)
        try queue.enqueue(entry.report)
        end()
        return entry.report
    }

    private func read() -> Entry? {
        guard let data = FileManager.default.contents(atPath: url.path) else { return nil }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try? decoder.decode(Entry.self, from: data)
    }

    private func write(_ entry: Entry) throws {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        try AtomicFile.write(try encoder.encode(entry), to: url)
    }
}

/// When the journal was last written (shared by the copies of one RunJournal).
private final class LastWrite: @unchecked Sendable {
    private let lock = NSLock()
    private var time: Date?

    /// True (and now recorded) if nothing was written in the last `interval` seconds.
    func due(after interval: TimeInterval) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        let now = Date()
        if let time, now.timeIntervalSince(time) < interval { return false }
        time = now
        return true
    }
}
