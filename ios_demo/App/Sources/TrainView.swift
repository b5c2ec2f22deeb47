#if canImport(UIKit)
import MemwallCore
import SwiftUI

/// Pick a bundle, train it on the drawn samples with progress and live memory, compare accuracy before/after.
struct TrainView: View {
    @EnvironmentObject private var model: AppModel

    private func bytes(_ value: Int64) -> String {
        ByteCountFormatter.string(fromByteCount: value, countStyle: .memory)
    }

    private func percent(_ value: Double?) -> String {
        value.map { String(format: "%.1f%%", $0 * 100) } ?? "–"
    }

    var body: some View {
        NavigationStack {
            Form {
                Section("Bundle") {
                    Picker("Bundle", selection: $model.selected) {
                        ForEach(model.bundles, id: \.self) { Text($0.lastPathComponent).tag(Optional($0)) }
                    }
                    Button("Reload bundles") { model.refreshBundles() }
                    Stepper("Steps: \(model.steps)", value: $model.steps, in: 1 ... 1000, step: 10)
                }
                Section("Run") {
                    Button(model.running ? "Training…" : "Train") { model.train() }
                        .disabled(model.running || model.selected == nil || model.sketches.count < 4)
                    if let progress = model.progress {
                        ProgressView(value: Double(progress.step), total: Double(progress.steps))
                        LabeledContent("Loss", value: String(format: "%.4f", progress.loss))
                    }
                    LabeledContent("Memory now", value: bytes(model.memoryBytes))
                    LabeledContent("Accuracy before", value: percent(model.accuracy.before))
                    LabeledContent("Accuracy after", value: percent(model.accuracy.after))
                }
                if !model.status.isEmpty {
                    Section("Status") { Text(model.status).font(.footnote) }
                }
            }
            .navigationTitle("Personalize")
        }
    }
}
#endif
