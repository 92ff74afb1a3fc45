// demangle_swift.swift - Swift names for the demangling tests (swiftc -O, module
// demangle_swift).
//   demangle_swift [COUNT]   (COUNT default 10)
// Calls Counter.bump(by: i) for i = 0..COUNT-1 (a method of a final class), then
// report(_:) once, which reads the counter.
// Output: "total=T" with T = COUNT*(COUNT-1)/2.

final class Counter {
    private(set) var value = 0

    @inline(never)
    func bump(by step: Int) -> Int {
        value &+= step
        return value
    }
}

@inline(never)
func report(_ counter: Counter) -> Int {
    counter.value
}

let count = CommandLine.arguments.dropFirst().lazy.compactMap { Int($0) }.first ?? 10
let counter = Counter()
for i in 0..<count {
    _ = counter.bump(by: i)
}
print("total=\(report(counter))")
