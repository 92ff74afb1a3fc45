/// What a session does with each hit.
public enum TraceMode: Equatable, Sendable {
    /// Send every hit to user space as an event (`utap trace`).
    case stream
    /// Count hits in the kernel, per probe or per probe and process (`utap count`).
    case count(byPid: Bool)
    /// Histogram of entry-to-return latency in the kernel, per probe (`utap latency`).
    case latency
}

/// Hits of one probe in one process.
public struct ProcessCount: Equatable, Sendable {
    public var probe: Int
    public var pid: Int32
    /// The process's name at its first counted hit ("?" if the kernel's table was full).
    public var comm: String
    public var count: UInt64

    public init(probe: Int, pid: Int32, comm: String, count: UInt64) {
        self.probe = probe
        self.pid = pid
        self.comm = comm
        self.count = count
    }
}

/// Entry-to-return latencies of one probe, in the log-linear buckets of utap_abi.h
/// (UTAP_HIST_SUB buckets per power of two).
public struct LatencyHistogram: Equatable, Sendable {
    public static let subBits = 2
    public static let sub = 1 << subBits
    /// Buckets in the kernel's array (a power of two, for the verifier's mask).
    public static let bucketCount = 64 * sub
    /// Buckets a 64-bit latency can reach: the top ones of the array stay empty.
    public static let usedBuckets = (64 - subBits) * sub + sub

    public var count: UInt64 = 0
    public var sumNs: UInt64 = 0
    public var maxNs: UInt64 = 0
    public var buckets = [UInt64](repeating: 0, count: bucketCount)

    public init() {}

    /// The bucket a latency falls in; the same arithmetic as the BPF program.
    public static func bucket(of ns: UInt64) -> Int {
        guard ns >= UInt64(sub) else { return Int(ns) }
        let k = 63 - ns.leadingZeroBitCount
        return (k - subBits + 1) * sub + Int((ns >> UInt64(k - subBits)) & UInt64(sub - 1))
    }

    /// The smallest latency in bucket `index` (< usedBuckets).
    public static func lowerBound(_ index: Int) -> UInt64 {
        guard index >= sub else { return UInt64(index) }
        let k = index / sub + subBits - 1
        return (1 << UInt64(k)) | (UInt64(index % sub) << UInt64(k - subBits))
    }

    /// An upper bound of the q-quantile (0 < q <= 1): the top of the bucket holding it,
    /// never above the largest latency seen.
    public func quantile(_ q: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = UInt64((q * Double(count)).rounded(.up))
        var seen: UInt64 = 0
        for (index, n) in buckets.enumerated() where n > 0 {
            seen += n
            if seen >= rank {
                let top = index + 1 < Self.usedBuckets ? Self.lowerBound(index + 1) - 1 : UInt64.max
                return min(top, maxNs)
            }
        }
        return maxNs
    }

    /// Counts per power of two, from the first non-empty one to the last: the rows of the
    /// terminal histogram. `lower` is inclusive, `upper` exclusive.
    public var powerOfTwoRows: [(lower: UInt64, upper: UInt64, count: UInt64)] {
        var rows: [(lower: UInt64, upper: UInt64, count: UInt64)] = []
        for power in 0..<64 {
            let lower: UInt64 = power == 0 ? 0 : 1 << UInt64(power)
            let upper: UInt64 = power == 63 ? UInt64.max : 1 << UInt64(power + 1)
            let first = Self.bucket(of: max(lower, 1)), last = Self.bucket(of: upper - 1)
            let n = buckets[(power == 0 ? 0 : first)...last].reduce(0, +)
            rows.append((lower, upper, n))
        }
        guard let first = rows.firstIndex(where: { $0.count > 0 }),
              let last = rows.lastIndex(where: { $0.count > 0 }) else { return [] }
        return Array(rows[first...last])
    }

    /// Counts one latency.
    public mutating func record(_ ns: UInt64) {
        count += 1
        sumNs &+= ns
        maxNs = max(maxNs, ns)
        buckets[Self.bucket(of: ns)] += 1
    }

    /// Adds another histogram (another CPU's share).
    public mutating func add(_ other: LatencyHistogram) {
        count += other.count
        sumNs += other.sumNs
        maxNs = max(maxNs, other.maxNs)
        for i in buckets.indices { buckets[i] += other.buckets[i] }
    }

    /// What was added since `earlier` (for per-interval reports). The maximum cannot be
    /// split by interval: it stays the session's.
    public func since(_ earlier: LatencyHistogram) -> LatencyHistogram {
        var d = self
        d.count -= earlier.count
        d.sumNs -= earlier.sumNs
        for i in buckets.indices { d.buckets[i] -= earlier.buckets[i] }
        return d
    }
}

/// Everything a count or latency session has aggregated so far, per probe of the plan.
public struct Aggregates: Equatable, Sendable {
    public var counts: [UInt64]
    public var processCounts: [ProcessCount]
    public var histograms: [LatencyHistogram]

    public init(counts: [UInt64], processCounts: [ProcessCount], histograms: [LatencyHistogram]) {
        self.counts = counts
        self.processCounts = processCounts
        self.histograms = histograms
    }

    /// Nothing aggregated yet, for `probes` probes: what the kernel's maps hold at attach.
    public static func empty(probes: Int) -> Aggregates {
        Aggregates(counts: Array(repeating: 0, count: probes), processCounts: [],
                   histograms: Array(repeating: LatencyHistogram(), count: probes))
    }

    /// What was aggregated since `earlier`.
    public func since(_ earlier: Aggregates) -> Aggregates {
        let before = Dictionary(earlier.processCounts.map { ("\($0.probe)/\($0.pid)", $0.count) }, uniquingKeysWith: +)
        return Aggregates(
            counts: zip(counts, earlier.counts).map { $0 - $1 },
            processCounts: processCounts.map {
                ProcessCount(probe: $0.probe, pid: $0.pid, comm: $0.comm, count: $0.count - (before["\($0.probe)/\($0.pid)"] ?? 0))
            }.filter { $0.count > 0 },
            histograms: zip(histograms, earlier.histograms).map { $0.since($1) })
    }
}
