#if canImport(UIKit)
import MemwallCore
import SwiftUI

/// Draw a digit, pick its label, add it: the user's own data for personalization.
struct SamplesView: View {
    @EnvironmentObject private var model: AppModel
    @State private var strokes: [[Sketch.Point]] = []
    @State private var label = 0
    private let canvas: Double = 280

    var body: some View {
        NavigationStack {
            VStack(spacing: 16) {
                Canvas { context, _ in
                    for stroke in strokes {
                        var path = Path()
                        path.addLines(stroke.map { CGPoint(x: $0.x, y: $0.y) })
                        context.stroke(path, with: .color(.white), style: StrokeStyle(lineWidth: canvas / 10, lineCap: .round, lineJoin: .round))
                    }
                }
                .frame(width: canvas, height: canvas)
                .background(Color.black)
                .gesture(DragGesture(minimumDistance: 0).onChanged { value in
                    let point = Sketch.Point(x: value.location.x, y: value.location.y)
                    if value.translation == .zero || strokes.isEmpty { strokes.append([point]) } else { strokes[strokes.count - 1].append(point) }
                })
                Picker("Label", selection: $label) {
                    ForEach(0 ..< 10) { Text("\($0)").tag($0) }
                }
                .pickerStyle(.segmented)
                HStack {
                    Button("Clear") { strokes = [] }
                    Spacer()
                    Button("Add sample") {
                        model.add(Sketch(strokes: strokes, canvasSize: canvas, lineWidth: canvas / 10), label: label)
                        strokes = []
                    }
                    .disabled(strokes.isEmpty)
                    .buttonStyle(.borderedProminent)
                }
                Text("\(model.sketches.count) samples (every 4th is held out to measure accuracy)")
                    .font(.footnote)
            }
            .padding()
            .navigationTitle("Your digits")
        }
    }
}
#endif
