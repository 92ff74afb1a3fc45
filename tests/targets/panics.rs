// panics.rs - Rust panics unwinding through a function whose return is probed.
//   panics [COUNT]   (COUNT default 10)
// middle(i) calls thrower(i), which panics for odd i; main catches each panic with
// catch_unwind (the panic message is silenced). For even i middle returns i + 1.
// Output: "panicked=P sum=S": P = COUNT/2 (odd i), S = sum of (i + 1) for even i.
use std::hint::black_box;
use std::panic;

#[inline(never)]
fn thrower(i: i64) -> i64 {
    if black_box(i) % 2 == 1 {
        panic!("odd");
    }
    i
}

// Not a tail call: the + 1 runs after thrower returns, so middle has a frame to unwind.
#[inline(never)]
fn middle(i: i64) -> i64 {
    black_box(thrower(i)) + 1
}

fn main() {
    let count: i64 = std::env::args().nth(1).map_or(10, |s| s.parse().expect("COUNT"));
    panic::set_hook(Box::new(|_| {}));
    let (mut panicked, mut sum) = (0, 0);
    for i in 0..count {
        match panic::catch_unwind(|| middle(i)) {
            Ok(v) => sum += v,
            Err(_) => panicked += 1,
        }
    }
    println!("panicked={} sum={}", panicked, sum);
}
