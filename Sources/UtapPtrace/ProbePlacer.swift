import Glibc
import UtapCore

/// Turns a plan's probes (file + file offset) into breakpoint sites at the addresses where
/// a process maps those files, and keeps them in step with its mappings: at exec, and at
/// each call of ld.so's `_dl_debug_state` (libraries loaded or unloaded later).
final class ProbePlacer {
    private let probes: [ResolvedProbe]
    /// What each probe's sites are, by file offset, per probe file.
    private let wanted: [FileKey: [UInt64: [SiteRole]]]
    /// The file each key names, as utap opens it.
    private let paths: [FileKey: String]
    /// USDT semaphores (file offsets) per probe file: utap adds 1 to each while attached,
    /// as the kernel does for a uprobe with a reference counter.
    private let semaphores: [FileKey: Set<UInt64>]
    /// The file's bytes at each site (ptrace-xol.md: verified against memory at install).
    private var codeCache: [String: [UInt8]] = [:]
    /// Warnings for the user (an install that failed after the session started).
    var warn: (String) -> Void = { _ in }

    struct FileKey: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    init(probes: [ResolvedProbe]) throws(UtapError) {
        self.probes = probes
        var wanted: [FileKey: [UInt64: [SiteRole]]] = [:]
        var paths: [FileKey: String] = [:]
        var semaphores: [FileKey: Set<UInt64>] = [:]
        for (index, probe) in probes.enumerated() {
            guard let key = Self.key(of: probe.path) else {
                throw .runtime("probe '\(probe.name)': cannot open \(probe.path): \(String(cString: strerror(errno)))")
            }
            paths[key] = probe.path
            if let semaphore = probe.semaphoreOffset { semaphores[key, default: []].insert(semaphore) }
            var sites = wanted[key, default: [:]]
            switch (probe.kind, probe.returnSites.isEmpty) {
            case (.entry, _):
                sites[probe.fileOffset, default: []].append(.entry(probe: index))
            case (.return, true):
                sites[probe.fileOffset, default: []].append(.hijackReturn(probe: index))
            case (.return, false):
                sites[probe.fileOffset, default: []].append(.markEntry(probe: index))
                for offset in probe.returnSites { sites[offset, default: []].append(.returnSite(probe: index)) }
            }
            wanted[key] = sites
        }
        self.wanted = wanted
        self.paths = paths
        self.semaphores = semaphores
    }

    /// Refuses, before anything is attached, a probe whose instruction the engine would
    /// refuse (ptrace-xol.md §2), naming the probe and the reason.
    func check() throws(UtapError) {
        for (key, sites) in wanted {
            for (offset, roles) in sites {
                let code = try self.code(paths[key]!, offset)
                if case .refuse(let reason) = InstructionAnalysis.plan(code, at: offset, stub: offset) {
                    let name = roles.compactMap(\.probeIndex).first.map { probes[$0].name } ?? "probe"
                    throw .usage("probe '\(name)': the ptrace backend cannot probe this instruction (\(reason))",
                                 hint: "probe another instruction of the function ('utap list -v' shows where a probe by name goes)")
                }
            }
        }
    }

    /// Adds the sites of every probe file `space` maps that are not in place yet, and
    /// forgets (without writing) those whose mapping went away. `strict` (the first
    /// placement, before utap says it is tracing): a site that cannot be placed is an
    /// error; later (exec, dlopen) it is a warning and the rest go on.
    func place(in space: TracedProcess, engine: PtraceEngine, strict: Bool = false) throws(UtapError) {
        guard let maps = try? ProcMaps.read(pid: space.pid) else { return }
        var desired: [UInt64: (path: String, offset: UInt64, roles: [SiteRole])] = [:]
        for entry in maps where entry.isExecutable && entry.inode != 0 {
            guard let key = Self.key(of: entry), let sites = wanted[key], let path = paths[key] else { continue }
            for (offset, roles) in sites where offset >= entry.offset && offset < entry.offset + (entry.end - entry.start) {
                desired[entry.start + offset - entry.offset] = (path, offset, roles)
            }
        }
        if let hook = loaderHook(maps, pid: space.pid) {
            desired[hook.address, default: (hook.path, hook.offset, [])].roles.append(.loaderHook)
        }
        for address in space.sites.keys where desired[address] == nil {
            space.forgetBreakpoint(at: address)
        }
        raiseSemaphores(in: space, maps)
        for (address, site) in desired.sorted(by: { $0.key < $1.key }) {
            if let existing = space.sites[address], site.roles.allSatisfy(existing.roles.contains) { continue }
            do {
                try engine.addSite(in: space, at: address, code: try code(site.path, site.offset), roles: site.roles)
            } catch {
                let names = site.roles.compactMap(\.probeIndex).map { "'\(probes[$0].name)'" }
                let what = names.isEmpty ? "\(site.path)+\(hex(site.offset))" : "probe \(names.joined(separator: ", "))"
                if strict { throw UtapError(error.code, "\(what): \(error.message)", hint: error.hint) }
                warn("\(what) not placed in pid \(space.pid): \(error.message)")
            }
        }
    }

