//! The Prometheus text exposition format (version 0.0.4), written by hand: `# HELP` and `# TYPE` once
//! per family, then its samples with escaped label values.

use std::fmt::Write as _;

/// The `Content-Type` of a scrape's answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Default)]
pub struct Text {
    out: String,
}

impl Text {
    /// Start a family: `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_value(&mut self.out, value);
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Integers without a fraction, other numbers in Rust's shortest round-trip form, `+Inf`, `-Inf`, `NaN`.
pub fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples() {
        let mut t = Text::default();
        t.family("x_total", "counter", "What \\ is\ncounted");
        t.sample("x_total", &[("a", "q\"\\\nz"), ("b", "2")], 3.0);
        t.sample("y", &[], 0.25);
        t.sample("z", &[("le", "+Inf")], f64::INFINITY);
        assert_eq!(
            t.finish(),
            "# HELP x_total What \\\\ is\\ncounted\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"\\\\\\nz\",b=\"2\"} 3\ny 0.25\nz{le=\"+Inf\"} +Inf\n"
        );
    }
}
