import Foundation
import XCTest
@testable import UtapCore

/// Demangling of C++ (checked against c++filt), Rust legacy and v0 (pairs worked out from
/// the v0 spec, RFC 2603, and rustc's legacy escapes), Swift (the runtime's demangler), the
/// shorter names probes may use, and malformed input, which must never trap.
final class DemanglerTests: XCTestCase {
    // MARK: - C++

    /// Mangled names that use no std:: abbreviation (`Ss`, `Si`, `So`): c++filt spells those
    /// out in full, the C++ runtime does not.
    static let itaniumNames = [
        "_ZN6shapes7Counter4bumpEi",
        "_ZN6shapes7Counter4bumpEd",
        "_ZNK6shapes7Counter5totalEv",
        "_ZN6shapes5twiceIiEET_S1_",
        "_ZN6shapes6reportERKNS_7CounterE",
        "_ZN2ns1AC2Ev",
        "_ZN2ns1AD1Ev",
        "_ZN2ns1AclEi",
        "_ZNK2ns1BIiEgtERKS1_",
        "_ZN2nsltIiEEbRKNS_1BIT_EES5_",
        "_ZN12_GLOBAL__N_16helperEi",
        "_ZZN2ns1fEvENKUliE_clEi",
        "_ZN2ns4makeIiEESt6vectorIT_SaIS2_EEm",
        "_ZN2ns1f4coldEv.cold",
        "_ZThn8_N2ns1A1fEv",
        "_Z3fooPKcz",
        "_ZN2ns1AcvSt6vectorIiSaIiEEEv",
    ]

    func testItaniumMatchesCxxfilt() throws {
        let expected = try cxxfilt(Self.itaniumNames)
        for (name, filtered) in zip(Self.itaniumNames, expected) {
            XCTAssertEqual(Demangler.demangle(name), filtered, name)
            XCTAssertEqual(Demangler.name(name)?.scheme, .itanium, name)
        }
    }

    func testItaniumExactNames() {
        XCTAssertEqual(Demangler.demangle("_ZNK6shapes7Counter5totalEv"), "shapes::Counter::total() const")
        XCTAssertEqual(Demangler.demangle("_ZN6shapes5twiceIiEET_S1_"), "int shapes::twice<int>(int)")
        // A plain Itanium nested name (no Rust hash) is C++, not legacy Rust.
        XCTAssertEqual(Demangler.name("_ZN3foo3barE"), DemangledName(scheme: .itanium, text: "foo::bar"))
    }

    func testItaniumKeys() {
        func keys(_ text: String) -> [String] { DemangledName(scheme: .itanium, text: text).keys }
        XCTAssertEqual(keys("shapes::Counter::bump(int)"), ["shapes::Counter::bump"])
        XCTAssertEqual(keys("shapes::Counter::total() const"), ["shapes::Counter::total"])
        XCTAssertEqual(keys("ns::A::f() const &&"), ["ns::A::f"])
        XCTAssertEqual(keys("int shapes::twice<int>(int)"),
                       ["int shapes::twice<int>", "shapes::twice<int>(int)", "shapes::twice<int>", "shapes::twice"])
        XCTAssertEqual(keys("std::vector<int, std::allocator<int> > ns::make<int>(unsigned long)"),
                       ["std::vector<int, std::allocator<int> > ns::make<int>", "ns::make<int>(unsigned long)",
                        "ns::make<int>", "ns::make"])
        XCTAssertEqual(keys("unsigned long const* ns::A<int>::g<unsigned long>(void (*)(int)) const"),
                       ["unsigned long const* ns::A<int>::g<unsigned long>", "ns::A<int>::g<unsigned long>(void (*)(int)) const",
                        "ns::A<int>::g<unsigned long>", "ns::A<int>::g"])
        XCTAssertEqual(keys("ns::A::operator()(int)"), ["ns::A::operator()"])
        XCTAssertEqual(keys("bool ns::operator< <int>(ns::B<int> const&, ns::B<int> const&)"),
                       ["bool ns::operator< <int>", "ns::operator< <int>(ns::B<int> const&, ns::B<int> const&)",
                        "ns::operator< <int>", "ns::operator<"])
        XCTAssertEqual(keys("ns::B<int>::operator>(ns::B<int> const&) const"), ["ns::B<int>::operator>"])
        XCTAssertEqual(keys("ns::B<int>::operator->() const"), ["ns::B<int>::operator->"])
        XCTAssertEqual(keys("ns::A::operator std::vector<int, std::allocator<int> >()"),
                       ["ns::A::operator std::vector<int, std::allocator<int> >"])
        XCTAssertEqual(keys("(anonymous namespace)::helper(int)"), ["(anonymous namespace)::helper"])
        XCTAssertEqual(keys("ns::f()::{lambda(int)#1}::operator()(int) const"),
                       ["ns::f()::{lambda(int)#1}::operator()"])
        XCTAssertEqual(keys("ns::B<int>::get() const"), ["ns::B<int>::get"])
        XCTAssertEqual(keys("foo(char const*, ...)"), ["foo"])
        // Other code than the function itself: only its full name.
        XCTAssertEqual(keys("ns::f() [clone .cold]"), [])
        XCTAssertEqual(keys("ns::f(int) [clone .constprop.0]"), [])
        XCTAssertEqual(keys("non-virtual thunk to ns::A::f()"), [])
        XCTAssertEqual(keys("foo::bar"), [], "not a function")
    }

