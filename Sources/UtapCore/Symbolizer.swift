/// One frame as the kernel resolved it at the hit: the file's build ID and the offset in
/// that file, when it could (`valid`).
public struct BuildIDFrame: Equatable, Sendable {
    public var valid: Bool
    public var buildID: [UInt8]
    public var fileOffset: UInt64

    public init(valid: Bool, buildID: [UInt8], fileOffset: UInt64) {
        self.valid = valid
        self.buildID = buildID
        self.fileOffset = fileOffset
    }
}

/// Turns user-space addresses of traced processes into `0xADDR symbol+0xOFF (path)`, with
/// C++, Rust and Swift symbols demangled.
///
/// A process's mappings are read the first time one of its addresses is seen and kept,
/// and read again only when an address falls outside every known mapping (a library
/// loaded later). A process that exited before its events were read has no mappings
/// left: then the build ID and file offset the kernel recorded at the hit name the file,
/// found among the files utap was told of and their libraries, indexed when the
/// symbolizer is made (while a -p process still runs). ELF files are parsed once per
/// file: by device and inode for mapped files (the same path in two containers is two
/// files), by path for the known ones.
public final class Symbolizer {
    /// Each process's mappings, and when they were read.
    private var maps: [Int32: (entries: [MapEntry], readNs: UInt64)] = [:]
    /// A frame in no mapping re-reads them (a library loaded since), but not more often
    /// than this: a frame-pointer walk through code built without them yields garbage
    /// addresses by the thousand, and reading a server's maps for each made utap write
    /// a few thousand events a second.
    static let mapsRereadNs: UInt64 = 100_000_000
    private var images: [String: ELFImage?] = [:]
    private var byBuildID: [[UInt8]: String] = [:]
    /// Demangled function names (the raw name when it is not mangled), by raw name.
    private var names: [String: String] = [:]

    /// `knownFiles`: the files probed (their DT_NEEDED libraries are indexed too).
    public init(knownFiles: [String]) {
        for path in knownFiles.map({ $0.hasPrefix("/") ? $0 : currentDirectory() + "/" + $0 }) {
            guard let image = image(path: path) else { continue }
            byBuildID[Self.kernelForm(image.buildID)] = path
            for library in image.needed {
                if let found = try? LibraryResolver.resolve(library, pid: nil, executable: path),
                   let dependency = self.image(path: found) {
                    byBuildID[Self.kernelForm(dependency.buildID)] = found
                }
            }
        }
        byBuildID[Self.kernelForm([])] = nil
    }

    /// `addresses[0]` is the probed instruction; later frames are return addresses,
    /// looked up one byte earlier so a call at a function's very end names the caller.
    public func frames(pid: Int32, addresses: [UInt64], buildIDFrames: [BuildIDFrame]) -> [String] {
        addresses.enumerated().map { index, address in
            let back: UInt64 = index == 0 ? 0 : 1
            let hex = "0x" + String(address, radix: 16)
            if let mapping = mapping(pid: pid, containing: address &- back) {
                let where_ = symbol(in: image(mapping: mapping, pid: pid), fileOffset: address &- back - mapping.start + mapping.offset, back: back)
                return "\(hex) \(where_ ?? "[unknown]") (\(mapping.path))"
            }
            // Only a frame that lands in the file's segments names it: a frame-pointer walk
            // through code built without them can produce garbage the kernel still resolves.
            if index < buildIDFrames.count, buildIDFrames[index].valid, let path = byBuildID[buildIDFrames[index].buildID],
               let where_ = symbol(in: image(path: path), fileOffset: buildIDFrames[index].fileOffset &- back, back: back) {
                return "\(hex) \(where_) (\(path))"
            }
            return hex + " [unknown]"
        }
    }

    /// `function+0xOFF` for a file offset, with the offset of the frame's own address.
    private func symbol(in image: ELFImage?, fileOffset: UInt64, back: UInt64) -> String? {
        guard let image,
              let segment = image.segments.first(where: { fileOffset >= $0.fileOffset && fileOffset - $0.fileOffset < $0.fileSize })
        else { return nil }
        let virtual = fileOffset - segment.fileOffset + segment.virtualAddress
        guard let function = image.enclosingFunction(of: virtual) else { return nil }
        return "\(displayName(function.name))+0x\(String(virtual - function.address + back, radix: 16))"
    }

    private func displayName(_ name: String) -> String {
        if let known = names[name] { return known }
        let shown = Demangler.demangle(name) ?? name
        names[name] = shown
        return shown
    }

    private func mapping(pid: Int32, containing address: UInt64) -> MapEntry? {
        func find(_ entries: [MapEntry]) -> MapEntry? {
            entries.first { address >= $0.start && address < $0.end && $0.path.hasPrefix("/") }
        }
        let now = monotonicNow()
        if let known = maps[pid] {
            if let hit = find(known.entries) { return hit }
            if now &- known.readNs < Self.mapsRereadNs { return nil }
        }
        guard let fresh = try? ProcMaps.read(pid: pid) else { return nil }
        maps[pid] = (fresh, now)
        return find(fresh)
    }

    /// A mapped file, opened the way the process sees it (its root, chroot, or the
    /// mapping itself when deleted).
    private func image(mapping: MapEntry, pid: Int32) -> ELFImage? {
        let key = "\(mapping.device):\(mapping.inode)"
        if let cached = images[key] { return cached }
        let image = try? ELFImage.open(LibraryResolver.openablePath(of: mapping, pid: pid))
        images[key] = image
        return image
    }

    private func image(path: String) -> ELFImage? {
        if let cached = images[path] { return cached }
        let image = try? ELFImage.open(path)
        images[path] = image
        return image
    }

    /// The kernel reports build IDs in 20 bytes, zero-padded.
    static func kernelForm(_ id: [UInt8]) -> [UInt8] {
        Array((id + [UInt8](repeating: 0, count: 20)).prefix(20))
    }
}
