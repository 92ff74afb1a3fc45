// demangle_rs.rs - Rust names for the demangling tests, built twice: demangle_rs_v0
// (-C symbol-mangling-version=v0) and demangle_rs_legacy (rustc's default, legacy).
//   demangle_rs [COUNT]   (COUNT default 10)
// Calls, in order: Counter::bump(i) for i = 0..COUNT-1 (an inherent method),
// <Square as Shape>::area twice (a trait method, through dyn), twice::<u32>(21) once and
// twice::<u64>(2) 3 times (a generic function, two instances).
// Output: "total=T area=18 twice=54" with T = COUNT*(COUNT-1)/2.
use std::hint::black_box;

pub struct Counter {
    value: u64,
}

impl Counter {
    #[inline(never)]
    pub fn bump(&mut self, by: u64) -> u64 {
        self.value += by;
        self.value
    }
}

pub trait Shape {
    fn area(&self) -> u64;
}

pub struct Square(pub u64);

impl Shape for Square {
    #[inline(never)]
    fn area(&self) -> u64 {
        self.0 * self.0
    }
}

#[inline(never)]
pub fn twice<T: Copy + std::ops::Add<Output = T>>(x: T) -> T {
    x + x
}

fn main() {
    let count: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let mut counter = Counter { value: 0 };
    let mut total = 0;
    for i in 0..count {
        total = black_box(&mut counter).bump(black_box(i));
    }
    let square = Square(3);
    let mut area = 0;
    for _ in 0..2 {
        area += black_box(&square as &dyn Shape).area();
    }
    let mut sum = u64::from(twice::<u32>(black_box(21)));
    for _ in 0..3 {
        sum += twice::<u64>(black_box(2));
    }
    println!("total={} area={} twice={}", total, area, sum);
}
