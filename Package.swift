// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "utap",
    products: [.executable(name: "utap", targets: ["utap"])],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .systemLibrary(name: "CLibbpf", path: "Sources/CLibbpf"),
        .systemLibrary(name: "CZydis", path: "Sources/CZydis"),
        .target(name: "UtapABI", path: "Sources/UtapABI"),
        .target(name: "UtapBPFObject", path: "Sources/UtapBPFObject"),
        .target(name: "CUtapSys", path: "Sources/CUtapSys"),
        .target(name: "CXZ", path: "Sources/CXZ", linkerSettings: [.linkedLibrary("lzma")]),
        .target(name: "UtapCore", dependencies: ["CLibbpf", "CZydis", "CUtapSys", "CXZ"],
                // __cxa_demangle, the C++ runtime's demangler.
                linkerSettings: [.linkedLibrary("stdc++")]),
        .target(name: "UtapBPF", dependencies: ["UtapCore", "UtapABI", "UtapBPFObject", "CLibbpf", "CUtapSys"]),
        .target(name: "UtapOutput", dependencies: ["UtapCore"]),
        .target(name: "UtapPtrace", dependencies: ["UtapCore", "CUtapSys"]),
        .executableTarget(name: "utap", dependencies: [
            "UtapCore", "UtapBPF", "UtapOutput", "UtapPtrace",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "UtapCoreTests", dependencies: ["UtapCore"]),
        .testTarget(name: "UtapOutputTests", dependencies: ["UtapOutput", "UtapCore"]),
        .testTarget(name: "IntegrationTests", dependencies: ["UtapCore"]),
        .testTarget(name: "UtapBPFTests", dependencies: ["UtapBPF", "UtapCore", "UtapABI"]),
        .testTarget(name: "UtapPtraceTests", dependencies: ["UtapPtrace", "UtapCore"]),
    ],
    swiftLanguageModes: [.v5]
)
