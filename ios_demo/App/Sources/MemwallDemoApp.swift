#if canImport(UIKit)
import SwiftUI

/// memwall's iOS demo: personalize a bundle on digits the user draws, on the phone, and report to the lab.
@main
struct MemwallDemoApp: App {
    @StateObject private var model = AppModel()

    var body: some Scene {
        WindowGroup {
            ContentView()
                .environmentObject(model)
                .task { await model.start() }
        }
    }
}

struct ContentView: View {
    var body: some View {
        TabView {
            SamplesView().tabItem { Label("Samples", systemImage: "pencil.tip") }
            TrainView().tabItem { Label("Train", systemImage: "memorychip") }
            LabView().tabItem { Label("Lab", systemImage: "network") }
        }
    }
}
#endif