    // MARK: - Rust legacy

    func testRustLegacy() {
        let pairs = [
            ("_ZN11demangle_rs7Counter4bump17h52db97243fe3bc50E", "demangle_rs::Counter::bump"),
            ("_ZN58_$LT$demangle_rs..Square$u20$as$u20$demangle_rs..Shape$GT$4area17ha08bc39febf60606E",
             "<demangle_rs::Square as demangle_rs::Shape>::area"),
            ("_ZN4core3ptr85drop_in_place$LT$std..rt..lang_start$LT$$LP$$RP$$GT$..$u7b$$u7b$closure$u7d$$u7d$$GT$17h1a2b3c4d5e6f7a8bE",
             "core::ptr::drop_in_place<std::rt::lang_start<()>::{{closure}}>"),
            ("_ZN71_$LT$Test$u20$$u2b$$u20$$u27$static$u20$as$u20$foo..Bar$LT$Test$GT$$GT$3bar17h0123456789abcdefE",
             "<Test + 'static as foo::Bar<Test>>::bar"),
            ("_ZN35Bar$LT$$u5b$u32$u3b$$u20$4$u5d$$GT$3baz17h0123456789abcdefE", "Bar<[u32; 4]>::baz"),
            ("_ZN13_$LT$test$GT$3foo17h0123456789abcdefE", "<test>::foo"),
            ("_ZN4test11$RF$$BP$$C$17h0123456789abcdefE", "test::&*,"),
            ("_ZN3foo1a4name17h0123456789abcdefE.llvm.9D1C9369", "foo::a::name"),
            ("_ZN3foo3bar17h0123456789abcdefE.cold", "foo::bar.cold"),
            ("_ZN3std2io5stdio6_print17h0123456789abcdefE", "std::io::stdio::_print"),
            ("_ZN4core3fmt3num52_$LT$impl$u20$core..fmt..Debug$u20$for$u20$usize$GT$3fmt17h0123456789abcdefE",
             "core::fmt::num::<impl core::fmt::Debug for usize>::fmt"),
            ("_ZN4test10$u3bb$name17h0123456789abcdefE", "test::λname"),
        ]
        for (mangled, expected) in pairs {
            XCTAssertEqual(Demangler.name(mangled), DemangledName(scheme: .rustLegacy, text: expected), mangled)
        }
        // Without a well-formed hash it is C++ (c++filt would print the hash as a component).
        XCTAssertEqual(Demangler.name("_ZN3foo16h0123456789abcdeE")?.scheme, .itanium, "15 hex digits")
        XCTAssertEqual(Demangler.name("_ZN3foo17hg123456789abcdefE")?.scheme, .itanium, "not hex")
        XCTAssertEqual(Demangler.name("_ZN3foo17h0123456789abcdefEv")?.scheme, .itanium, "a C++ function type")
    }

    // MARK: - Rust v0