    /// Adds 1 to every USDT semaphore of a mapped probe file not raised yet; forgets those
    /// whose mapping went away.
    private func raiseSemaphores(in space: TracedProcess, _ maps: [MapEntry]) {
        var live = Set<UInt64>()
        for entry in maps where entry.inode != 0 {
            guard let key = Self.key(of: entry), let offsets = semaphores[key] else { continue }
            for offset in offsets where offset >= entry.offset && offset + 2 <= entry.offset + (entry.end - entry.start) {
                let address = entry.start + offset - entry.offset
                live.insert(address)
                guard space.semaphores[address] == nil else { continue }
                do {
                    try space.addToSemaphore(at: address, 1)
                    space.semaphores[address] = 1
                } catch {
                    warn("pid \(space.pid): USDT semaphore at \(hex(address)) not raised: \(error.message)")
                }
            }
        }
        for address in space.semaphores.keys where !live.contains(address) { space.semaphores[address] = nil }
    }

    /// ld.so's `_dl_debug_state`, which it calls before and after changing the link map.
    private func loaderHook(_ maps: [MapEntry], pid: Int32) -> (address: UInt64, path: String, offset: UInt64)? {
        for entry in maps where entry.isExecutable && entry.isFile {
            let name = entry.path.split(separator: "/").last ?? ""
            guard name.hasPrefix("ld-linux") || name.hasPrefix("ld64.so") || name.hasPrefix("ld-2.") else { continue }
            let path = LibraryResolver.pathInProcess(entry.path, pid: pid)
            guard let image = try? ELFImage.open(path),
                  let symbol = image.functions(named: "_dl_debug_state").first,
                  let offset = image.fileOffset(ofVirtualAddress: symbol.address),
                  offset >= entry.offset, offset < entry.offset + (entry.end - entry.start) else { continue }
            return (entry.start + offset - entry.offset, path, offset)
        }
        return nil
    }

    /// Up to 16 bytes of `path` at `offset` (an instruction is at most 15).
    private func code(_ path: String, _ offset: UInt64) throws(UtapError) -> [UInt8] {
        let cacheKey = "\(offset)@\(path)"
        if let cached = codeCache[cacheKey] { return cached }
        let code = try InstructionDecoder.code(atFileOffset: offset, in: path)
        codeCache[cacheKey] = code
        return code
    }

    static func key(of path: String) -> FileKey? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return FileKey(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    /// A mapping's file, from its "major:minor" (hex) and inode.
    static func key(of entry: MapEntry) -> FileKey? {
        let parts = entry.device.split(separator: ":")
        guard parts.count == 2, let major = UInt64(parts[0], radix: 16), let minor = UInt64(parts[1], radix: 16) else { return nil }
        // glibc's makedev.
        let device = (major & 0xfff) << 8 | (major & ~0xfff) << 32 | (minor & 0xff) | (minor & ~0xff) << 12
        return FileKey(device: device, inode: entry.inode)
    }

    private func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}

extension SiteRole {
    var probeIndex: Int? {
        switch self {
        case .entry(let p), .hijackReturn(let p), .markEntry(let p), .returnSite(let p): return p
        case .loaderHook: return nil
        }
    }
}
