import CLibbpf
import Glibc

/// How uprobes are attached.
public enum AttachPath: String, Sendable {
    /// One perf event per probe (libbpf's bpf_program__attach_uprobe_opts): every kernel
    /// with attach cookies. Detach waits an RCU grace period per probe, one after another.
    case perfEvent = "perf"
    /// One uprobe multi-link per file and direction (Linux 6.6+): detach waits once.
    case multiLink = "multi"

    /// Multi-links where the kernel has them; UTAP_ATTACH=perf|multi overrides (tests
    /// cover both paths that way).
    public static var preferred: AttachPath {
        if let forced = getenv("UTAP_ATTACH").flatMap({ AttachPath(rawValue: String(cString: $0)) }) {
            return forced
        }
        return kernelIsAtLeast(6, 6) ? .multiLink : .perfEvent
    }
}

/// Whether the running kernel's release is `major.minor` or later (false when it cannot
/// be read).
func kernelIsAtLeast(_ major: Int, _ minor: Int) -> Bool {
    var uts = utsname()
    guard uname(&uts) == 0 else { return false }
    let release = withUnsafeBytes(of: uts.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
    guard numbers.count == 2 else { return false }
    return (numbers[0], numbers[1]) >= (major, minor)
}

/// A live attachment: a libbpf link, or the fd of a multi-link libbpf does not know.
enum LiveLink {
    case libbpf(OpaquePointer)
    case fd(Int32)
}

/// Closing a uprobe link waits for RCU grace periods (~0.1 s here). Multi-links (one per
/// file and direction) wait independently, so closing them from several threads overlaps
/// the waits. Perf-event links gain nothing from it (the kernel tears them down one at a
/// time under its event mutex) but lose nothing either.
enum LinkTeardown {
    static func destroy(_ links: [LiveLink]) {
        guard links.count > 1 else {
            links.forEach(release)
            return
        }
        let workers = min(links.count, 64)
        var threads: [pthread_t] = []
        let batches = (0..<workers).map { w in stride(from: w, to: links.count, by: workers).map { links[$0] } }
        for batch in batches {
            let box = Unmanaged.passRetained(LinkBatch(batch)).toOpaque()
            var thread = pthread_t()
            if pthread_create(&thread, nil, { arg in
                Unmanaged<LinkBatch>.fromOpaque(arg!).takeRetainedValue().links.forEach(LinkTeardown.release)
                return nil
            }, box) == 0 {
                threads.append(thread)
            } else {
                Unmanaged<LinkBatch>.fromOpaque(box).takeRetainedValue().links.forEach(release)
            }
        }
        threads.forEach { pthread_join($0, nil) }
    }

    static func release(_ link: LiveLink) {
        switch link {
        case .libbpf(let link): _ = bpf_link__destroy(link)
        case .fd(let fd): close(fd)
        }
    }

    final class LinkBatch {
        let links: [LiveLink]
        init(_ links: [LiveLink]) { self.links = links }
    }
}
