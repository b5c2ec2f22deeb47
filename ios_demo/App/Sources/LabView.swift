#if canImport(UIKit)
import SwiftUI

/// Point the app at a device lab (`memwall lab serve` on the Mac or a server), register, post queued reports.
struct LabView: View {
    @EnvironmentObject private var model: AppModel

    var body: some View {
        NavigationStack {
            Form {
                Section("Lab") {
                    TextField("http://192.168.1.10:8765", text: $model.labURL)
                        .keyboardType(.URL)
                        .textInputAutocapitalization(.never)
                    Button("Register this device") { Task { await model.register() } }
                    if let registration = model.registration {
                        LabeledContent("Device", value: registration.deviceId)
                    }
                }
                Section("Reports") {
                    LabeledContent("Waiting to post", value: "\(model.queued)")
                    Button("Post now") { Task { await model.flush() } }
                        .disabled(model.registration == nil)
                }
                if !model.status.isEmpty {
                    Section("Status") { Text(model.status).font(.footnote) }
                }
            }
            .navigationTitle("Device lab")
        }
    }
}
#endif