    func testRustV0Paths() {
        let pairs = [
            // Inherent impl, trait impl, trait definition.
            ("_RNvMCsg2uOCHkCCLm_11demangle_rsNtB2_7Counter4bump", "<demangle_rs::Counter>::bump"),
            ("_RNvXs_Csg2uOCHkCCLm_11demangle_rsNtB4_6SquareNtB4_5Shape4area",
             "<demangle_rs::Square as demangle_rs::Shape>::area"),
            ("_RNvYNtCs_3foo3BarNtCs_3foo5Trait3baz", "<foo::Bar as foo::Trait>::baz"),
            // Generic instances with the instantiating crate (a backreference) after them.
            ("_RINvCsg2uOCHkCCLm_11demangle_rs5twicemEB2_", "demangle_rs::twice::<u32>"),
            ("_RINvCsg2uOCHkCCLm_11demangle_rs5twiceyEB2_", "demangle_rs::twice::<u64>"),
            ("_RNvCs_3foo3barCs_3std", "foo::bar"),
            // Crate names may start with a digit; disambiguators on nested names.
            ("_RNvC6_123foo3bar", "123foo::bar"),
            ("_RNvNtCs_3foo3bars_3baz", "foo::bar::baz"),
            // Closures and shims.
            ("_RNCNCNgCs6DXkGYLi8lr_2cc5spawn00B5_", "cc::spawn::{closure#0}::{closure#0}"),
            ("_RNCNvCs_3foo4mains0_0", "foo::main::{closure#2}"),
            ("_RNCNvCs_3foo4main4name", "foo::main::{closure:name#0}"),
            ("_RNSNvCs_3foo3bar6vtable", "foo::bar::{shim:vtable#0}"),
            ("_RNZNvCs_3foo4main4name", "foo::main::{Z:name#0}"),
            ("_RNSNvYNCINvNtCsjrHSEGnQ3l9_3std2rt10lang_startuE0INtNtNtCsgEmfK2I1SDS_4core3ops8function6FnOnceuE9call_once6vtableCsg2uOCHkCCLm_11demangle_rs",
             "<std::rt::lang_start<()>::{closure#0} as core::ops::function::FnOnce<()>>::call_once::{shim:vtable#0}"),
            ("_RNCINkXs25_NgCsbmNqQUJIY6D_4core5sliceINyB9_4IterhENuNgNoBb_4iter8iterator8Iterator9rpositionNCNgNpB9_6memchr7memrchrs_0E0Bb_",
             "<core::slice::Iter<u8> as core::iter::iterator::Iterator>::rposition::<core::slice::memchr::memrchr::{closure#1}>::{closure#0}"),
            // Punycode identifiers.
            ("_RNqCs4fqI2P2rA04_11utf8_identsu30____7hkackfecea1cbdathfdh9hlq6y",
             "utf8_idents::საჭმელად_გემრიელი_სადილი"),
            // Suffixes: ThinLTO's .llvm.HASH goes, others stay.
            ("_RNvC9backtrace3foo.llvm.A5310EB9", "backtrace::foo"),
            ("_RNvNtNtNtNtCs92dm3009vxr_4rand4rngs7adapter9reseeding4fork23FORK_HANDLER_REGISTERED.0.0",
             "rand::rngs::adapter::reseeding::fork::FORK_HANDLER_REGISTERED.0.0"),
            ("_RNvCs_3foo3bar.cold", "foo::bar.cold"),
        ]
        for (mangled, expected) in pairs {
            XCTAssertEqual(Demangler.demangle(mangled), expected, mangled)
            XCTAssertEqual(Demangler.name(mangled)?.scheme, .rustV0, mangled)
        }
    }

