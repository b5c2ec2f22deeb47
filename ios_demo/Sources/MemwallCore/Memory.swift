import Foundation
#if canImport(Darwin)
import Darwin
#endif
#if os(iOS)
import os  // os_proc_available_memory
#endif

/// The process's memory in the platform's primary metric: phys_footprint on Apple platforms (what jetsam
/// compares with the app's limit), resident set size on Linux (VmRSS now, VmHWM peak).
public enum ProcessMemory {
    /// (current bytes, peak bytes since start where the OS keeps one, else nil).
    public static func sample() -> (current: Int64, peak: Int64?) {
        #if canImport(Darwin)
        var info = task_vm_info_data_t()
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<natural_t>.size)
        let result = withUnsafeMutablePointer(to: &info) {
            $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
                task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count)
            }
        }
        guard result == KERN_SUCCESS else { return (0, nil) }
        return (Int64(info.phys_footprint), nil)
        #else
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return (0, nil) }
        func field(_ name: String) -> Int64? {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return nil }
            return line.split(separator: " ").dropFirst().first.flatMap { Int64($0) }.map { $0 * 1024 }
        }
        return (field("VmRSS") ?? 0, field("VmHWM"))
        #endif
    }

    /// What the OS lets this app use, where it says (iOS: os_proc_available_memory + the current footprint).
    public static func appLimit() -> Int64? {
        #if os(iOS)
        return Int64(os_proc_available_memory()) + sample().current
        #else
        return nil
        #endif
    }
}

/// Samples the process's memory on a background thread while a run goes on: the samples for the report's
/// curve, the live figure for the app's display, and the peak (the OS's own high-water mark where it keeps one;
/// the largest sample otherwise, so a peak between two samples 50 ms apart can be missed on Apple platforms).
public final class MemorySampler: @unchecked Sendable {
    public let interval: TimeInterval
    public let baseline: Int64
    private let lock = NSLock()
    private var samples: [Report.Sample] = []
    private var largest: Int64
    private var thread: Thread?
    private var running = false
    private let start = Date()
    private let onSample: (@Sendable (Int64) -> Void)?

    public init(interval: TimeInterval = 0.05, onSample: (@Sendable (Int64) -> Void)? = nil) {
        self.interval = interval
        self.onSample = onSample
        baseline = ProcessMemory.sample().current
        largest = baseline
    }

    public func begin() {
        lock.lock()
        running = true
        lock.unlock()
        record()
        let thread = Thread { [weak self] in
            while let self, self.isRunning {
                self.record()
                Thread.sleep(forTimeInterval: self.interval)
            }
        }
        thread.start()
        self.thread = thread
    }

    /// Stop sampling; returns the report's memory section.
    public func end() -> Report.Memory {
        lock.lock()
        running = false
        lock.unlock()
        record()
        let (_, osPeak) = ProcessMemory.sample()
        lock.lock()
        defer { lock.unlock() }
        let peak = max(largest, osPeak ?? 0)
        #if canImport(Darwin)
        let footprint: Int64? = peak
        #else
        let footprint: Int64? = nil
        #endif
        return Report.Memory(peakRssBytes: peak, baselineBytes: baseline, peakDeltaBytes: max(0, peak - baseline),
                             iosPhysFootprintBytes: footprint, nativeHeapBytes: nil, samples: samples)
    }

    /// The last sample's bytes (the live figure).
    public var latest: Int64 {
        lock.lock()
        defer { lock.unlock() }
        return samples.last?.rssBytes ?? baseline
    }

    private var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    private func record() {
        let bytes = ProcessMemory.sample().current
        lock.lock()
        if samples.count < 20000 { samples.append(Report.Sample(tMs: (Date().timeIntervalSince(start) * 1000).rounded(), rssBytes: bytes)) }
        largest = max(largest, bytes)
        lock.unlock()
        onSample?(bytes)
    }
}
