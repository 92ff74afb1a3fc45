import UtapABI
import UtapCore
import XCTest
@testable import UtapBPF

/// How a field is read on the BPF side (utap_field_config).
final class AttachmentTests: XCTestCase {
    private func field(_ source: FieldSource, _ type: FieldType = .s64) -> FieldSpec {
        FieldSpec(name: "f", source: source, type: type)
    }

    /// The registers the programs read up front are those of enum utap_source, slot for
    /// slot: a field in one of them is read from there, without a copy of struct pt_regs.
    func testRegistersReadUpFrontAreTheSourceSlots() {
        let slots: [(Register, utap_source)] = [(.rdi, UTAP_SRC_ARG0), (.rsi, UTAP_SRC_ARG1), (.rdx, UTAP_SRC_ARG2),
                                                (.rcx, UTAP_SRC_ARG3), (.r8, UTAP_SRC_ARG4), (.r9, UTAP_SRC_ARG5),
                                                (.rax, UTAP_SRC_RET), (.rbx, UTAP_SRC_RBX)]
        XCTAssertEqual(Attachment.sourceRegisters.count, slots.count)
        for (register, source) in slots {
            let c = Attachment.fieldConfig(field(.location(.register(register))))
            XCTAssertEqual(c.location, UInt8(UTAP_LOC_SOURCE.rawValue), "\(register)")
            XCTAssertEqual(c.source, UInt8(source.rawValue), "\(register)")
            XCTAssertTrue(Attachment.onlyIntegers([field(.location(.register(register)))]), "\(register)")
            XCTAssertFalse(Attachment.needsAllRegisters([field(.location(.register(register)))]), "\(register)")
        }
        XCTAssertEqual(Attachment.fieldConfig(field(.arg(2))).source, UInt8(UTAP_SRC_ARG2.rawValue))
        XCTAssertEqual(Attachment.fieldConfig(field(.ret)).source, UInt8(UTAP_SRC_RET.rawValue))
    }

    /// Other registers, and memory through any, come from the copy of struct pt_regs.
    func testOtherRegistersAndMemoryNeedAllRegisters() {
        let r12 = field(.location(.register(.r12)))
        XCTAssertEqual(Attachment.fieldConfig(r12).location, UInt8(UTAP_LOC_REGISTER.rawValue))
        XCTAssertEqual(Attachment.fieldConfig(r12).reg, UInt8(Register.r12.rawValue))
        XCTAssertTrue(Attachment.needsAllRegisters([r12]))
        XCTAssertFalse(Attachment.onlyIntegers([r12]))
        let memory = field(.location(.memory(base: .rdi, displacement: 8, size: 4)))
        XCTAssertTrue(Attachment.needsAllRegisters([memory]))
        XCTAssertFalse(Attachment.onlyIntegers([memory]))
        XCTAssertFalse(Attachment.needsAllRegisters([field(.location(.constant(5)))]))
        XCTAssertTrue(Attachment.onlyIntegers([field(.location(.constant(5))), field(.arg(0))]))
        XCTAssertFalse(Attachment.onlyIntegers([field(.arg(0), .string(maxLength: 8))]), "strings are read from memory")
    }
}