    func testRustV0Types() {
        let pairs = [
            ("_RINvCs_3foo3barAmj4_SpTlhETlETEPaOaRL_eQuE",
             "foo::bar::<[u32; 4], [_], (i32, u8), (i32,), (), *const i8, *mut i8, &str, &mut ()>"),
            ("_RINvCs_3foo3barFG_RL0_hEuE", "foo::bar::<for<'a> fn(&'a u8)>"),
            ("_RINvCs_3foo3barFG0_RL1_hRL0_hERL1_hE", "foo::bar::<for<'a, 'b> fn(&'a u8, &'b u8) -> &'a u8>"),
            ("_RINvCs_3foo3barFUKCEuE", "foo::bar::<unsafe extern \"C\" fn()>"),
            ("_RINvCs_3foo3barFKCRhEmE", "foo::bar::<extern \"C\" fn(&u8) -> u32>"),
            ("_RINvCs_3foo3barFK8C_unwindEuE", "foo::bar::<extern \"C-unwind\" fn()>"),
            ("_RINvCs_3foo3barDG_NtCs_3foo5TraitEL_E", "foo::bar::<dyn for<'a> foo::Trait>"),
            ("_RINvCs_3foo3barDNtCs_3foo5TraitNtCs_3foo4SendEL_E", "foo::bar::<dyn foo::Trait + foo::Send>"),
            ("_RINbNbCskIICzLVDPPb_5alloc5alloc8box_freeDINbNiB4_5boxed5FnBoxuEp6OutputuEL_ECs1iopQbuBiw2_3std",
             "alloc::alloc::box_free::<dyn alloc::boxed::FnBox<(), Output = ()>>"),
            ("_RMC0INtC8arrayvec8ArrayVechKj7b_E", "<arrayvec::ArrayVec<u8, 123>>"),
            ("_RINvCs_3foo3barKj1234567890abcdef0123_E", "foo::bar::<0x1234567890abcdef0123>"),
            ("_RINvCs_3foo3barKanb_Kb1_Kb0_KpKc76_Kc27_Kc5c_E", "foo::bar::<-11, true, false, _, 'v', '\\'', '\\\\'>"),
            ("_RINvCs_3foo3barKc0_Kca_Kc7f_Kc1f600_Kc2202_E", "foo::bar::<'\\0', '\\n', '\\u{7f}', '😀', '∂'>"),
            ("_RNvNvMCs4fqI2P2rA04_13const_genericINtB4_3FooKpE3foo3FOO", "<const_generic::Foo<_>>::foo::FOO"),
        ]
        for (mangled, expected) in pairs {
            XCTAssertEqual(Demangler.demangle(mangled), expected, mangled)
        }
        // Backreferences may double the output at each step: 2^6 copies of `_` here.
        let doubled = (0..<6).reduce("_") { inner, _ in "(\(inner), \(inner))" }
        XCTAssertEqual(Demangler.demangle("_RMC0TTTTTTpB8_EB7_EB6_EB5_EB4_EB3_E"), "<\(doubled)>")
    }

    func testRustKeys() {
        XCTAssertEqual(Demangler.name("_RNvMCsg2uOCHkCCLm_11demangle_rsNtB2_7Counter4bump")?.keys,
                       ["demangle_rs::Counter::bump"])
        XCTAssertEqual(Demangler.name("_RINvCsg2uOCHkCCLm_11demangle_rs5twicemEB2_")?.keys, ["demangle_rs::twice"])
        XCTAssertEqual(Demangler.name("_RNvXs_Csg2uOCHkCCLm_11demangle_rsNtB4_6SquareNtB4_5Shape4area")?.keys, [],
                       "a trait impl is written with 'as'")
        XCTAssertEqual(DemangledName(scheme: .rustV0, text: "<a::B<fn() -> u8>>::f::<u8>").keys,
                       ["a::B<fn() -> u8>::f::<u8>", "a::B<fn() -> u8>::f"])
        XCTAssertEqual(Demangler.name("_ZN11demangle_rs7Counter4bump17h52db97243fe3bc50E")?.keys, [])
    }

    /// Rejected like rustc's demangler rejects them.
    func testRustV0Invalid() {
        for name in [
            "_RNvCs_3foo3barX",          // junk after the path
            "_RNvCs_3foo3bar garbage",
            "_RINvCs_3foo3barKcd800_E",  // a surrogate is no char
            "_RINvCs_3foo3barKc1F600_E", // uppercase hex
            "_RINvCs_3foo3barGL_E",      // a binder outside a fn or dyn type
            "_RINvCs_3foo3barFKu6sysv64EuE", // a Punycode ABI name
            "_RNvB_3foo",                // a backreference into itself: endless
            "_RB0_",                     // a backreference forward
        ] {
            XCTAssertNil(Demangler.demangle(name), name)
        }
    }

    // MARK: - Swift

