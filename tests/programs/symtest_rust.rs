// Rust ground truth: generics, a trait, closures and an inlined helper.
trait Shape {
    fn area(&self) -> f64;
}

struct Square(f64);
struct Circle(f64);

impl Shape for Square {
    fn area(&self) -> f64 {
        self.0 * self.0
    }
}

impl Shape for Circle {
    fn area(&self) -> f64 {
        3.14159 * self.0 * self.0
    }
}

#[inline(always)]
fn weight(x: f64) -> f64 {
    if x > 10.0 { x.sqrt() } else { x * 2.0 }
}

#[inline(never)]
fn sum_areas<T: Shape>(shapes: &[T]) -> f64 {
    shapes.iter().map(|s| weight(s.area())).sum()
}

fn main() {
    let n = std::env::args().count() as f64;
    let squares: Vec<Square> = (0..100).map(|i| Square(i as f64 + n)).collect();
    let circles: Vec<Circle> = (0..100).map(|i| Circle(i as f64 * n)).collect();
    println!("{}", sum_areas(&squares) + sum_areas(&circles));
}
