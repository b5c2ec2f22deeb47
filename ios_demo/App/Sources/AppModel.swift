#if canImport(UIKit)
import Foundation
import MemwallCore
import SwiftUI
import UIKit

/// The app's state and its work off the main thread: bundles in Documents/bundles (pushed through the Files app
/// or Xcode), the user's drawn samples, training runs, the lab queue, and the journal that finds killed runs.
@MainActor
final class AppModel: ObservableObject {
    @Published var bundles: [URL] = []
    @Published var selected: URL?
    @Published var samples: [Sample] = []
    @Published var sketches: [(Sketch, Int)] = []
    @Published var steps = 50
    @Published var progress: TrainingProgress?
    @Published var memoryBytes: Int64 = 0
    @Published var accuracy: (before: Double?, after: Double?) = (nil, nil)
    @Published var running = false
    @Published var status = ""
    @Published var labURL = UserDefaults.standard.string(forKey: "labURL") ?? "http://192.168.1.10:8765"
    @Published var registration: LabClient.Registration?
    @Published var queued = 0

    private let documents = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
    private var support: URL { FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask)[0] }
    private var queue: ReportQueue { ReportQueue(directory: support.appendingPathComponent("reports")) }
    private var journal: RunJournal { RunJournal(url: support.appendingPathComponent("run-journal.json")) }

    /// At launch: a run that never finished (jetsam, crash) becomes a failed-run report; the queue is posted.
    func start() async {
        if let data = UserDefaults.standard.data(forKey: "registration") {
            registration = try? JSONDecoder().decode(LabClient.Registration.self, from: data)
        }
        do {
            if let killed = try journal.recover(into: queue, memoryLimit: ProcessMemory.appLimit()) {
                status = "The last run was stopped (\(killed.error?.kind ?? "crash")) after \(killed.run.steps ?? 0) steps; reported."
            }
        } catch {
            status = "\(error)"
        }
        refreshBundles()
        await flush()
    }

    func refreshBundles() {
        let directory = documents.appendingPathComponent("bundles")
        try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        bundles = names.sorted().map { directory.appendingPathComponent($0) }
            .filter { FileManager.default.fileExists(atPath: $0.appendingPathComponent("manifest.json").path) }
        if selected == nil { selected = bundles.first }
        queued = queue.pending().count
    }

    func add(_ sketch: Sketch, label: Int) {
        sketches.append((sketch, label))
    }

    /// Train the selected bundle on the drawn samples (3 in 4 train, every 4th held out for accuracy).
    func train() {
        guard let url = selected, !running else { return }
        running = true
        status = "Loading \(url.lastPathComponent)…"
        let sketches = self.sketches, steps = self.steps, journal = self.journal, queue = self.queue
        let deviceId = registration?.deviceId ?? "00000000-0000-4000-8000-000000000000"
        // Training runs off the main thread; the sketches are split 3:1 into training and held-out samples.
        let personalization = Personalization(device: .current(deviceId: deviceId), journal: journal, queue: queue)
        Task.detached(priority: .userInitiated) {
            do {
                let outcome = try personalization.run(
                    bundleAt: url, steps: steps,
                    data: { manifest in
                        let all = try sketches.map { try manifest.sample($0.0, label: $0.1) }
                        return (all.enumerated().filter { $0.offset % 4 != 3 }.map(\.element),
                                all.enumerated().filter { $0.offset % 4 == 3 }.map(\.element))
                    },
                    makeBackend: Backends.make,
                    onMemory: { bytes in Task { @MainActor in self.memoryBytes = bytes } },
                    progress: { progress in Task { @MainActor in self.progress = progress } }
                )
                let peak = ByteCountFormatter.string(fromByteCount: outcome.result.memory.peakDeltaBytes ?? 0, countStyle: .memory)
                await MainActor.run {
                    self.accuracy = (outcome.result.accuracyBefore, outcome.result.accuracyAfter)
                    self.status = "Trained \(outcome.result.steps) steps; peak +\(peak)"
                }
            } catch {
                await MainActor.run { self.status = "\(error)" }
            }
            await MainActor.run { self.running = false }
            await self.flush()
        }
    }

    func register() async {
        guard let url = URL(string: labURL) else {
            status = "\(labURL) is not a URL; enter the lab's address, e.g. http://192.168.1.10:8765"
            return
        }
        UserDefaults.standard.set(labURL, forKey: "labURL")
        let name = UIDevice.current.name
        do {
            let registration = try await Task.detached { try LabClient(baseURL: url).register(name: name) }.value
            self.registration = registration
            UserDefaults.standard.set(try JSONEncoder().encode(registration), forKey: "registration")
            status = "Registered as \(registration.deviceId)"
        } catch {
            status = "\(error)"
        }
        await flush()
    }

    /// Post queued reports (each arrives once: the lab keys them by report_id).
    func flush() async {
        guard let registration, let url = URL(string: labURL) else {
            queued = queue.pending().count
            return
        }
        let queue = self.queue
        let result = await Task.detached { queue.flush(to: LabClient(baseURL: url), token: registration.token) }.value
        queued = queue.pending().count
        if result.delivered + result.rejected > 0 {
            status = "Lab: \(result.delivered) report(s) posted, \(result.rejected) refused, \(queued) waiting"
        }
    }
}
#endif