    func testSwift() {
        let pairs = [
            ("$s14demangle_swift7CounterC4bump2byS2i_tF", "demangle_swift.Counter.bump(by: Swift.Int) -> Swift.Int",
             ["demangle_swift.Counter.bump"]),
            ("$s14demangle_swift7CounterC5valueSivg", "demangle_swift.Counter.value.getter : Swift.Int",
             ["demangle_swift.Counter.value.getter"]),
            ("$s1s7CounterC4makeACyFZ", "static s.Counter.make() -> s.Counter", ["s.Counter.make"]),
            ("$s1s5twiceyxxSjRzlF", "s.twice<A where A: Swift.Numeric>(A) -> A",
             ["s.twice<A where A: Swift.Numeric>", "s.twice"]),
            ("$s1s5twiceyxxSjRzlFSi_Tg5", "generic specialization <Swift.Int> of s.twice<A where A: Swift.Numeric>(A) -> A", []),
            ("$sSi1poiyS2i_SitFZ", "static Swift.Int.+ infix(Swift.Int, Swift.Int) -> Swift.Int", []),
            ("_T0Si1poiS2i_SitFZ", "static Swift.Int.+ infix(Swift.Int, Swift.Int) -> Swift.Int", []),
            ("$S4main3fooyyF", "main.foo() -> ()", ["main.foo"]),
        ]
        for (mangled, text, keys) in pairs {
            XCTAssertEqual(Demangler.name(mangled)?.text, text, mangled)
            XCTAssertEqual(Demangler.name(mangled)?.scheme, .swift, mangled)
            XCTAssertEqual(Demangler.name(mangled)?.keys, keys, mangled)
        }
    }

    // MARK: - Not mangled

    func testPlainNamesAreLeftAlone() {
        for name in ["", "main", "malloc", "_start", "_init", "__libc_start_main", "_Z", "_R", "$s", "_T0",
                     "_Zfoo", "_Rfoo", "$sfoo", "_GLOBAL__sub_I_main", "R3foo", "ZN3fooE", "__ZN3foo3barE",
                     "take_str", "utap_sink"] {
            XCTAssertNil(Demangler.demangle(name), name)
        }
    }

    // MARK: - Lookups

    func testDemangledFunctionsLookups() {
        let symbols = [
            ELFSymbol(name: "_ZN6shapes7Counter4bumpEi", address: 0x10, size: 8),
            ELFSymbol(name: "_ZN6shapes7Counter4bumpEd", address: 0x20, size: 8),
            ELFSymbol(name: "_ZN6shapes5printEPKc", address: 0x30, size: 8),
            ELFSymbol(name: "_RNvMCsg2uOCHkCCLm_11demangle_rsNtB2_7Counter4bump", address: 0x40, size: 8),
            ELFSymbol(name: "main", address: 0x50, size: 8),
            // app::Shape* const* std::__miter_base<app::Shape* const*>(app::Shape* const*)
            ELFSymbol(name: "_ZSt12__miter_baseIPKPN3app5ShapeEET_S5_", address: 0x60, size: 8),
            // shapes::print(char const*) [clone .isra.0]
            ELFSymbol(name: "_ZN6shapes5printEPKc.isra.0", address: 0x70, size: 8),
        ]
        let functions = DemangledFunctions(symbols)
        XCTAssertEqual(functions.entries.map(\.symbol.address), [0x10, 0x20, 0x30, 0x40, 0x60, 0x70])
        func addresses(_ name: String) -> [UInt64] { functions.functions(named: name).map(\.symbol.address) }
        XCTAssertEqual(addresses("shapes::Counter::bump"), [0x10, 0x20])
        XCTAssertEqual(addresses("shapes::Counter::bump(int)"), [0x10])
        XCTAssertEqual(addresses("shapes::print(charconst*)"), [0x30], "a probe is one word: spaces are ignored")
        XCTAssertEqual(addresses("shapes::print(char const*)"), [0x30])
        XCTAssertEqual(addresses("demangle_rs::Counter::bump"), [0x40])
        XCTAssertEqual(addresses("<demangle_rs::Counter>::bump"), [0x40])
        XCTAssertEqual(addresses("main"), [], "plain names are the symbol table's business")
        func globbed(_ pattern: String) -> [UInt64] { functions.functions(matching: pattern).map(\.symbol.address) }
        XCTAssertEqual(globbed("shapes::*"), [0x10, 0x20, 0x30, 0x70], "a clone by its full name")
        XCTAssertEqual(globbed("app::*"), [], "a return type is not a name")
        XCTAssertEqual(globbed("std::__miter_base*"), [0x60])
        XCTAssertEqual(globbed("*::bump"), [0x10, 0x20, 0x40])
        XCTAssertEqual(globbed("*::bump(double)"), [0x20])
        XCTAssertEqual(globbed("demangle_rs::*"), [0x40])
    }

