import MemwallCore
import XCTest

final class SketchTests: XCTestCase {
    func testAVerticalStrokeInksItsColumnOnly() {
        // A "1": a vertical line down the middle of a 100-unit canvas, 10 units wide.
        let one = Sketch(strokes: [[.init(x: 50, y: 10), .init(x: 50, y: 90)]], canvasSize: 100, lineWidth: 12.5)
        let pixels = one.rasterize(channels: 2, height: 8, width: 8)
        XCTAssertEqual(pixels.count, 2 * 64)
        XCTAssertEqual(Array(pixels[0 ..< 64]), Array(pixels[64...]), "channels repeat the plane")
        for row in 1 ... 6 {
            XCTAssertEqual(pixels[row * 8 + 3], 0.5, "row \(row): half of the pixel left of the centre line")
            XCTAssertEqual(pixels[row * 8 + 4], 0.5)
            XCTAssertEqual(pixels[row * 8 + 0], 0)
            XCTAssertEqual(pixels[row * 8 + 7], 0)
        }
        XCTAssertTrue(pixels.allSatisfy { (0 ... 1).contains($0) })
    }

    func testASampleIsCheckedAgainstTheBundle() throws {
        let manifest = try Manifest.parse(try Golden.data("manifest-executorch.json"), source: "m")
        let dot = Sketch(strokes: [[.init(x: 5, y: 5)]], canvasSize: 10, lineWidth: 4)
        let sample = try manifest.sample(dot, label: 3)
        XCTAssertEqual(sample.inputs[0].count, 64)
        XCTAssertGreaterThan(sample.inputs[0].reduce(0, +), 0)
        XCTAssertThrowsError(try manifest.sample(dot, label: 10)) { XCTAssertTrue("\($0)".contains("not one of"), "\($0)") }
    }
}
