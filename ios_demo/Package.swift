// swift-tools-version:5.9
// memwall's iOS side: a platform-neutral core (MemwallCore, built and tested on Linux too), the two training
// backends, and the SwiftUI app in App/ (an Xcode project generated from App/project.yml).
import Foundation
import PackageDescription

// The ExecuTorch backend links the native C++ core (runtime/, its C API runtime/include/memwall.h) and the
// ExecuTorch runtime libraries. On Linux they come from runtime/build and the executorch wheel; ios_demo/swiftw
// passes the flags in, e.g.
//   MEMWALL_NATIVE_LINK_FLAGS="-L/repo/runtime/build -lmemwall -L.../executorch/lib -lexecutorch ..."
// Without them the package is the core, the ONNX Runtime backend and their tests. (In the app, Xcode links the
// core and the stock ExecuTorch Swift packages instead: App/project.yml.)
let nativeLinkFlags = (ProcessInfo.processInfo.environment["MEMWALL_NATIVE_LINK_FLAGS"] ?? "")
    .split(separator: " ").map(String.init)

var products: [Product] = [
    .library(name: "MemwallCore", targets: ["MemwallCore"]),
    .library(name: "MemwallOnnxRuntime", targets: ["MemwallOnnxRuntime"]),
]
var targets: [Target] = [
    .target(name: "MemwallCore"),
    // onnxruntime-training-objc 1.19.2 is a CocoaPod (App/Podfile); without it (Linux, plain `swift build`)
    // the target compiles to the backend's availability check only.
    .target(name: "MemwallOnnxRuntime", dependencies: ["MemwallCore"]),
    .testTarget(name: "MemwallCoreTests", dependencies: ["MemwallCore"]),
]
if !nativeLinkFlags.isEmpty {
    products.append(.library(name: "MemwallExecuTorch", targets: ["MemwallExecuTorch"]))
    targets += [
        .systemLibrary(name: "CMemwall", path: "Sources/CMemwall"),
        .target(
            name: "MemwallExecuTorch",
            dependencies: ["MemwallCore", "CMemwall"],
            linkerSettings: [.unsafeFlags(nativeLinkFlags)]
        ),
        .testTarget(name: "MemwallExecuTorchTests", dependencies: ["MemwallExecuTorch"]),
    ]
}

let package = Package(
    name: "Memwall",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: products,
    targets: targets
)
