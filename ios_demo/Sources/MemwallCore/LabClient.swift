import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The device lab's HTTP API (docs/lab.md): register this device, post reports.
public struct LabClient: Sendable {
    public let baseURL: URL
    public var timeout: TimeInterval = 10

    public init(baseURL: URL) {
        self.baseURL = baseURL
    }

    public struct Registration: Codable, Equatable, Sendable {
        public let deviceId: String
        public let token: String
    }

    /// The outcome of one post: stored now (201), already stored by an earlier try (200), refused for good (4xx:
    /// the report or token is wrong, retrying cannot help), or not reached (offline, 5xx, timeout: retry later).
    public enum PostOutcome: Equatable, Sendable {
        case stored, alreadyStored
        case refused(String)
        case unreachable(String)
    }

    public func register(name: String) throws -> Registration {
        let body = try JSONEncoder().encode(["name": name])
        let (status, data) = try send("POST", "/api/v1/devices", body: body, token: nil)
        guard status == 201 else {
            throw MemwallError(.lab, "lab \(baseURL) refused the registration (HTTP \(status)): \(Self.message(data))")
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(Registration.self, from: data)
    }

    public func post(report: Data, token: String) -> PostOutcome {
        do {
            let (status, data) = try send("POST", "/api/v1/reports", body: report, token: token)
            switch status {
            case 201: return .stored
            case 200: return .alreadyStored
            case 400 ..< 500 where status != 408 && status != 429:
                return .refused("HTTP \(status): \(Self.message(data))")
            default: return .unreachable("HTTP \(status): \(Self.message(data))")
            }
        } catch {
            return .unreachable("\(error)")
        }
    }

    /// Post with retries (the lab stores a report once per run.report_id, so a retry after a lost answer is safe).
    public func post(report: Data, token: String, attempts: Int, backoff: TimeInterval = 0.5) -> PostOutcome {
        var outcome = PostOutcome.unreachable("no attempt made")
        for attempt in 0 ..< max(1, attempts) {
            outcome = post(report: report, token: token)
            guard case .unreachable = outcome else { return outcome }
            if attempt + 1 < attempts { Thread.sleep(forTimeInterval: backoff * pow(2, Double(attempt))) }
        }
        return outcome
    }

    private static func message(_ data: Data) -> String {
        struct ErrorBody: Decodable { let message: String }
        return (try? JSONDecoder().decode(ErrorBody.self, from: data))?.message
            ?? String(decoding: data.prefix(200), as: UTF8.self)
    }

    private func send(_ method: String, _ path: String, body: Data, token: String?) throws -> (Int, Data) {
        var request = URLRequest(url: baseURL.appendingPathComponent(path), timeoutInterval: timeout)
        request.httpMethod = method
        request.httpBody = body
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        let done = DispatchSemaphore(value: 0)
        let box = ResultBox()
        let task = URLSession.shared.dataTask(with: request) { data, response, error in
            box.set(data, response as? HTTPURLResponse, error)
            done.signal()
        }
        task.resume()
        done.wait()
        let (data, response, error) = box.get()
        if let error { throw MemwallError(.lab, "lab \(baseURL) not reached: \(error.localizedDescription)") }
        guard let response else { throw MemwallError(.lab, "lab \(baseURL) gave no HTTP answer") }
        return (response.statusCode, data ?? Data())
    }
}

/// Hands the URLSession callback's values to the waiting thread.
private final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: (Data?, HTTPURLResponse?, Error?) = (nil, nil, nil)

    func set(_ data: Data?, _ response: HTTPURLResponse?, _ error: Error?) {
        lock.lock()
        value = (data, response, error)
        lock.unlock()
    }

    func get() -> (Data?, HTTPURLResponse?, Error?) {
        lock.lock()
        defer { lock.unlock() }
        return value
    }
}

/// Reports waiting to reach the lab, one file each in a directory, so a report made offline or before a crash
/// is posted at a later start. A report leaves the queue only when the lab answered 201 or 200 (stored, or
/// stored by an earlier try whose answer was lost), so each arrives exactly once; a refused one (4xx) moves to
/// `rejected/` with the reason instead of being retried forever.
public struct ReportQueue: Sendable {
    public let directory: URL

    public init(directory: URL) {
        self.directory = directory
    }

    /// Store a report (its run.report_id names the file: queuing the same run twice keeps one).
    @discardableResult
    public func enqueue(_ report: Report) throws -> URL {
        let url = directory.appendingPathComponent("\(report.run.reportId).json")
        try AtomicFile.write(try report.encoded(), to: url)
        return url
    }

    public func pending() -> [URL] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.sorted().map { directory.appendingPathComponent($0) }
    }

    public struct FlushResult: Equatable, Sendable {
        public var delivered = 0
        public var rejected = 0
        public var remaining = 0

        public init(delivered: Int = 0, rejected: Int = 0, remaining: Int = 0) {
            (self.delivered, self.rejected, self.remaining) = (delivered, rejected, remaining)
        }
    }

    /// Post every queued report; stops at the first unreachable answer (the lab is down: try at the next flush).
    public func flush(to client: LabClient, token: String, attempts: Int = 3) -> FlushResult {
        var result = FlushResult()
        let queued = pending()
        for (index, url) in queued.enumerated() {
            guard let body = FileManager.default.contents(atPath: url.path) else { continue }
            switch client.post(report: body, token: token, attempts: attempts) {
            case .stored, .alreadyStored:
                try? FileManager.default.removeItem(at: url)
                result.delivered += 1
            case let .refused(reason):
                let rejected = directory.appendingPathComponent("rejected")
                try? FileManager.default.createDirectory(at: rejected, withIntermediateDirectories: true)
                try? FileManager.default.moveItem(at: url, to: rejected.appendingPathComponent(url.lastPathComponent))
                try? AtomicFile.write(Data(reason.utf8), to: rejected.appendingPathComponent(url.lastPathComponent + ".reason"))
                result.rejected += 1
            case .unreachable:
                result.remaining = queued.count - index
                return result
            }
        }
        return result
    }
}
