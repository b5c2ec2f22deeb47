/// A digit the user drew: strokes of points in a square canvas (points from 0 to `canvasSize`).
public struct Sketch: Codable, Equatable, Sendable {
    public struct Point: Codable, Equatable, Sendable {
        public var x: Double
        public var y: Double

        public init(x: Double, y: Double) {
            (self.x, self.y) = (x, y)
        }
    }

    public var strokes: [[Point]]
    public var canvasSize: Double
    /// Pen width in canvas units.
    public var lineWidth: Double

    public init(strokes: [[Point]], canvasSize: Double, lineWidth: Double) {
        (self.strokes, self.canvasSize, self.lineWidth) = (strokes, canvasSize, lineWidth)
    }

    /// The drawing as the model's input: `channels` x `height` x `width` floats, ink 1 on background 0 — the
    /// digits data's convention (sklearn digits / 16, white on black). Each pixel is the inked fraction of 4x4
    /// sub-pixels, so a stroke's edge is grey as in the downscaled training images.
    public func rasterize(channels: Int, height: Int, width: Int) -> [Float] {
        let sub = 4
        let radius = lineWidth / 2
        let segments: [(Point, Point)] = strokes.flatMap { stroke in
            stroke.count == 1 ? [(stroke[0], stroke[0])] : Array(zip(stroke, stroke.dropFirst()))
        }
        var plane = [Float](repeating: 0, count: height * width)
        for row in 0 ..< height {
            for column in 0 ..< width {
                var inked = 0
                for sy in 0 ..< sub {
                    for sx in 0 ..< sub {
                        let p = Point(x: (Double(column) + (Double(sx) + 0.5) / Double(sub)) * canvasSize / Double(width),
                                      y: (Double(row) + (Double(sy) + 0.5) / Double(sub)) * canvasSize / Double(height))
                        if segments.contains(where: { Sketch.distance(p, $0.0, $0.1) <= radius }) { inked += 1 }
                    }
                }
                plane[row * width + column] = Float(inked) / Float(sub * sub)
            }
        }
        return Array((0 ..< channels).map { _ in plane }.joined())
    }

    private static func distance(_ p: Point, _ a: Point, _ b: Point) -> Double {
        let (dx, dy) = (b.x - a.x, b.y - a.y)
        let length2 = dx * dx + dy * dy
        let t = length2 == 0 ? 0 : max(0, min(1, ((p.x - a.x) * dx + (p.y - a.y) * dy) / length2))
        let (cx, cy) = (a.x + t * dx - p.x, a.y + t * dy - p.y)
        return (cx * cx + cy * cy).squareRoot()
    }
}

extension Manifest {
    /// A drawn, labelled sample for this bundle's first input (C x H x W).
    public func sample(_ sketch: Sketch, label: Int) throws -> Sample {
        guard let shape = inputs.first?.shape, shape.count == 4 else {
            throw MemwallError(.data, "bundle \(name) does not take images (input shape \(inputs.first?.shape ?? [])); draw samples need an N x C x H x W input")
        }
        let sample = Sample(inputs: [sketch.rasterize(channels: shape[1], height: shape[2], width: shape[3])], label: label)
        try check(sample)
        return sample
    }
}