    // MARK: - Probe resolution (no privileges: resolving only reads the file)

    static let cxxSource = """
        namespace shapes {
        struct Counter {
            long value = 0;
            __attribute__((noinline)) long bump(int by) { return value += by; }
            __attribute__((noinline)) long bump(double by) { return value += (long)by; }
            __attribute__((noinline)) long total() const { return value; }
        };
        template <typename T> __attribute__((noinline)) T twice(T x) { return x + x; }
        template int twice<int>(int);
        template long twice<long>(long);
        }
        int main() {
            shapes::Counter c;
            c.bump(1);
            c.bump(2.0);
            return (int)(c.total() + shapes::twice<int>(1) + shapes::twice<long>(2));
        }
        """

    /// A C++ program built now, and the address of each of its symbols as nm reads them.
    private func compileCxx() throws -> (path: String, addresses: [String: UInt64]) {
        let directory = try Toolchain.temporaryDirectory(self)
        let source = directory + "/shapes.cpp", path = directory + "/shapes"
        try Self.cxxSource.write(toFile: source, atomically: true, encoding: .utf8)
        try Toolchain.run(["c++", "-O1", "-fcf-protection=none", "-o", path, source])
        var addresses: [String: UInt64] = [:]
        for line in try Toolchain.run(["nm", "--defined-only", path]).split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 3, let address = UInt64(parts[0], radix: 16) { addresses[String(parts[2])] = address }
        }
        return (path, addresses)
    }

    func testResolverFindsFunctionsByDemangledName() throws {
        let (path, nm) = try compileCxx()
        var resolver = ProbeResolver(pid: nil, executable: nil)
        func resolve(_ location: String) throws -> [ResolvedProbe] {
            try resolver.resolve(try ProbeParser.parse(path + ":" + location))
        }
        for (location, symbol) in [
            ("shapes::Counter::bump(int)", "_ZN6shapes7Counter4bumpEi"),
            ("shapes::Counter::bump(double)", "_ZN6shapes7Counter4bumpEd"),
            ("shapes::Counter::total", "_ZNK6shapes7Counter5totalEv"),
            ("shapes::Counter::total()const", "_ZNK6shapes7Counter5totalEv"),
            ("shapes::twice<int>", "_ZN6shapes5twiceIiEET_S1_"),
            ("shapes::twice<long>(long)", "_ZN6shapes5twiceIlEET_S1_"),
            ("_ZN6shapes5twiceIlEET_S1_", "_ZN6shapes5twiceIlEET_S1_"),
        ] {
            let probes = try resolve(location)
            XCTAssertEqual(probes.map(\.address), [try XCTUnwrap(nm[symbol], symbol)], location)
            XCTAssertEqual(probes.map(\.name), [path + ":" + location], "named as written")
            XCTAssertEqual(probes.first?.function, Demangler.demangle(symbol))
        }
        // Overloads and template instances: refused, every candidate named (in address order).
        func inOrder(_ candidates: [(shown: String, symbol: String)]) -> String {
            candidates.sorted { nm[$0.symbol]! < nm[$1.symbol]! }.map(\.shown).joined(separator: "; ")
        }
        XCTAssertThrowsError(try resolve("shapes::Counter::bump")) { error in
            let error = error as! UtapError
            XCTAssertEqual(error.message, "probe '\(path):shapes::Counter::bump': 'shapes::Counter::bump' names 2 functions in \(path): "
                + inOrder([("shapes::Counter::bump(int)", "_ZN6shapes7Counter4bumpEi"),
                           ("shapes::Counter::bump(double)", "_ZN6shapes7Counter4bumpEd")]))
            XCTAssertTrue(error.hint?.hasPrefix("probe them all with a glob ('shapes::Counter::bump*'), or one by address: 0x") == true, error.hint ?? "")
        }
        XCTAssertThrowsError(try resolve("shapes::twice")) { error in
            XCTAssertTrue((error as! UtapError).message.hasSuffix(": " + inOrder([
                ("int shapes::twice<int>(int)", "_ZN6shapes5twiceIiEET_S1_"),
                ("long shapes::twice<long>(long)", "_ZN6shapes5twiceIlEET_S1_")])), (error as! UtapError).message)
        }
        XCTAssertThrowsError(try resolve("shapes::Counter::bum")) { error in
            XCTAssertEqual((error as! UtapError).hint, "did you mean: shapes::Counter::bump, shapes::Counter::total?")
        }
        // Globs match demangled names (whole, or without parameters); matches are named
        // by their demangled names.
        let globbed = try resolve("*::Counter::bump*")
        XCTAssertEqual(globbed.map(\.name), [path + ":shapes::Counter::bump(double)", path + ":shapes::Counter::bump(int)"])
        XCTAssertEqual(globbed.map(\.address), [nm["_ZN6shapes7Counter4bumpEd"]!, nm["_ZN6shapes7Counter4bumpEi"]!])
        XCTAssertEqual(try resolve("shapes::*").count, 5)
        XCTAssertEqual(try resolve("*::total").map(\.name), [path + ":shapes::Counter::total() const"])
        XCTAssertEqual(try resolve("_ZN6shapes7Counter4bump*").count, 2, "mangled names still match")
    }

    /// A frame of a process that has exited is found through its file's build ID.
    func testSymbolizerShowsDemangledNames() throws {
        let (path, nm) = try compileCxx()
        let image = try ELFImage.open(path)
        XCTAssertFalse(image.buildID.isEmpty)
        let address = try XCTUnwrap(nm["_ZNK6shapes7Counter5totalEv"])
        let offset = try XCTUnwrap(image.fileOffset(ofVirtualAddress: address))
        let frames = Symbolizer(knownFiles: [path]).frames(
            pid: 0x7FFF_FFF0, addresses: [0x5555_0000_1000, 0x5555_0000_2000],
            buildIDFrames: [BuildIDFrame(valid: true, buildID: Symbolizer.kernelForm(image.buildID), fileOffset: offset + 2),
                            BuildIDFrame(valid: true, buildID: Symbolizer.kernelForm(image.buildID), fileOffset: offset + 3)])
        XCTAssertEqual(frames, ["0x555500001000 shapes::Counter::total() const+0x2 (\(path))",
                                "0x555500002000 shapes::Counter::total() const+0x3 (\(path))"])
    }

    // MARK: - Malformed input

    /// Every prefix of every valid name, and many random mutations of them: each call must
    /// return (nil or a name), whatever the input.
    func testMalformedInputNeverTraps() {
        let seeds = Self.itaniumNames + [
            "_ZN58_$LT$demangle_rs..Square$u20$as$u20$demangle_rs..Shape$GT$4area17ha08bc39febf60606E",
            "_RNCINkXs25_NgCsbmNqQUJIY6D_4core5sliceINyB9_4IterhENuNgNoBb_4iter8iterator8Iterator9rpositionNCNgNpB9_6memchr7memrchrs_0E0Bb_",
            "_RINbNbCskIICzLVDPPb_5alloc5alloc8box_freeDINbNiB4_5boxed5FnBoxuEp6OutputuEL_ECs1iopQbuBiw2_3std",
            "_RINvCs_3foo3barFG0_RL1_hRL0_hERL1_hE",
            "_RNqCs4fqI2P2rA04_11utf8_identsu30____7hkackfecea1cbdathfdh9hlq6y",
            "_RMC0TTTTTTpB8_EB7_EB6_EB5_EB4_EB3_E",
            "_RINvCs_3foo3barKanb_Kb1_Kb0_KpKc76_Kc27_Kc5c_E",
            "$s14demangle_swift7CounterC4bump2byS2i_tF",
            "$s1s5twiceyxxSjRzlFSi_Tg5",
        ]
        var count = 0
        for seed in seeds {
            let bytes = Array(seed.utf8)
            for length in 0...bytes.count {
                _ = Demangler.name(String(decoding: bytes.prefix(length), as: UTF8.self))
                count += 1
            }
        }
        var random = SplitMix64(seed: 0x7574_6170)
        let alphabet = Array("_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ$.<> ".utf8) + [0xC3, 0xA9, 0xFF]
        for _ in 0..<6000 {
            var bytes = Array(seeds[Int(random.next() % UInt64(seeds.count))].utf8)
            for _ in 0..<(1 + random.next() % 4) {
                let at = 2 + Int(random.next() % UInt64(max(bytes.count - 2, 1)))
                let byte = alphabet[Int(random.next() % UInt64(alphabet.count))]
                switch random.next() % 4 {
                case 0 where at < bytes.count: bytes[at] = byte
                case 1 where at <= bytes.count: bytes.insert(byte, at: at)
                case 2 where at < bytes.count: bytes.remove(at: at)
                default: bytes.insert(contentsOf: Array("B\(random.next() % 20)_".utf8), at: min(at, bytes.count))
                }
            }
            _ = Demangler.name(String(decoding: bytes, as: UTF8.self))
            count += 1
        }
        XCTAssertGreaterThan(count, 6000)
    }

    func testHostileInputIsRefusedOrBounded() {
        let deep = String(repeating: "R", count: 5000)
        let hostile = [
            // Nesting deeper than any real symbol.
            "_R" + "I" + String(repeating: "INvC3foo", count: 2000) + "3bar",
            "_RMC0" + deep + "u",
            "_RMC0" + String(repeating: "T", count: 3000) + "u" + String(repeating: "E", count: 3000),
            "_ZN" + String(repeating: "3foo", count: 3000) + "17h0123456789abcdefE",
            "_Z" + String(repeating: "P", count: 5000) + "i",
            // Lengths and numbers that overflow.
            "_RNvC99999999999999999999999999999993foo",
            "_RNvCs" + String(repeating: "Z", count: 40) + "_3foo3bar",
            "_RINvCs_3foo3barG" + String(repeating: "Z", count: 20) + "_FEuE",
            "_RINvCs_3foo3barKj" + String(repeating: "f", count: 200) + "_E",
            "_ZN99999999999999999999foo17h0123456789abcdefE",
            "_ZN3foo17h0123456789abcdefE" + String(repeating: ".", count: 100),
            "_RNvCs_3foou" + String(repeating: "9", count: 30) + "abc",
            "_RNvCs_3foou5zzzzz",
            // Backreferences: forward, to themselves, fanning out exponentially.
            "_RNvB9_3foo",
            "_RNvCs_3fooB_",
            // (offsets count from after `_R`: the innermost tuple is `(_, B<p>)`, each outer
            // one `(inner, B<inner>)`.)
            "_RMC0" + String(repeating: "T", count: 40) + "p" + (4...43).reversed().map { "B\(Self.base62($0))E" }.joined(),
            "_RMICs_3foo" + String(repeating: "T", count: 30) + "p" + (10...39).reversed().map { "B\(Self.base62($0))E" }.joined() + "Eu",
            // Found by rustc-demangle's fuzzing.
            "_RIC20tRYIMYNRYFG05_EB5_B_B6_RRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRB_E",
            "_R" + String(repeating: "Y", count: 4000) + "R;",
            // Swift garbage.
            "$s" + String(repeating: "SS", count: 3000),
            "$s" + String(repeating: "y", count: 5000) + "F",
            // Too long to bother.
            "_ZN" + String(repeating: "a", count: 20000),
        ]
        for name in hostile {
            if let text = Demangler.demangle(name) {
                XCTAssertLessThanOrEqual(text.utf8.count, Demangler.maxOutputLength, String(name.prefix(60)))
            }
        }
        XCTAssertNil(Demangler.demangle(hostile[1]), "deeper than the limit")
        XCTAssertNil(Demangler.demangle(hostile[15]), "2^40 copies")
        XCTAssertNil(Demangler.demangle(hostile[16]), "2^30 steps, all in the impl path that is not printed")
    }

    // MARK: - Helpers

    /// What c++filt prints for each name, one per line.
    private func cxxfilt(_ names: [String]) throws -> [String] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["c++filt"]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        input.fileHandleForWriting.write(Data((names.joined(separator: "\n") + "\n").utf8))
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "c++filt (binutils) is needed")
        return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    /// v0's base-62 backreference number for offset `n` (`_` is 0, `0_` is 1, …).
    private static func base62(_ n: Int) -> String {
        guard n > 0 else { return "_" }
        let digits = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        var value = n - 1, text = ""
        repeat {
            text = String(digits[value % 62]) + text
            value /= 62
        } while value > 0
        return text + "_"
    }
}

/// A small deterministic generator, so every run mutates the same way.
private struct SplitMix64 {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
