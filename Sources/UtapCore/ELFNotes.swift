import CLibbpf
import Glibc

/// The descriptors of the notes in a note section with this owner name and type, each
/// checked to lie inside the section (the bytes are the file's, which anyone may craft).
func elfNotes(in data: UnsafeMutablePointer<Elf_Data>, owner: String, type: UInt32) -> [UnsafeRawBufferPointer] {
    guard let start = data.pointee.d_buf else { return [] }
    let bytes = UnsafeRawBufferPointer(start: start, count: data.pointee.d_size)
    let name = Array(owner.utf8) + [0]
    var result: [UnsafeRawBufferPointer] = []
    var offset = 0
    var note = GElf_Nhdr()
    var nameOffset = 0, descOffset = 0
    while true {
        let next = gelf_getnote(data, offset, &note, &nameOffset, &descOffset)
        if next == 0 { return result }
        offset = next
        guard note.n_type == type, Int(note.n_namesz) == name.count,
              nameOffset + name.count <= bytes.count, descOffset + Int(note.n_descsz) <= bytes.count,
              bytes[nameOffset..<(nameOffset + name.count)].elementsEqual(name) else { continue }
        result.append(UnsafeRawBufferPointer(rebasing: bytes[descOffset..<(descOffset + Int(note.n_descsz))]))
    }
}
