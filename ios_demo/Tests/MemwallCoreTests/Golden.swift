import Foundation
import MemwallCore
import XCTest

/// The repository's tests/golden/: what the Python reference really does (python -m sdk_tools.conformance).
enum Golden {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static let directory = repo.appendingPathComponent("tests/golden")

    static func data(_ name: String) throws -> Data {
        try Data(contentsOf: directory.appendingPathComponent(name))
    }

    static func decode<T: Decodable>(_ type: T.Type, _ name: String) throws -> T {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(type, from: try data(name))
    }

    struct Tolerance: Decodable {
        let abs: Double
        let rel: Double
    }

    struct Tensor: Decodable {
        let shape: [Int]
        let values: [Double]
        var floats: [Float] { values.map { Float($0) } }
    }

    /// Largest |actual - expected| beyond abs + rel * |expected| (0 when within), and the largest difference.
    static func compare(_ actual: [Float], _ expected: [Double], _ tolerance: Tolerance, _ what: String,
                        file: StaticString = #filePath, line: UInt = #line) -> Double {
        XCTAssertEqual(actual.count, expected.count, "\(what): size", file: file, line: line)
        var largest = 0.0
        for (a, e) in zip(actual, expected) {
            let diff = Swift.abs(Double(a) - e)
            largest = max(largest, diff)
            XCTAssertLessThanOrEqual(diff, tolerance.abs + tolerance.rel * Swift.abs(e), "\(what): \(a) vs \(e)",
                                     file: file, line: line)
        }
        return largest
    }

    /// A temporary directory removed at the end of the test.
    static func temporaryDirectory(_ test: XCTestCase) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }
}
